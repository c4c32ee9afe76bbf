"""Mail-auth fixtures: a real dnsmasq on a loopback port serving SPF, DKIM and DMARC TXT
records, keys generated once per session, and a DNS server that never answers."""

from __future__ import annotations

import socket
import subprocess
import time
from collections.abc import AsyncIterator, Iterator, Mapping
from pathlib import Path

import attrs
import pytest
import trio
import trio.lowlevel

from trio_mta import dkimkey, hooks
from trio_mta.resolver import DNSResolver

DNSMASQ = Path("/usr/sbin/dnsmasq")


@attrs.frozen
class Keys:
    rsa: bytes
    rsa_txt: str
    ed: bytes
    ed_txt: str
    other: bytes
    other_txt: str


@pytest.fixture(scope="session")
def keys() -> Keys:
    rsa, rsa_txt = dkimkey.generate("rsa")
    ed, ed_txt = dkimkey.generate("ed25519")
    other, other_txt = dkimkey.generate("rsa", 1024)
    return Keys(rsa, rsa_txt, ed, ed_txt, other, other_txt)


def zone(keys: Keys) -> dict[str, list[str]]:
    return {
        "sender.test": ["v=spf1 ip4:127.0.0.1 -all"],
        "_dmarc.sender.test": ["v=DMARC1; p=reject; sp=quarantine; rua=mailto:d@sender.test"],
        "s1._domainkey.sender.test": [keys.rsa_txt],
        "ed._domainkey.sender.test": [keys.ed_txt],
        "soft.test": ["v=spf1 ip4:192.0.2.99 ~all"],
        "fail.test": ["v=spf1 ip4:192.0.2.99 -all"],
        "helo.test": ["v=spf1 ip4:127.0.0.1 -all"],
        "incl.test": ["v=spf1 include:sender.test -all"],
        "other.test": ["v=spf1 -all"],
        "s1._domainkey.other.test": [keys.other_txt],
        "relaxed.test": ["v=spf1 ip4:127.0.0.1 -all"],
        "_dmarc.relaxed.test": ["v=DMARC1; p=reject; pct=0"],
        "nopolicy.test": ["v=spf1 ?all"],
        "_dmarc.nopolicy.test": ["v=DMARC1; p=none"],
        "arc._domainkey.forwarder.test": [keys.rsa_txt],
    }


def free_port() -> int:
    """A port free for both UDP and TCP on 127.0.0.1 (dnsmasq binds both)."""
    for _ in range(50):
        with socket.socket(socket.AF_INET, socket.SOCK_DGRAM) as udp:
            udp.bind(("127.0.0.1", 0))
            port: int = udp.getsockname()[1]
            with socket.socket(socket.AF_INET, socket.SOCK_STREAM) as tcp:
                try:
                    tcp.bind(("127.0.0.1", port))
                except OSError:
                    continue
        return port
    raise RuntimeError("no free port")


def start_dnsmasq(records: Mapping[str, list[str]]) -> tuple[subprocess.Popen[bytes], int]:
    if not DNSMASQ.exists():
        pytest.skip("dnsmasq not installed (apt-get install dnsmasq-base)")
    for _ in range(5):
        port = free_port()
        args = [
            str(DNSMASQ),
            "--no-resolv",
            "--no-hosts",
            "--bind-interfaces",
            "--listen-address=127.0.0.1",
            f"--port={port}",
            "--keep-in-foreground",
            "--local=/test/",
            "--conf-file=/dev/null",
            "--pid-file=",
        ]
        for name, texts in records.items():
            for text in texts:
                parts = [text[i : i + 255] for i in range(0, len(text), 255)]
                args.append(f"--txt-record={name}," + ",".join(parts))
        proc = subprocess.Popen(args, stdout=subprocess.DEVNULL, stderr=subprocess.PIPE)
        deadline = time.monotonic() + 5
        while time.monotonic() < deadline:
            if proc.poll() is not None:
                break
            if _answers(port):
                return proc, port
            time.sleep(0.02)
        if proc.poll() is None:
            proc.kill()
        proc.wait()
    raise RuntimeError("dnsmasq did not start")


def _answers(port: int) -> bool:
    import dns.message
    import dns.query

    query = dns.message.make_query("sender.test", "TXT")
    try:
        dns.query.udp(query, "127.0.0.1", port=port, timeout=0.2)
    except (OSError, dns.exception.Timeout):
        return False
    return True


@attrs.frozen
class DNS:
    port: int
    proc: subprocess.Popen[bytes]

    @property
    def nameserver(self) -> str:
        return f"127.0.0.1:{self.port}"

    def resolver(self) -> hooks.Resolver:
        return DNSResolver([("127.0.0.1", self.port)], try_interval=1.0)


@pytest.fixture(scope="session")
def dnsmasq(keys: Keys) -> Iterator[DNS]:
    proc, port = start_dnsmasq(zone(keys))
    try:
        yield DNS(port, proc)
    finally:
        proc.terminate()  # by PID: the Popen we started
        try:
            proc.wait(5)
        except subprocess.TimeoutExpired:
            proc.kill()
            proc.wait()


@attrs.define
class SilentDNS:
    port: int
    queries: int = 0


@pytest.fixture
async def silent_dns(nursery: trio.Nursery) -> AsyncIterator[SilentDNS]:
    """A UDP port that reads queries (counting them) and never answers."""
    sock = trio.socket.socket(trio.socket.AF_INET, trio.socket.SOCK_DGRAM)
    await sock.bind(("127.0.0.1", 0))
    silent = SilentDNS(sock.getsockname()[1])

    scope = trio.CancelScope()

    async def drop() -> None:
        with scope:
            while True:
                await sock.recv(65535)
                silent.queries += 1

    nursery.start_soon(drop)
    yield silent
    scope.cancel()
    await trio.lowlevel.checkpoint()
    sock.close()
