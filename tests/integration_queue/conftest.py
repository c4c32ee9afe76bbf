"""Real DNS (dnsmasq on a loopback port) and real SMTP peers (aiosmtpd on 127.0.0.x).

One dnsmasq serves the whole package; each test gets its own aiosmtpd servers (one per
"MX host" address, all on one port, as MX delivery uses a single port) and its own trio-mta
(server + queue service, in the test's nursery) relaying for 127.0.0.1.
"""

from __future__ import annotations

import shutil
import socket
import subprocess
import time
from collections.abc import AsyncIterator, Awaitable, Callable, Iterator
from pathlib import Path

import attrs
import pytest
import trio

from tests.helpers.config import make_config
from tests.helpers.smtp import LineClient
from tests.integration_queue.kit import DNS_RECORDS, Peer, PeerHandler
from trio_mta.app import load_plugin_set
from trio_mta.config import Config, PluginsConfig, QueueConfig, ResolverConfig, RouteConfig
from trio_mta.hooks import HookRunner
from trio_mta.queue import QueueService
from trio_mta.resolver import DNSResolver
from trio_mta.server import PluginHost, SMTPServer

WALL_EPOCH = 1_700_000_000.0
DNSMASQ = shutil.which("dnsmasq") or "/usr/sbin/dnsmasq"


def free_port(host: str, kind: int = socket.SOCK_STREAM) -> int:
    with socket.socket(socket.AF_INET, kind) as sock:
        sock.bind((host, 0))
        return int(sock.getsockname()[1])


def free_dns_port() -> int:
    while True:
        port = free_port("127.0.0.1", socket.SOCK_DGRAM)
        with socket.socket(socket.AF_INET, socket.SOCK_STREAM) as tcp:
            try:
                tcp.bind(("127.0.0.1", port))
            except OSError:
                continue
        return port


def _start_dnsmasq(port: int) -> subprocess.Popen[bytes]:
    argv = [
        DNSMASQ,
        "--keep-in-foreground",
        "--no-resolv",
        "--no-hosts",
        "--bind-interfaces",
        "--listen-address=127.0.0.1",
        f"--port={port}",
        "--pid-file=",
        "--local=/test/",
        *DNS_RECORDS,
    ]
    return subprocess.Popen(argv, stdin=subprocess.DEVNULL, stderr=subprocess.PIPE)


def _wait_listening(proc: subprocess.Popen[bytes], port: int) -> bool:
    deadline = time.monotonic() + 10
    while proc.poll() is None and time.monotonic() < deadline:
        with socket.socket(socket.AF_INET, socket.SOCK_STREAM) as probe:
            if probe.connect_ex(("127.0.0.1", port)) == 0:
                return True
        time.sleep(0.02)
    if proc.poll() is None:
        proc.kill()
    return False


@attrs.frozen
class Dnsmasq:
    port: int
    pid: int


@pytest.fixture(scope="package")
def dnsmasq() -> Iterator[Dnsmasq]:
    """dnsmasq on 127.0.0.1:<free port>, authoritative for ``.test`` (unknown names are
    NXDOMAIN, known names without the asked type NODATA); stopped by its PID."""
    if not Path(DNSMASQ).exists():
        pytest.skip("dnsmasq is not installed (Debian: dnsmasq-base)")
    # dnsmasq binds UDP and TCP on its port: pick one free for both, and try again if another
    # process took it meanwhile.
    for attempt in range(5):
        port = free_dns_port()
        proc = _start_dnsmasq(port)
        if _wait_listening(proc, port):
            break
        err = proc.stderr.read().decode() if proc.stderr else ""
        proc.wait()
        if "in use" not in err or attempt == 4:
            pytest.fail(f"dnsmasq did not start: {err}")
    try:
        yield Dnsmasq(port, proc.pid)
    finally:
        proc.terminate()
        try:
            proc.wait(5)
        except subprocess.TimeoutExpired:
            proc.kill()
            proc.wait()
        if proc.stderr is not None:
            proc.stderr.close()


