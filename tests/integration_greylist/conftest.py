"""The daemon in-process (``app.run``) with greylist in front of discard delivery, on loopback,
driven by trio's MockClock: time moves only when a test jumps it, so greylisting's minutes
pass in an instant while every byte still crosses a real socket.

Under a MockClock a trio deadline would only see jumps, so each test is bounded in real time
by ``real_time_cap`` instead.
"""

from __future__ import annotations

import contextlib
import threading
from collections.abc import AsyncIterator, Iterator, Mapping
from pathlib import Path

import attrs
import pytest
import trio

from tests.helpers.config import make_config
from tests.helpers.smtp import LineClient
from trio_mta import app
from trio_mta.config import Config

CAP = 20.0  # seconds of real time per test
ORDER = ("greylist", "rcpt_to_host_list", "queue_discard")
# Everything a test's daemon needs in trio-mta.toml (the reload test reads it from a file).
CONF = """\
[server]
hostname = "mx.example.test"
var_dir = "{var_dir}"
local_domains = ["example.test"]

[[listener]]
name = "mx"
listen = "127.0.0.1:0"

[tls]
generate_self_signed = false

[queue]
enabled = false

[admin]
enabled = false

[plugins]
order = {order}
"""


@contextlib.contextmanager
def real_time_cap(seconds: float = CAP) -> Iterator[None]:
    """Cancel the block after ``seconds`` of real time (a timer thread), then fail."""
    token = trio.lowlevel.current_trio_token()
    with trio.CancelScope() as scope:
        timer = threading.Timer(seconds, lambda: token.run_sync_soon(scope.cancel))
        timer.start()
        try:
            yield
        finally:
            timer.cancel()
    if scope.cancelled_caught:
        pytest.fail(f"not done within {seconds} s of real time")


def daemon_config(var_dir: Path, greylist: Mapping[str, object] | None = None) -> Config:
    """``make_config`` (loopback, port 0) with greylist, local delivery refused for other
    domains, and a discarding queue; no TLS, admin or outbound queue to start."""
    base = make_config(var_dir)
    return attrs.evolve(
        base,
        server=attrs.evolve(base.server, local_domains=("example.test",)),
        tls=attrs.evolve(base.tls, generate_self_signed=False),
        admin=attrs.evolve(base.admin, enabled=False),
        queue=attrs.evolve(base.queue, enabled=False),
        plugins=attrs.evolve(base.plugins, order=ORDER),
        plugin_configs={**base.plugin_configs, "greylist": dict(greylist or {})},
    )


def write_conf_dir(conf_dir: Path, var_dir: Path, greylist: str = "") -> None:
    """A configuration directory for ``trio_mta.config.load_config`` (and so for SIGHUP)."""
    (conf_dir / "plugins").mkdir(parents=True, exist_ok=True)
    order = "[" + ", ".join(f'"{name}"' for name in ORDER) + "]"
    (conf_dir / "trio-mta.toml").write_text(CONF.format(var_dir=var_dir, order=order))
    (conf_dir / "plugins" / "greylist.toml").write_text(greylist)


@attrs.frozen
class Daemon:
    host: str
    port: int

    async def greeted(self) -> LineClient:
        client = LineClient(await trio.open_tcp_stream(self.host, self.port))
        await client.expect(220)
        await client.command("EHLO client.example", 250)
        return client


@contextlib.asynccontextmanager
async def running(config: Config) -> AsyncIterator[Daemon]:
    """``app.run(config)`` until the block ends; then cancelled, which shuts the plugins down
    (greylist commits what it holds) as at SIGTERM."""
    async with trio.open_nursery() as nursery:
        bound = await nursery.start(app.run, config)
        try:
            yield Daemon(bound[0].host, bound[0].port)
        finally:
            nursery.cancel_scope.cancel()


@pytest.fixture
def var_dir(tmp_path: Path) -> Path:
    return tmp_path / "var"
