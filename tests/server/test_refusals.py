"""Every refusal is logged once, greppably, naming the plugin that decided (or ``core``), and
published as ``transaction.refused`` (issue #16 hazard 5). Driver over memory streams,
MockClock for the plugin deadline."""

from __future__ import annotations

import logging
import textwrap
from pathlib import Path

import attrs
import pytest
import trio
import trio.testing

from tests.helpers.config import make_config
from tests.helpers.driver import DriverHarness, start_driver
from trio_mta.config import Config
from trio_mta.events import Event, EventBus, TransactionEnded, TransactionRefused

CAP = 10_000  # virtual seconds

PLUGINS = {
    # Hangs on one recipient: its deadline ([plugins] timeout) answers 451 in its name.
    "slow_rcpt": """
        import trio
        from trio_mta import hooks

        class Plugin(hooks.Plugin):
            async def hook_rcpt(self, conn, recipient, params):
                if recipient.local_part == "slow":
                    await trio.sleep(3600)
                return hooks.CONT
    """,
    # Policy verdicts at HELO and at the end of the data.
    "picky": """
        from trio_mta import hooks

        class Plugin(hooks.Plugin):
            async def hook_ehlo(self, conn, name):
                if name == "bad.example":
                    return hooks.deny("Go away")
                return hooks.CONT

            async def hook_data_post(self, conn):
                if b"X-Spam: yes" in conn.transaction.message_bytes():
                    return hooks.deny("Looks like spam")
                return hooks.CONT
    """,
}


def refusal_config(tmp_path: Path) -> Config:
    base = make_config(tmp_path / "var")
    directory = tmp_path / "plugins"
    directory.mkdir()
    for name, source in PLUGINS.items():
        (directory / f"{name}.py").write_text(textwrap.dedent(source))
    plugins = attrs.evolve(
        base.plugins,
        order=("picky", "slow_rcpt", "rcpt_to_host_list", "queue_maildir"),
        directories=(directory,),
        timeout=5.0,
    )
    return attrs.evolve(base, plugins=plugins)


@attrs.define
class Seen:
    refused: list[TransactionRefused] = attrs.Factory(list)
    ended: list[TransactionEnded] = attrs.Factory(list)

    def __call__(self, event: Event) -> None:
        if isinstance(event, TransactionRefused):
            self.refused.append(event)
        elif isinstance(event, TransactionEnded):
            self.ended.append(event)


async def start(
    nursery: trio.Nursery, tmp_path: Path, clock: trio.testing.MockClock
) -> tuple[DriverHarness, Seen]:
    bus = EventBus(retain=100)  # refusals are kept for replay: published unwatched too
    seen = Seen()
    bus.add_tap(seen, (TransactionRefused, TransactionEnded))
    h = await start_driver(nursery, refusal_config(tmp_path), clock, bus=bus)
    await h.client.expect(220)
    return h, seen


def reject_lines(caplog: pytest.LogCaptureFixture) -> list[str]:
    return [r.getMessage() for r in caplog.records if r.name == "trio_mta.reject"]


def transaction_lines(caplog: pytest.LogCaptureFixture) -> list[str]:
    return [r.getMessage() for r in caplog.records if r.name == "trio_mta.transaction"]


