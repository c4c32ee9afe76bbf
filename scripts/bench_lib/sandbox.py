"""``scripts/bench-sandbox-smtp``: what sandboxing one no-op hook costs a loaded server.

trio-mta in discard mode with one extra plugin whose ``hook_rcpt`` does nothing, run
in-process and again with ``sandbox = "process"``, loaded by smtp-source in turn (interleaved,
rotating order, so the shared machine's noise falls on both); the report is the throughput
ratio and the CPU per message (server and its workers), which issue #15 wants at 0.8x or better.
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

NOOP = """\
from trio_mta import hooks


class Plugin(hooks.Plugin):
    {sandbox}
    async def hook_rcpt(self, conn: hooks.Connection, *args: object) -> None:
        return None
"""


def configure(root: Path, *, sandboxed: bool) -> Path:
    name = "sandboxed" if sandboxed else "in_process"
    config_dir = write_trio_config(root / name, maildir=False, max_connections=2000)
    plugin_dir = root / f"{name}-plugins"
    plugin_dir.mkdir(exist_ok=True)
    line = 'sandbox = "process"' if sandboxed else ""
    (plugin_dir / "noop_rcpt.py").write_text(NOOP.format(sandbox=line))
    text = (config_dir / "trio-mta.toml").read_text()
    text = text.replace(
        "[plugins]\norder = [", f'[plugins]\ndirectories = ["{plugin_dir}"]\norder = ["noop_rcpt", '
    )
    (config_dir / "trio-mta.toml").write_text(text)
    return config_dir


def main(argv: Sequence[str] | None = None) -> int:
    parser = argparse.ArgumentParser(prog="scripts/bench-sandbox-smtp", description=__doc__)
    parser.add_argument("--concurrency", type=int, default=20)
    parser.add_argument("--repeats", type=int, default=3)
    parser.add_argument("--seconds", type=float, default=3.0)
    args = parser.parse_args(argv)
    raise_nofile()
    with tempfile.TemporaryDirectory(prefix="trio-mta-bench-sandbox-") as tmp:
        root = Path(tmp)
        servers: dict[str, Server] = {}
        try:
            for label, sandboxed in (("in-process no-op", False), ("sandboxed no-op", True)):
                config_dir = configure(root, sandboxed=sandboxed)
                servers[label] = start_trio(label.replace(" ", "_"), config_dir, root / label, root)
            print(f"| connections | {' | '.join(servers)} | ratio | CPU µs/msg (in, sandboxed) |")
            print("|--|--:|--:|--:|--:|")
            for reuse in (True,):
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
                cpus = [statistics.median(r.cpu_us_per_message for r in runs[n]) for n in servers]
                mode = "reused (-d)" if reuse else "per message"
                cells = " | ".join(f"{rate:.0f} msg/s" for rate in rates)
                print(
                    f"| {mode} | {cells} | {rates[1] / rates[0]:.2f}x "
                    f"| {cpus[0]:.0f}, {cpus[1]:.0f} |",
                    flush=True,
                )
        finally:
            for server in servers.values():
                server.stop()
    return 0


if __name__ == "__main__":
    sys.exit(main())
