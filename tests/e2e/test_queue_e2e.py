"""The queue in the daemon: a SIGKILL under load loses nothing that got a 250; the
``trio-mta queue`` command talks to a running daemon."""

from __future__ import annotations

import json
import re
import signal
import subprocess
import sys
from collections.abc import Iterator
from pathlib import Path

import pytest
import trio

from tests.conftest import REPO
from tests.helpers.smtp import LineClient, ReplyStreamClosed
from tests.integration_queue.conftest import free_port
from tests.integration_queue.kit import Peer, PeerHandler

from .conftest import Daemon, StartDaemon, daemon_command, write_conf

SINK_IP = "127.0.0.2"
TOTAL = 2000
KILL_AT = 1000  # acknowledged messages before the SIGKILL
SENDERS = 25
SEQ = re.compile(rb"^X-Seq: (\d+)\r$", re.MULTILINE)


def queue_conf(directory: Path, sink_port: int) -> Path:
    write_conf(
        directory,
        f"""
[plugins]
order = ["relay_acl"]

[queue]
port = {sink_port}
starttls = "never"
fsync = true
retry_first = 1.0
concurrency = 4
per_destination = 4

[[route]]
domain = "sink.test"
host = "{SINK_IP}"

[log]
level = "WARNING"
transaction_log = false
""",
    )
    (directory / "plugins").mkdir(exist_ok=True)
    (directory / "plugins" / "relay_acl.toml").write_text('allow = ["127.0.0.1/32"]\n')
    return directory


@pytest.fixture
def sink() -> Iterator[Peer]:
    # Slower than the load (8 ms a message, 4 at a time): a backlog builds up to be killed.
    handler = PeerHandler(SINK_IP, defer_times=10**9, delay=0.008)
    peer = Peer.start(SINK_IP, free_port(SINK_IP), handler)
    try:
        yield peer
    finally:
        peer.stop()


def delivered_seqs(peer: Peer) -> list[int]:
    return [int(m.group(1)) for r in peer.received for m in SEQ.finditer(r.data)]


async def sender(
    host: str, port: int, numbers: list[int], acked: set[int], killed: trio.Event
) -> None:
    """Send ``numbers`` over one connection until it dies; note each 250."""
    try:
        client = LineClient(await trio.open_tcp_stream(host, port))
        await client.expect(220)
        await client.command("EHLO load.test", 250)
        for n in numbers:
            await client.command("MAIL FROM:<load@sender.test>", 250)
            await client.command(f"RCPT TO:<user{n % 7}@sink.test>", 250)
            await client.command("DATA", 354)
            await client.send(f"Subject: load {n}\r\nX-Seq: {n}\r\n\r\nbody {n}\r\n.\r\n")
            answer = await client.reply()
            if answer.code == 250:
                acked.add(n)
            if len(acked) >= KILL_AT:
                killed.set()
    except (ReplyStreamClosed, OSError, trio.BrokenResourceError, AssertionError):
        return  # the daemon died under us: whatever was not acknowledged may be lost


async def load(daemon: Daemon, numbers: list[int], acked: set[int], killed: trio.Event) -> None:
    async with trio.open_nursery() as senders:
        for s in range(SENDERS):
            part = numbers[s::SENDERS]
            senders.start_soon(sender, daemon.host, daemon.port, part, acked, killed)


