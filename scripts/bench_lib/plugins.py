"""``scripts/bench-plugins``: the cost of the hook chain.

trio-mta in discard mode, run as shipped (two plugins) and again with ten extra no-op plugins
registered on every SMTP hook, loaded by smtp-source in turn (interleaved, rotating order);
the report is the throughput ratio, which the plugin issue wants at 0.8 or better.
"""

from __future__ import annotations

import argparse
import statistics
import sys
import tempfile
from collections.abc import Sequence
from pathlib import Path

from .load import Run, run_once, size_run
from .servers import Server, raise_nofile, start_trio, write_trio_config

HOOKS = (
    "connect_init",
    "connect",
    "helo",
    "ehlo",
    "mail",
    "rcpt",
    "rcpt_ok",
    "data",
    "data_headers_end",
    "data_post",
    "queue_ok",
    "reset_transaction",
    "disconnect",
)
NOOP_PLUGINS = [f"noop{i}" for i in range(10)]


def write_noop_plugins(directory: Path) -> None:
    methods = "\n".join(
        f"    async def hook_{hook}(self, conn: hooks.Connection, *args: object) -> None:\n"
        "        return None\n"
        for hook in HOOKS
    )
    source = f"from trio_mta import hooks\n\n\nclass Plugin(hooks.Plugin):\n{methods}"
    for name in NOOP_PLUGINS:
        (directory / f"{name}.py").write_text(source)


def configure(root: Path, *, noop: bool) -> Path:
    config_dir = write_trio_config(
        root / ("noop" if noop else "plain"), maildir=False, max_connections=2000
    )
    if noop:
        plugin_dir = root / "noop-plugins"
        plugin_dir.mkdir(exist_ok=True)
        write_noop_plugins(plugin_dir)
        text = (config_dir / "trio-mta.toml").read_text()
        order = ", ".join(f'"{n}"' for n in NOOP_PLUGINS)
        text = text.replace(
            "[plugins]\norder = [",
            f'[plugins]\ndirectories = ["{plugin_dir}"]\norder = [{order}, ',
        )
        (config_dir / "trio-mta.toml").write_text(text)
    return config_dir


def main(argv: Sequence[str] | None = None) -> int:
    parser = argparse.ArgumentParser(prog="scripts/bench-plugins", description=__doc__)
    parser.add_argument("--concurrency", type=int, default=100)
    parser.add_argument("--repeats", type=int, default=3)
    parser.add_argument("--seconds", type=float, default=3.0)
    args = parser.parse_args(argv)
    raise_nofile()
    with tempfile.TemporaryDirectory(prefix="trio-mta-bench-plugins-") as tmp:
        root = Path(tmp)
        servers: dict[str, Server] = {}
        try:
            for label, noop in (("2 plugins", False), ("+10 no-op plugins", True)):
                servers[label] = start_trio(
                    label.replace(" ", "_"), configure(root, noop=noop), root / label, root
                )
            print(f"| connections | {' | '.join(servers)} | ratio |")
            print("|--|--:|--:|--:|")
            for reuse in (False, True):
                sizes = {
                    n: size_run(s, args.concurrency, reuse=reuse, target=args.seconds)
                    for n, s in servers.items()
                }
                runs: dict[str, list[Run]] = {n: [] for n in servers}
                for repeat in range(args.repeats):
                    order = list(servers) if repeat % 2 == 0 else list(reversed(servers))
                    for name in order:
                        runs[name].append(
                            run_once(
                                servers[name],
                                args.concurrency,
                                sizes[name],
                                reuse=reuse,
                                timeout=120,
                            )
                        )
                rates = [statistics.median(r.rate for r in runs[n]) for n in servers]
                mode = "reused (-d)" if reuse else "per message"
                cells = " | ".join(f"{rate:.0f} msg/s" for rate in rates)
                print(f"| {mode} | {cells} | {rates[1] / rates[0]:.2f}x |", flush=True)
        finally:
            for server in servers.values():
                server.stop()
    return 0


if __name__ == "__main__":
    sys.exit(main())
