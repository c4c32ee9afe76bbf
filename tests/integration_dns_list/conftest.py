"""A real dnsmasq on a loopback port serving test DNS lists, and the daemon (``app.run``) with
``dns_list`` in front of ``rcpt_to_host_list`` and ``queue_discard``.

The zones (RFC 5782 test entries and a few more; every other name under ``.test`` is NXDOMAIN):

``bl.test`` (block)  127.0.0.2 → 127.0.0.2 with a TXT record; 127.0.0.4 → 127.0.0.4
``wl.test`` (allow)  127.0.0.4 → 127.0.10.2
"""

from __future__ import annotations

import subprocess
import time
from collections.abc import AsyncIterator, Iterator, Mapping, Sequence
from contextlib import asynccontextmanager
from pathlib import Path
from typing import Any

import attrs
import dns.exception
import dns.message
import dns.query
import pytest
import trio

from tests.helpers.config import make_config
from tests.helpers.smtp import LineClient
from tests.mailauth.conftest import DNSMASQ, free_port, silent_dns
from trio_mta import app
from trio_mta.config import Config, ResolverConfig
from trio_mta.server import BoundListener

__all__ = ["silent_dns"]  # the mail-auth suite's never-answering server, as a fixture here too

LISTED = "127.0.0.2"  # on bl.test, with a TXT record
UNLISTED = "127.0.0.3"
BOTH = "127.0.0.4"  # on bl.test and on the allow list wl.test
BL_TXT = "Listed for testing: see https://bl.test/q/127.0.0.2"  # no comma: dnsmasq splits there

HOST_RECORDS = {
    "2.0.0.127.bl.test": "127.0.0.2",
    "4.0.0.127.bl.test": "127.0.0.4",
    "4.0.0.127.wl.test": "127.0.10.2",
}
TXT_RECORDS = {"2.0.0.127.bl.test": BL_TXT}
ZONES = [{"zone": "bl.test"}, {"zone": "wl.test", "type": "allow"}]


def _answers(port: int) -> bool:
    query = dns.message.make_query("2.0.0.127.bl.test", "A")
    try:
        answer = dns.query.udp(query, "127.0.0.1", port=port, timeout=0.2)
    except (OSError, dns.exception.Timeout):
        return False
    return bool(answer.answer)


def start_dnsmasq() -> tuple[subprocess.Popen[bytes], int]:
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
            "--local=/test/",  # authoritative for .test: what is not here is NXDOMAIN
            "--conf-file=/dev/null",
            "--pid-file=",
        ]
        args += [f"--host-record={name},{ip}" for name, ip in HOST_RECORDS.items()]
        args += [f"--txt-record={name},{text}" for name, text in TXT_RECORDS.items()]
        proc = subprocess.Popen(args, stdout=subprocess.DEVNULL, stderr=subprocess.PIPE)
        deadline = time.monotonic() + 5
        while time.monotonic() < deadline and proc.poll() is None:
            if _answers(port):
                return proc, port
            time.sleep(0.02)
        if proc.poll() is None:
            proc.kill()
        proc.wait()
    raise RuntimeError("dnsmasq did not start")


@attrs.frozen
class DNSLists:
    port: int

    @property
    def nameserver(self) -> str:
        return f"127.0.0.1:{self.port}"


@pytest.fixture(scope="session")
def dns_lists() -> Iterator[DNSLists]:
    proc, port = start_dnsmasq()
    try:
        yield DNSLists(port)
    finally:
        proc.terminate()  # by PID: the Popen we started
        try:
            proc.wait(5)
        except subprocess.TimeoutExpired:
            proc.kill()
            proc.wait()


def mta_config(
    var_dir: Path,
    nameserver: str,
    *,
    zones: Sequence[Mapping[str, object]] = tuple(ZONES),
    via_resolver: bool = False,
    **settings: Any,
) -> Config:
    """The daemon's config: ``dns_list`` (checking loopback clients) before the recipient and
    queue plugins. The lists' server is the plugin's ``nameservers``, or with ``via_resolver``
    the server's ``[resolver] nameservers`` (what the plugin gets as ``env.resolver``)."""
    base = make_config(var_dir)
    dns_list: dict[str, object] = {"zones": list(zones), "check_loopback": True, **settings}
    if not via_resolver:
        dns_list["nameservers"] = [nameserver]
    return attrs.evolve(
        base,
        plugins=attrs.evolve(
            base.plugins, order=("dns_list", "rcpt_to_host_list", "queue_discard")
        ),
        plugin_configs={**base.plugin_configs, "dns_list": dns_list},
        resolver=ResolverConfig(nameservers=(nameserver,) if via_resolver else ()),
        tls=attrs.evolve(base.tls, generate_self_signed=False),  # no certificate to make
    )


@attrs.frozen
class Running:
    host: str
    port: int

    async def connect(self, local_ip: str) -> LineClient:
        """A connection from ``local_ip`` (any 127/8 address is ours on loopback)."""
        return LineClient(await trio.open_tcp_stream(self.host, self.port, local_address=local_ip))


@asynccontextmanager
async def running(config: Config) -> AsyncIterator[Running]:
    """``app.run(config)`` until the body ends; listening when the body starts."""
    async with trio.open_nursery() as nursery:
        bound: list[BoundListener] = await nursery.start(app.run, config)
        try:
            yield Running(bound[0].host, bound[0].port)
        finally:
            nursery.cancel_scope.cancel()