async def test_sigkill_while_receiving_and_delivering_loses_no_acknowledged_message(
    start_daemon: StartDaemon, tmp_path: Path, sink: Peer
) -> None:
    conf = queue_conf(tmp_path / "conf", sink.port)
    acked: set[int] = set()
    with trio.fail_after(45):
        daemon = await start_daemon(conf)
        killed = trio.Event()
        async with trio.open_nursery() as nursery:
            nursery.start_soon(load, daemon, list(range(TOTAL)), acked, killed)
            await killed.wait()
            daemon.process.kill()  # SIGKILL: no drain, no flush, no goodbye
            await daemon.wait_exit()
        backlog = acked - set(delivered_seqs(sink))
        assert len(backlog) > 50, "the kill came too late: nothing was left to deliver"
        # The clients try again with what never got a 250 (some of it may be on disk
        # already: a message caught between the disk and the 250 is delivered twice).
        restarted = await start_daemon(conf)
        await load(restarted, [n for n in range(TOTAL) if n not in acked], acked, trio.Event())
        assert acked == set(range(TOTAL))
        # Polling: the sink is another thread, the spool another process's files.
        while not acked <= set(delivered_seqs(sink)):  # noqa: ASYNC110
            await trio.sleep(0.1)
        spool = restarted.var_dir / "queue" / "queue"
        while any(spool.iterdir()):  # noqa: ASYNC110
            await trio.sleep(0.1)
    delivered = delivered_seqs(sink)
    assert sorted(set(delivered)) == list(range(TOTAL))
    # Duplicates: at most one in flight per sender (on disk, no 250 yet, sent again) and per
    # delivery (delivered, removal not yet on disk).
    assert len(delivered) - TOTAL <= SENDERS + 4


def queue_cli(conf: Path, var_dir: Path, *args: str) -> str:
    result = subprocess.run(
        [sys.executable, "-m", "trio_mta", "queue", "--config", str(conf),
         "--var-dir", str(var_dir), *args],
        capture_output=True, check=False, timeout=20, cwd=REPO,
    )  # fmt: skip
    return (result.stdout + result.stderr).decode()


async def test_queue_commands_go_through_the_running_daemon(
    start_daemon: StartDaemon, tmp_path: Path, sink: Peer
) -> None:
    conf = queue_conf(tmp_path / "conf", sink.port)
    with trio.fail_after(30):
        daemon = await start_daemon(conf)
        client = await daemon.greeted()
        answer = await client.transaction(
            "a@sender.test", ["defer@sink.test"], b"Subject: held\r\n\r\nx\r\n"
        )
        qid = answer.lines[0].split()[-1]
        listing = await trio.to_thread.run_sync(queue_cli, conf, daemon.var_dir, "list")
        assert qid in listing
        assert "defer@sink.test" in listing
        held = await trio.to_thread.run_sync(queue_cli, conf, daemon.var_dir, "hold", qid)
        assert held.strip() == f"held {qid}"
        assert "HELD" in await trio.to_thread.run_sync(queue_cli, conf, daemon.var_dir, "list")
        stats = await trio.to_thread.run_sync(queue_cli, conf, daemon.var_dir, "stats")
        assert "held: 1" in stats
        released = await trio.to_thread.run_sync(queue_cli, conf, daemon.var_dir, "release", qid)
        assert released.strip() == f"released {qid}"
        deleted = await trio.to_thread.run_sync(queue_cli, conf, daemon.var_dir, "delete", qid)
        assert deleted.strip() == f"deleted {qid}"
        flushed = await trio.to_thread.run_sync(queue_cli, conf, daemon.var_dir, "flush")
        assert flushed.strip() == "flushed 0"
        # Released, it may be in an attempt: the delete then lands when the attempt ends.
        while (daemon.var_dir / "queue" / "queue" / f"{qid}.env").exists():  # noqa: ASYNC110
            await trio.sleep(0.05)
        assert (daemon.var_dir / "queue" / "daemon.pid").exists()


