"""Building test configurations from ``Config()`` with a few fields changed."""

from __future__ import annotations

from pathlib import Path
from typing import Any

import attrs

from trio_mta.config import BareLineEndings, Config, DataConfig, ListenerConfig


def make_config(
    var_dir: Path,
    *,
    timeouts: dict[str, float] | None = None,
    limits: dict[str, Any] | None = None,
    bare_line_endings: BareLineEndings = BareLineEndings.REJECT,
    fsync: bool = False,
) -> Config:
    """``Config()`` on a loopback port chosen by the kernel, delivering under ``var_dir``.

    fsync is off by default: durability is not what these tests measure, speed is a budget.
    """
    base = Config()
    return attrs.evolve(
        base,
        server=attrs.evolve(base.server, var_dir=var_dir),
        listeners=(ListenerConfig(name="mx", host="127.0.0.1", port=0),),
        timeouts=attrs.evolve(base.timeouts, **(timeouts or {})),
        limits=attrs.evolve(base.limits, **(limits or {})),
        data=DataConfig(bare_line_endings=bare_line_endings),
        plugin_configs={"queue_maildir": {"fsync": fsync}},
        # Never the fixed 8025: tests (and other daemons) run side by side.
        admin=attrs.evolve(base.admin, listen="127.0.0.1:0"),
    )