async def test_a_plugins_451_at_its_deadline_is_logged_naming_that_plugin(
    autojump_clock: trio.testing.MockClock,
    nursery: trio.Nursery,
    tmp_path: Path,
    caplog: pytest.LogCaptureFixture,
) -> None:
    caplog.set_level(logging.INFO)
    with trio.fail_after(CAP):
        h, seen = await start(nursery, tmp_path, autojump_clock)
        await h.client.command("EHLO client.example", 250)
        await h.client.command("MAIL FROM:<alice@example.org>", 250)
        before = trio.current_time()
        answer = await h.client.command("RCPT TO:<slow@example.test>", 451)
        assert trio.current_time() - before == 5  # the plugin's deadline
        await h.client.command("QUIT", 221)
        await h.finished.wait()
    [line] = reject_lines(caplog)
    txn = seen.ended[0].txn
    assert line.startswith(f"{txn}: reject: RCPT from [127.0.0.1]: 451 ")
    assert str(answer.code) in line
    assert "from=<alice@example.org> to=<slow@example.test> helo=<client.example>" in line
    assert "plugin=slow_rcpt conn=conn1" in line
    [event] = seen.refused
    assert (event.stage, event.plugin, event.code) == ("rcpt", "slow_rcpt", 451)
    assert (event.sender, event.recipient, event.ip) == (
        "alice@example.org",
        "slow@example.test",
        "127.0.0.1",
    )
    # The transaction's end names what happened to it: not "aborted ... 'quit'".
    [end_line] = transaction_lines(caplog)
    assert "rcpts= refused=<slow@example.test>" in end_line
    assert "outcome=refused" in end_line
    assert "reply='quit'" not in end_line
    [end] = seen.ended
    assert (end.outcome, end.refused) == ("refused", ("slow@example.test",))
    assert end.reply.startswith("every recipient refused: 451 ")


async def test_each_stage_is_logged_with_its_decider(
    autojump_clock: trio.testing.MockClock,
    nursery: trio.Nursery,
    tmp_path: Path,
    caplog: pytest.LogCaptureFixture,
) -> None:
    caplog.set_level(logging.INFO)
    with trio.fail_after(CAP):
        h, seen = await start(nursery, tmp_path, autojump_clock)
        await h.client.command("EHLO bad.example", 550)  # picky's verdict
        await h.client.command("EHLO client.example", 250)
        await h.client.command("MAIL FROM:<not an address>", 553)  # core: syntax
        await h.client.command("AUTH PLAIN AHVzZXIAcGFzcw==", 502)  # core: no auth plugin
        await h.client.command("MAIL FROM:<>", 250)
        await h.client.command("RCPT TO:<bob@example.test>", 250)
        await h.client.command("RCPT TO:<eve@elsewhere.example>", 550, "5.7.1")  # core: relay
        await h.client.command("DATA", 354)
        await h.client.send(b"Subject: x\r\nX-Spam: yes\r\n\r\nbuy\r\n.\r\n")
        await h.client.expect(550)  # picky at data_post
        await h.client.command("MAIL FROM:<carol@example.org>", 250)
        await h.client.command("RCPT TO:<bob@example.test>", 250)
        await h.client.command("DATA", 354)
        await h.client.send(b"Subject: long\r\n\r\n" + b"x" * 1200 + b"\r\n.\r\n")
        await h.client.expect(554)  # core: line too long
        await h.client.command("QUIT", 221)
    stages = [(e.stage, e.plugin, e.code, e.sender, e.recipient) for e in seen.refused]
    assert stages == [
        ("helo", "picky", 550, None, None),
        ("mail", "core", 553, None, None),
        ("auth", "core", 502, None, None),
        ("rcpt", "core", 550, "", "eve@elsewhere.example"),
        ("data", "picky", 550, "", None),
        ("data", "core", 554, "carol@example.org", None),
    ]
    lines = reject_lines(caplog)
    assert len(lines) == 6
    assert lines[0].startswith("NOQUEUE: reject: EHLO from [127.0.0.1]: 550 ")
    assert "helo=<bad.example> plugin=picky" in lines[0]
    assert lines[1].startswith("NOQUEUE: reject: MAIL from [127.0.0.1]: 553 5.1.7")
    assert "; helo=<client.example> plugin=core" in lines[1]  # no from=: none was parsed
    assert lines[2].startswith("NOQUEUE: reject: AUTH from [127.0.0.1]: 502 5.5.1")
    assert ": reject: RCPT from [127.0.0.1]: 550 5.7.1 Relaying denied; from=<>" in lines[3]
    assert "to=<eve@elsewhere.example>" in lines[3]
    assert ": reject: END-OF-MESSAGE from [127.0.0.1]: 550 " in lines[4]
    assert "Looks like spam; from=<> to=<bob@example.test>" in lines[4]
    assert "plugin=picky" in lines[4]
    assert ": reject: END-OF-MESSAGE from [127.0.0.1]: 554 5.6.0" in lines[5]
    assert all(not line.startswith("NOQUEUE") for line in lines[3:])  # in a transaction
    ends = transaction_lines(caplog)
    assert "rcpts=<bob@example.test> refused=<eve@elsewhere.example>" in ends[0]


