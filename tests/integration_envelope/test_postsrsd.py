"""Interoperability with postsrsd (libsrs2's scheme, as Postfix sites run it) sharing our
secret: an address postsrsd made is reversed and relayed by our daemon, and the SRS sender our
daemon put on a relayed message is reversed by postsrsd.

postsrsd is found as ``$POSTSRSD``, on PATH, in /usr/sbin, or unpacked without a daemon under
``.tools/postsrsd`` (``apt-get download postsrsd && dpkg -x postsrsd_*.deb .tools/postsrsd``);
without it these tests are skipped. It listens on loopback ports only, and is stopped by its
process id.
"""

from __future__ import annotations

import os
import shutil
import socket
import subprocess
import time
from collections.abc import Iterator
from pathlib import Path

import attrs
import pytest
import trio

from tests.integration_plugins.kit import running_app
from tests.smtpclient.peers import Recorder, aiosmtpd_server

from .kit import CAP, OUTSIDE, SECRET, envelope_config, message, send, wait_received

REPO = Path(__file__).resolve().parents[2]
SRS_DOMAIN = "srs.example.test"


def find_postsrsd() -> str | None:
    candidates = [
        os.environ.get("POSTSRSD", ""),
        shutil.which("postsrsd") or "",
        "/usr/sbin/postsrsd",
        str(REPO / ".tools" / "postsrsd" / "usr" / "sbin" / "postsrsd"),
    ]
    return next((c for c in candidates if c and os.access(c, os.X_OK)), None)


def free_port() -> int:
    with socket.socket() as sock:
        sock.bind(("127.0.0.1", 0))
        return int(sock.getsockname()[1])


def listening(port: int) -> bool:
    with socket.socket() as probe:
        return probe.connect_ex(("127.0.0.1", port)) == 0


@attrs.frozen
class PostSRSd:
    forward_port: int
    reverse_port: int

    def ask(self, port: int, address: str) -> str:
        """A Postfix tcp_table lookup: ``get <address>`` answered ``200 <result>``."""
        with socket.create_connection(("127.0.0.1", port), timeout=5) as sock:
            sock.sendall(f"get {address}\n".encode())
            answer = sock.makefile("rb").readline().decode().strip()
        code, _, value = answer.partition(" ")
        assert code == "200", answer
        return value

    def forward(self, address: str) -> str:
        return self.ask(self.forward_port, address)

    def reverse(self, address: str) -> str:
        return self.ask(self.reverse_port, address)


@pytest.fixture(scope="module")
def postsrsd(tmp_path_factory: pytest.TempPathFactory) -> Iterator[PostSRSd]:
    binary = find_postsrsd()
    if binary is None:
        pytest.skip("postsrsd is not installed (Debian: postsrsd, or unpacked in .tools)")
    secrets = tmp_path_factory.mktemp("postsrsd") / "secrets"
    secrets.write_text(SECRET + "\n")
    server = PostSRSd(free_port(), free_port())
    argv = [binary, f"-s{secrets}", f"-d{SRS_DOMAIN}", "-l127.0.0.1", "-4"]
    argv += [f"-f{server.forward_port}", f"-r{server.reverse_port}"]
    proc = subprocess.Popen(argv, stdin=subprocess.DEVNULL, stderr=subprocess.PIPE)
    try:
        deadline = time.monotonic() + 10
        while not listening(server.reverse_port):
            if proc.poll() is not None or time.monotonic() > deadline:
                err = proc.stderr.read().decode() if proc.stderr else ""
                pytest.fail(f"postsrsd did not start: {err}")
            time.sleep(0.02)
        yield server
    finally:
        proc.terminate()
        try:
            proc.wait(5)
        except subprocess.TimeoutExpired:
            proc.kill()
            proc.wait()
        if proc.stderr is not None:
            proc.stderr.close()


async def test_addresses_cross_between_postsrsd_and_us(postsrsd: PostSRSd, tmp_path: Path) -> None:
    origin, dest = Recorder(), Recorder()
    with trio.fail_after(CAP):
        async with aiosmtpd_server(origin) as origin_port, aiosmtpd_server(dest) as dest_port:
            config = envelope_config(
                tmp_path / "var",
                ["relay_acl", "srs", "rcpt_to_host_list", "queue_maildir"],
                {"srs": {"secret": SECRET, "domain": SRS_DOMAIN}},
                {"sender.test": origin_port, "dest.test": dest_port},
            )
            async with running_app(config) as mta:
                # postsrsd's address, bounced to us: reversed and relayed.
                theirs = await trio.to_thread.run_sync(postsrsd.forward, "Alice@Sender.test")
                assert theirs.startswith("SRS0=")
                bounce = b"Subject: bounce\r\n\r\nreturned\r\n"
                answer = await send(mta, "", [theirs], bounce, source=OUTSIDE)
                assert answer.code == 250, answer
                [returned] = await wait_received(origin)
                assert returned.rcpt_tos == ("Alice@Sender.test",)
                # Ours (an SRS1 too: re-forwarding someone else's SRS0), reversed by postsrsd.
                senders = ["carol@sender.test", "SRS0=abcd=RA=orig.test=erin@fwd.test"]
                for sender in senders:
                    answer = await send(mta, sender, ["bob@dest.test"], message(sender))
                    assert answer.code == 250, answer
                relayed = await wait_received(dest, 2)
    by_sender = {r.mail_from.split("=", 1)[0]: r.mail_from for r in relayed}
    assert set(by_sender) == {"SRS0", "SRS1"}
    assert postsrsd.reverse(by_sender["SRS0"]) == "carol@sender.test"
    assert postsrsd.reverse(by_sender["SRS1"]) == "SRS0=abcd=RA=orig.test=erin@fwd.test"
