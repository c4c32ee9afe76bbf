"""SIGTERM while many clients are mid-transaction: no acknowledged message is lost, idle
sessions are told 421, transactions in progress finish, and the daemon exits 0 in time."""

from __future__ import annotations

import re
import signal
import smtplib
import threading
from pathlib import Path

import trio

from tests.helpers import replies
from tests.helpers.maildir import all_messages, as_received, split_received
from tests.helpers.smtp import LineClient

from .conftest import Daemon, StartDaemon, write_conf

CAP = 40  # seconds, real time
DRAIN = 8.0
THREADS = 20
ACKED_BEFORE_SIGTERM = 200

HEAD = b"Subject: paused\r\nX-Marker: paused-%d\r\n\r\nfirst half\r\n"
TAIL = b"second half\r\n"
_MARKER = re.compile(rb"^X-Marker: (\S+)\r$", re.MULTILINE)


class Load:
    """Client threads sending one message after another until the server goes away."""

    def __init__(self, daemon: Daemon) -> None:
        self.daemon = daemon
        self.attempted: set[str] = set()
        self.acked: set[str] = set()
        self.unexpected: list[str] = []
        self.signalled = threading.Event()
        # Set (from a worker thread) once enough mail is acknowledged, or on a failure.
        self.ready_for_sigterm = trio.Event()

    def _note(self, problem: str | None = None) -> None:
        if problem is not None:
            self.unexpected.append(problem)
        if problem is not None or len(self.acked) >= ACKED_BEFORE_SIGTERM:
            trio.from_thread.run_sync(self.ready_for_sigterm.set)

    def client(self, n: int) -> None:
        try:
            smtp = smtplib.SMTP(
                self.daemon.host, self.daemon.port, local_hostname=f"c{n}.example", timeout=10
            )
        except OSError as exc:
            if not self.signalled.is_set():
                self._note(f"thread {n}: connect: {exc!r}")
            return
        with smtp:
            for i in range(1_000_000):
                marker = f"t{n}-{i}"
                body = f"Subject: load\r\nX-Marker: {marker}\r\n\r\n{'x' * 200}\r\n".encode()
                self.attempted.add(marker)
                try:
                    refused = smtp.sendmail("load@example.org", [f"load{n}@example.test"], body)
                except (smtplib.SMTPException, OSError) as exc:
                    if not self.signalled.is_set():
                        self._note(f"thread {n}: {exc!r}")
                    elif isinstance(exc, smtplib.SMTPResponseException) and exc.smtp_code != 421:
                        self.unexpected.append(f"thread {n} after SIGTERM: {exc!r}")
                    return
                if refused:
                    self._note(f"thread {n}: refused {refused}")
                    return
                self.acked.add(marker)
                if not self.signalled.is_set():
                    self._note()


async def _paused_in_data(daemon: Daemon, n: int) -> LineClient:
    client = await daemon.greeted()
    await client.command("MAIL FROM:<a@example.org>", 250)
    await client.command(f"RCPT TO:<paused{n}@example.test>", 250)
    await client.command("DATA", 354)
    await client.send(HEAD % n)
    return client


def _stored_markers(var_dir: Path) -> list[str]:
    markers = []
    for path in all_messages(var_dir):
        _, client_bytes = split_received(as_received(path.read_bytes()))
        [marker] = _MARKER.findall(client_bytes)
        markers.append(marker.decode())
    return markers


async def test_sigterm_under_load_loses_no_acknowledged_message(
    start_daemon: StartDaemon, tmp_path: Path
) -> None:
    conf = write_conf(
        tmp_path / "conf",
        f'[timeouts]\ndrain = {DRAIN}\n[log]\nlevel = "WARNING"\n',
    )
    with trio.fail_after(CAP):
        daemon = await start_daemon(conf)
        load = Load(daemon)
        idle = [await daemon.greeted() for _ in range(3)]
        paused = [await _paused_in_data(daemon, n) for n in range(2)]
        limiter = trio.CapacityLimiter(THREADS)

        async def run_client(n: int) -> None:
            await trio.to_thread.run_sync(load.client, n, limiter=limiter)

        async with trio.open_nursery() as clients:
            for n in range(THREADS):
                clients.start_soon(run_client, n)
            await load.ready_for_sigterm.wait()
            assert load.unexpected == []
            load.signalled.set()
            daemon.signal(signal.SIGTERM)
            signalled_at = trio.current_time()
            # Idle sessions are told at once.
            for client in idle:
                assert await client.read_to_eof() == replies.SHUTDOWN
            # Sessions inside DATA are not interrupted: they finish, then hear 421.
            for client in paused:
                await trio.sleep(0.2)
                await client.send(TAIL + b".\r\n")
                await client.expect(250, "2.0.0")
                assert await client.read_to_eof() == replies.SHUTDOWN
            # The load threads all end: every session gets its 421 after its transaction.
        assert await daemon.wait_exit() == 0
        exited_after = trio.current_time() - signalled_at
    assert exited_after < DRAIN
    assert load.unexpected == []
    stored = _stored_markers(daemon.var_dir)
    assert len(stored) == len(set(stored)), "a message was stored twice"
    on_disk = set(stored)
    assert load.acked - on_disk == set(), "acknowledged but lost"
    assert on_disk - load.attempted - {"paused-0", "paused-1"} == set()
    assert {"paused-0", "paused-1"} <= on_disk
    assert len(load.acked) >= ACKED_BEFORE_SIGTERM
    assert "Traceback" not in daemon.log_text()
