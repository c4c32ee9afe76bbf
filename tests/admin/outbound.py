"""A daemon whose queue delivers to a loopback peer (aiosmtpd on 127.0.0.2): ``ok@`` recipients
are accepted, ``defer@`` ones greylisted (451) and ``reject@`` ones refused (550), so one message
shows every delivery outcome on the admin stream."""

from __future__ import annotations

from collections.abc import Iterator
from contextlib import contextmanager
from pathlib import Path

import attrs

from tests.integration_queue.conftest import free_port
from tests.integration_queue.kit import Peer, PeerHandler
from trio_mta.config import Config, RouteConfig

from .kit import admin_config

SINK_IP = "127.0.0.2"
DOMAIN = "sink.test"


@contextmanager
def sink(defer_times: int = 10**9) -> Iterator[Peer]:
    peer = Peer.start(SINK_IP, free_port(SINK_IP), PeerHandler(SINK_IP, defer_times=defer_times))
    try:
        yield peer
    finally:
        peer.stop()


def outbound_config(
    var_dir: Path, peer: Peer, *, retry_first: float = 600.0, **admin: object
) -> Config:
    """Relaying for 127.0.0.1 to ``sink.test``, queued and delivered to ``peer`` (no TLS)."""
    base = admin_config(var_dir, **admin)
    return attrs.evolve(
        base,
        plugins=attrs.evolve(base.plugins, order=("relay_acl",)),
        plugin_configs={**base.plugin_configs, "relay_acl": {"allow": ["127.0.0.1/32"]}},
        queue=attrs.evolve(
            base.queue,
            port=peer.port,
            starttls="never",
            fsync=False,
            retry_first=retry_first,
            dead_destination=0.0,
        ),
        routes=(RouteConfig(domain=DOMAIN, host=SINK_IP),),
    )