async def test_queue_actions_take_effect_in_the_running_daemon_at_once(
    start_daemon: StartDaemon, tmp_path: Path, sink: Peer
) -> None:
    conf = queue_conf(tmp_path / "conf", sink.port)
    toml = (conf / "trio-mta.toml").read_text().replace("retry_first = 1.0", "retry_first = 3600")
    (conf / "trio-mta.toml").write_text(toml)
    handler = sink.handler
    rcpt = "defer@sink.test"

    async def cli(*args: str) -> str:
        return await trio.to_thread.run_sync(queue_cli, conf, daemon.var_dir, *args)

    async def tries(n: int) -> None:
        while handler.rcpt_seen.get(rcpt, 0) < n:  # noqa: ASYNC110  # the peer's thread
            await trio.sleep(0.02)

    with trio.fail_after(30):
        daemon = await start_daemon(conf)
        client = await daemon.greeted()
        answer = await client.transaction("a@sender.test", [rcpt], b"Subject: x\r\n\r\nx\r\n")
        qid = answer.lines[0].split()[-1]
        await tries(1)  # deferred; the next try is an hour away
        assert (await cli("flush", "--to", rcpt)).strip() == "flushed 1"
        await tries(2)  # at once, not in an hour
        # On old main a second daemon's exit removed the pid file, and `queue hold` then
        # changed the files behind the running daemon's back; the lock does not depend on it.
        (daemon.var_dir / "queue" / "daemon.pid").unlink()
        assert (await cli("hold", qid)).strip() == f"held {qid}"
        listed = json.loads(await cli("list", "--json"))
        assert [(e["id"], e["state"]) for e in listed] == [(qid, "held")]
        assert (await cli("flush", "ALL")).strip() == "flushed 0"  # held: stays held
        assert handler.rcpt_seen[rcpt] == 2
        assert (await cli("release", "--from", "a@sender.test")).strip() == f"released {qid}"
        await tries(3)
        shown = await cli("show", qid, "--body")
        assert "Subject: x" in shown
        assert "*** message ***" in shown


async def test_a_second_daemon_on_the_same_var_dir_refuses_to_start(
    start_daemon: StartDaemon, tmp_path: Path, sink: Peer
) -> None:
    conf = queue_conf(tmp_path / "conf", sink.port)
    with trio.fail_after(30):
        first = await start_daemon(conf)
        args = ["run", "--config", str(conf), "--listen", "127.0.0.1:0"]
        second = await trio.run_process(
            daemon_command(*args, "--var-dir", str(first.var_dir)),
            capture_stdout=True, capture_stderr=True, check=False, cwd=str(tmp_path),
        )  # fmt: skip
        assert second.returncode == 1
        assert second.stdout == b""
        [line] = second.stderr.decode().splitlines()
        assert f"another trio-mta (pid {first.process.pid};" in line
        assert line.startswith("trio-mta: not starting: ")
        # The first daemon's files are still there, and it still answers.
        pid_file = first.var_dir / "queue" / "daemon.pid"
        assert pid_file.read_text().strip() == str(first.process.pid)
        assert (first.var_dir / "control.sock").exists()
        assert "-- 0 message(s)" in await trio.to_thread.run_sync(
            queue_cli, conf, first.var_dir, "list"
        )
        first.signal(signal.SIGTERM)
        assert await first.wait_exit() == 0
    assert not (first.var_dir / "control.sock").exists()
    assert not pid_file.exists()


async def test_sigterm_lets_a_delivery_in_progress_finish(
    start_daemon: StartDaemon, tmp_path: Path
) -> None:
    # A peer that answers the final dot after 2 s: the SIGTERM lands while it holds the message.
    handler = PeerHandler(SINK_IP, defer_times=0, delay=2.0)
    peer = Peer.start(SINK_IP, free_port(SINK_IP), handler)
    try:
        conf = queue_conf(tmp_path / "conf", peer.port)
        with trio.fail_after(30):
            daemon = await start_daemon(conf)
            client = await daemon.greeted()
            answer = await client.transaction(
                "a@sender.test", ["user@sink.test"], b"Subject: in flight\r\n\r\nx\r\n"
            )
            assert answer.code == 250
            while not handler.rcpt_seen:  # noqa: ASYNC110  # the peer's thread notes it
                await trio.sleep(0.01)
            daemon.signal(signal.SIGTERM)
            assert await daemon.wait_exit() == 0
        # Delivered once, and known to be: nothing left to send again after a restart.
        assert [r.recipients for r in peer.received] == [("user@sink.test",)]
        assert list((daemon.var_dir / "queue" / "queue").glob("*.env")) == []
    finally:
        peer.stop()