async def test_too_many_errors_is_a_connection_refusal(
    autojump_clock: trio.testing.MockClock,
    nursery: trio.Nursery,
    tmp_path: Path,
    caplog: pytest.LogCaptureFixture,
) -> None:
    caplog.set_level(logging.INFO)
    with trio.fail_after(CAP):
        h, seen = await start(nursery, tmp_path, autojump_clock)
        for _ in range(11):
            await h.client.send(b"XYZZY\r\n")
        await h.client.read_to_eof()
    assert [(e.stage, e.code, e.plugin) for e in seen.refused] == [("connect", 421, "core")]
    [line] = reject_lines(caplog)
    assert line.startswith("NOQUEUE: reject: COMMAND from [127.0.0.1]: 421 4.7.0")


async def test_an_early_talker_is_a_connection_refusal(
    autojump_clock: trio.testing.MockClock,
    nursery: trio.Nursery,
    tmp_path: Path,
    caplog: pytest.LogCaptureFixture,
) -> None:
    caplog.set_level(logging.INFO)
    config = refusal_config(tmp_path)
    config = attrs.evolve(config, timeouts=attrs.evolve(config.timeouts, greeting_delay=5))
    bus = EventBus(retain=100)
    seen = Seen()
    bus.add_tap(seen, (TransactionRefused,))
    with trio.fail_after(CAP):
        h = await start_driver(nursery, config, autojump_clock, bus=bus)
        await h.client.send(b"EHLO impatient.example\r\n")
        await h.client.read_to_eof()
    assert [(e.stage, e.code, e.plugin) for e in seen.refused] == [("connect", 554, "core")]
    [line] = reject_lines(caplog)
    assert line.startswith("NOQUEUE: reject: CONNECT from [127.0.0.1]: 554 5.5.0")


async def test_a_connect_hook_refusal_names_its_plugin(
    autojump_clock: trio.testing.MockClock,
    nursery: trio.Nursery,
    tmp_path: Path,
    caplog: pytest.LogCaptureFixture,
) -> None:
    caplog.set_level(logging.INFO)
    config = refusal_config(tmp_path)
    (tmp_path / "plugins" / "bouncer.py").write_text(
        textwrap.dedent(
            """
            from trio_mta import hooks

            class Plugin(hooks.Plugin):
                async def hook_connect(self, conn):
                    return hooks.deny("You are listed", code=554, enhanced="5.7.1")
            """
        )
    )
    plugins = attrs.evolve(config.plugins, order=("bouncer", *config.plugins.order))
    bus = EventBus(retain=100)
    seen = Seen()
    bus.add_tap(seen, (TransactionRefused,))
    with trio.fail_after(CAP):
        h = await start_driver(
            nursery, attrs.evolve(config, plugins=plugins), autojump_clock, bus=bus
        )
        assert (await h.client.read_to_eof()).startswith(b"554 5.7.1 You are listed")
    assert [(e.stage, e.code, e.plugin) for e in seen.refused] == [("connect", 554, "bouncer")]
    [line] = reject_lines(caplog)
    assert line.startswith("NOQUEUE: reject: CONNECT from [127.0.0.1]: 554 5.7.1 You are listed")
    assert line.endswith("plugin=bouncer conn=conn1")