@pytest.fixture
def smtp_port() -> int:
    """The port every fake MX host listens on (and trio-mta's [queue] port)."""
    return free_port("127.0.0.2")


@pytest.fixture
def peers(smtp_port: int) -> Iterator[dict[str, Peer]]:
    """aiosmtpd on 127.0.0.2, .3, .5, .6, .7 and .8 (127.0.0.4 stays dark: a dead MX)."""
    started: dict[str, Peer] = {}
    try:
        for last in (2, 3, 5, 6, 7, 8):
            ip = f"127.0.0.{last}"
            started[ip] = Peer.start(ip, smtp_port, PeerHandler(ip))
        yield started
    finally:
        for peer in started.values():
            peer.stop()


@attrs.define
class QueueMTA:
    config: Config
    queue: QueueService
    host: str
    port: int

    async def send(
        self, sender: str, recipients: list[str], body: bytes, *, rcpt_params: str = ""
    ) -> str:
        """One relayed message; returns the queue id from the 250."""
        client = LineClient(await trio.open_tcp_stream(self.host, self.port))
        await client.expect(220)
        await client.command("EHLO client.test", 250)
        await client.command(f"MAIL FROM:<{sender}>", 250)
        for rcpt in recipients:
            await client.command(f"RCPT TO:<{rcpt}>{rcpt_params}", 250)
        await client.command("DATA", 354)
        await client.send(body + b".\r\n")
        answer = await client.expect(250)
        await client.command("QUIT", 221)
        await client.stream.aclose()
        return answer.lines[0].split()[-1]

    async def wait_empty(self) -> None:
        await self.queue.wait_until(lambda: not self.queue.envelopes)


def queue_config(
    var_dir: Path,
    *,
    smtp_port: int,
    dns_port: int,
    routes: tuple[RouteConfig, ...] = (),
    **queue: object,
) -> Config:
    base = make_config(var_dir)
    settings: dict[str, object] = {
        "port": smtp_port,
        "fsync": False,
        "starttls": "never",
        "connect_timeout": 5.0,
        "dead_destination": 0.0,
        **queue,
    }
    return attrs.evolve(
        base,
        plugins=PluginsConfig(order=("relay_acl",)),
        plugin_configs={"relay_acl": {"allow": ["127.0.0.1/32"]}},
        queue=attrs.evolve(QueueConfig(), **settings),  # type: ignore[arg-type]  # test knobs
        resolver=ResolverConfig(nameservers=(f"127.0.0.1:{dns_port}",)),
        routes=routes,
    )


StartQueueMTA = Callable[..., Awaitable[QueueMTA]]


@pytest.fixture
async def start_queue_mta(
    nursery: trio.Nursery, var_dir: Path, dnsmasq: Dnsmasq, smtp_port: int
) -> AsyncIterator[StartQueueMTA]:
    """``await start(**queue_settings)``: trio-mta relaying for 127.0.0.1 into its queue."""
    servers: list[SMTPServer] = []

    async def start(routes: tuple[RouteConfig, ...] = (), **queue: object) -> QueueMTA:
        config = queue_config(
            var_dir, smtp_port=smtp_port, dns_port=dnsmasq.port, routes=routes, **queue
        )
        host = PluginHost(load_plugin_set(config))
        service = QueueService(
            config,
            resolver=DNSResolver([("127.0.0.1", dnsmasq.port)], try_interval=1.0),
            runner=lambda: HookRunner(host.current),
            now=lambda: WALL_EPOCH + trio.current_time(),  # wall time follows the trio clock
        )
        await nursery.start(service.serve)
        host.queue = service
        server = SMTPServer(config, host.handler)
        [bound] = await nursery.start(server.serve)
        servers.append(server)
        return QueueMTA(config, service, bound.host, bound.port)

    yield start
    for server in servers:
        server.request_shutdown()
