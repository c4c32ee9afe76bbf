"""SIGHUP under load, the daemon as a subprocess: ten smtplib clients send without pause while
the plugin set is replaced, then while three broken reloads are refused. No message is lost or
doubled, every 250 is in the Maildir, connections that start after the reload run the new
plugins, and a refused reload (a plugin that does not import, an invalid configuration, a
plugin whose start-up fails) leaves the running set in service."""

from __future__ import annotations

import email.parser
import signal
import smtplib
import threading
import time
from collections.abc import Callable
from pathlib import Path

import attrs
import trio

from tests.helpers.maildir import as_received, split_received

from .conftest import Daemon, StartDaemon, write_conf

CAP = 30  # seconds, real time
CLIENTS = 10

CONF = """\
[server]
# Not where mail goes: the command line's --var-dir wins, before and after a reload.
var_dir = "not-the-var-dir"
[plugins]
order = {order}
directories = ["my-plugins"]
{extra}
"""
XGEN = """\
from trio_mta import hooks


class Plugin(hooks.Plugin):
    async def hook_data_post(self, conn):
        conn.transaction.add_header("X-Gen", str(self.config["value"]))
"""
BROKEN = "from trio_mta import hooks\n\nclass Plugin(hooks.Plugin)\n    pass\n"
NO_START = """\
from trio_mta import hooks


class Plugin(hooks.Plugin):
    async def startup(self):
        raise RuntimeError("the database is not there")
"""


@attrs.frozen
class Attempt:
    tag: str
    started: float  # time.monotonic(), before connecting
    finished: float
    code: int


def message(tag: str) -> bytes:
    return f"Subject: load\r\nX-Tag: {tag}\r\n\r\nbody {tag}\r\n".encode()


def keep_sending(
    host: str, port: int, index: int, stop: threading.Event, out: list[Attempt]
) -> None:
    """One message per connection, until told to stop."""
    n = 0
    while not stop.is_set():
        tag = f"{index}-{n}"
        n += 1
        started = time.monotonic()
        try:
            with smtplib.SMTP(host, port, local_hostname="client.example", timeout=10) as smtp:
                smtp.sendmail("a@example.org", [f"u{index}@example.test"], message(tag))
            code = 250
        except smtplib.SMTPResponseException as exc:
            code = exc.smtp_code
        except (smtplib.SMTPException, OSError):
            code = -1
        out.append(Attempt(tag, started, time.monotonic(), code))


def delivered(var_dir: Path) -> dict[str, str | None]:
    """X-Tag → X-Gen (None without one) of every message in the Maildir."""
    parser = email.parser.BytesHeaderParser()
    found: dict[str, str | None] = {}
    for path in (var_dir / "maildir" / "example.test").glob("u*/new/*"):
        _, data = split_received(as_received(path.read_bytes()))
        headers = parser.parsebytes(data)
        tag = headers["X-Tag"]
        assert tag not in found, f"{tag} delivered twice"
        found[tag] = headers["X-Gen"]
    return found


async def wait_until(predicate: Callable[[], bool]) -> None:
    with trio.fail_after(10):
        while not predicate():  # noqa: ASYNC110  # another process's log and threads' results
            await trio.sleep(0.02)


async def reload(daemon: Daemon, marker: str) -> float:
    """SIGHUP; return when the log has one more ``marker`` line (monotonic time then)."""
    before = daemon.log_text().count(marker)
    daemon.signal(signal.SIGHUP)
    await wait_until(lambda: daemon.log_text().count(marker) > before)
    return time.monotonic()


async def test_sighup_under_load_swaps_plugins_and_refuses_broken_ones(
    start_daemon: StartDaemon, tmp_path: Path
) -> None:
    conf = tmp_path / "conf"
    (conf / "plugins").mkdir(parents=True)
    (conf / "my-plugins").mkdir()
    (conf / "my-plugins" / "xgen.py").write_text(XGEN)
    (conf / "plugins" / "xgen.toml").write_text('value = "2"\n')
    (conf / "plugins" / "queue_maildir.toml").write_text("fsync = false\n")
    old_order = '["rcpt_to_host_list", "queue_maildir"]'
    new_order = '["rcpt_to_host_list", "xgen", "queue_maildir"]'
    write_conf(conf, CONF.format(order=old_order, extra=""))
    attempts: list[Attempt] = []
    stop = threading.Event()

    def ok_count() -> int:
        return sum(a.code == 250 for a in attempts)

    async def more(count: int) -> None:
        target = ok_count() + count
        await wait_until(lambda: ok_count() >= target)

    with trio.fail_after(CAP):
        daemon = await start_daemon(conf)
        async with trio.open_nursery() as clients:
            for index in range(CLIENTS):
                clients.start_soon(
                    trio.to_thread.run_sync,
                    keep_sending,
                    daemon.host,
                    daemon.port,
                    index,
                    stop,
                    attempts,
                )
            try:
                await more(30)
                write_conf(conf, CONF.format(order=new_order, extra=""))
                hup = time.monotonic()
                swapped = await reload(daemon, "reload: plugin generation")
                await more(30)
                # Three refused reloads; had any new set gone into service, X-Gen would say 3.
                (conf / "plugins" / "xgen.toml").write_text('value = "3"\n')
                # A plugin that does not import: refused, the running set stays.
                (conf / "my-plugins" / "broken.py").write_text(BROKEN)
                broken_order = '["rcpt_to_host_list", "xgen", "broken", "queue_maildir"]'
                write_conf(conf, CONF.format(order=broken_order, extra=""))
                await reload(daemon, "reload refused")
                await more(20)
                # An invalid main configuration: refused as well.
                write_conf(conf, CONF.format(order=new_order, extra="timeout = -1"))
                await reload(daemon, "reload refused")
                await more(20)
                # A plugin that imports but fails to start.
                (conf / "my-plugins" / "no_start.py").write_text(NO_START)
                no_start_order = '["rcpt_to_host_list", "xgen", "no_start", "queue_maildir"]'
                write_conf(conf, CONF.format(order=no_start_order, extra=""))
                await reload(daemon, "reload refused")
                await more(20)
            finally:
                stop.set()
        daemon.signal(signal.SIGTERM)
        assert await daemon.wait_exit() == 0

    assert [a for a in attempts if a.code != 250] == []
    stored = delivered(daemon.var_dir)
    assert sorted(stored) == sorted(a.tag for a in attempts)
    before = [a.tag for a in attempts if a.finished < hup]
    after = [a.tag for a in attempts if a.started > swapped]
    assert len(before) >= 30
    assert len(after) >= 70  # 90 more finished after the swap; some began before it
    assert {stored[tag] for tag in before} == {None}
    assert {stored[tag] for tag in after} == {"2"}
    assert not (tmp_path / "not-the-var-dir").exists()
    log = daemon.log_text()
    assert log.count("reload: plugin generation") == 1
    assert log.count("reload refused") == 3
    refusals = log.split("reload refused")[1:]
    assert "plugin 'broken': import failed" in refusals[0]
    assert "timeout" in refusals[1]
    assert "the database is not there" in refusals[2]
