"""Delay warnings (RFC 3464 "delayed" reports) under ``autojump_clock``: after
``[queue] delay_warning`` for recipients without NOTIFY, after it (or 4 h) for NOTIFY=DELAY,
once per message, never for NOTIFY=NEVER or to the null sender."""

from __future__ import annotations

import email
import email.policy
from pathlib import Path

import trio
import trio.testing

from tests.queue.kit import FakeDeliverer, connection, make_service, started
from trio_mta.hooks import HookRunner, PluginEnv, load_plugins
from trio_mta.queue import QueueService, Spool


async def attempts(service: QueueService, id: str, times: int) -> None:
    await service.wait_until(
        lambda: id not in service.envelopes or service.envelopes[id].attempts >= times
    )


def warnings(fake: FakeDeliverer) -> list[tuple[float, tuple[str, ...], bytes]]:
    return [
        (c.time, c.recipients, c.message)
        for c in fake.calls
        if c.sender is None and b"Action: delayed" in c.message
    ]


async def test_one_warning_after_delay_warning_then_retries_go_on(
    nursery: trio.Nursery, tmp_path: Path, autojump_clock: trio.testing.MockClock
) -> None:
    fake = FakeDeliverer()
    service = await started(
        nursery,
        make_service(
            tmp_path, fake, retry_first=600.0, retry_max=600.0, delay_warning=3600.0,
            give_up=86400.0,
        ),
    )  # fmt: skip
    t0 = trio.current_time()
    id = await service.submit(connection("a@sender.test", ["defer@dest.test"]))
    await attempts(service, id, 10)  # 0, 600, ... 5400 s: the warning at the 3600 s attempt
    [(when, to, data)] = warnings(fake)
    assert when - t0 == 3600
    assert to == ("a@sender.test",)
    report = email.message_from_bytes(data, policy=email.policy.default)
    assert report["Subject"] == "Delayed Mail (still being retried)"
    assert report.get_content_type() == "multipart/report"
    text, status, original = report.iter_parts()
    assert "THIS IS A WARNING ONLY" in text.get_content()
    assert original.get_content_type() == "text/rfc822-headers"  # headers only
    fields = status.as_bytes()
    assert b"Final-Recipient: rfc822; defer@dest.test" in fields
    assert b"Action: delayed" in fields
    assert b"Status: 4.7.1" in fields
    assert b"Will-Retry-Until: " in fields
    assert service.envelopes[id].delay_warned
    assert Spool(service.spool.root).read(id).delay_warned  # on disk: never sent twice


async def test_notify_delay_gets_one_after_4h_even_with_delay_warning_off(
    nursery: trio.Nursery, tmp_path: Path, autojump_clock: trio.testing.MockClock
) -> None:
    fake = FakeDeliverer()
    service = await started(
        nursery, make_service(tmp_path, fake, retry_first=1800.0, retry_max=1800.0)
    )
    t0 = trio.current_time()
    asked = await service.submit(
        connection("a@sender.test", ["defer@dest.test"], notify=("DELAY", "FAILURE"))
    )
    silent = await service.submit(connection("b@sender.test", ["defer@dest.test"]))
    await attempts(service, asked, 12)
    await attempts(service, silent, 12)
    [(when, to, _)] = warnings(fake)  # the one that asked; not the one that did not
    assert (when - t0, to) == (4 * 3600, ("a@sender.test",))


async def test_never_for_notify_never_failure_only_or_the_null_sender(
    nursery: trio.Nursery, tmp_path: Path, autojump_clock: trio.testing.MockClock
) -> None:
    fake = FakeDeliverer()
    service = await started(
        nursery,
        make_service(tmp_path, fake, retry_first=600.0, retry_max=600.0, delay_warning=600.0),
    )
    ids = [
        await service.submit(connection("a@sender.test", ["defer@dest.test"], notify=("NEVER",))),
        await service.submit(connection("a@sender.test", ["defer@dest.test"], notify=("FAILURE",))),
        await service.submit(connection(None, ["defer@dest.test"])),
    ]
    for id in ids:
        await attempts(service, id, 5)
    assert warnings(fake) == []
    assert not any(service.envelopes[id].delay_warned for id in ids)


BOUNCE_PLUGIN = """
from trio_mta import hooks
from trio_mta.protocol import Address

class Plugin(hooks.Plugin):
    def setup(self):
        self.asked = []

    async def hook_bounce(self, conn, report):
        self.asked.append(report.recipients)
        if report.recipients[0].startswith("defer-quiet"):
            return hooks.OK
        conn.transaction.sender = Address("original", "sender.test")  # as srs undoes itself
        return hooks.CONT
"""


async def test_the_bounce_hook_readdresses_or_suppresses_the_warning(
    nursery: trio.Nursery, tmp_path: Path, autojump_clock: trio.testing.MockClock
) -> None:
    directory = tmp_path / "plugins"
    directory.mkdir()
    (directory / "readdress.py").write_text(BOUNCE_PLUGIN)
    loaded = load_plugins(["readdress"], directories=[directory], env=PluginEnv())
    fake = FakeDeliverer()
    service = await started(
        nursery,
        make_service(
            tmp_path, fake, runner=lambda: HookRunner(loaded), retry_first=600.0,
            retry_max=600.0, delay_warning=600.0,
        ),
    )  # fmt: skip
    sent = await service.submit(connection("srs0=x@fwd.test", ["defer@dest.test"]))
    quiet = await service.submit(connection("a@sender.test", ["defer-quiet@dest.test"]))
    await attempts(service, sent, 6)
    await attempts(service, quiet, 6)
    assert [to for _, to, _ in warnings(fake)] == [("original@sender.test",)]
    # Asked once each: a suppressed warning is decided too, not asked again at every attempt.
    asked = loaded.plugins[0].asked  # type: ignore[attr-defined]  # the test plugin's record
    assert sorted(asked) == [("defer-quiet@dest.test",), ("defer@dest.test",)]
    assert service.envelopes[quiet].delay_warned
