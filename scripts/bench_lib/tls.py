"""``scripts/bench --tls``: TLS handshakes per second against the implicit-TLS listener, next to
plain connections per second against a plain listener of the same daemon.

One trio-mta process with two listeners (``plain``, kind mx; ``smtps``, implicit TLS, with the
first-run self-signed ECDSA P-256 certificate). Load: ``processes`` client processes
(``tlsload.py``), each running ``concurrency`` Trio tasks that loop connect → (handshake) →
banner → QUIT → 221 → close for ``seconds``. Every client handshake is a full one (no session
resumption). The modes alternate for ``repeats`` rounds; the median is reported with the
server's CPU time per session from /proc, which does not depend on how fast the clients are.
"""

from __future__ import annotations

import argparse
import json
import shutil
import statistics
import subprocess
import sys
import tempfile
from dataclasses import dataclass
from pathlib import Path

from .servers import VENV_BIN, Server

CONFIG = """\
# Written by scripts/bench --tls.
[server]
hostname = "trio-mta.bench"

[[listener]]
name = "plain"
listen = "127.0.0.1:0"
kind = "mx"

[[listener]]
name = "smtps"
listen = "127.0.0.1:0"
kind = "smtps"

[limits]
max_connections = 10000
max_connections_per_ip = 10000

[tls]
generate_self_signed = true

[plugins]
order = ["queue_discard"]

[log]
level = "WARNING"
transaction_log = false
"""


@dataclass(frozen=True)
class TlsRun:
    mode: str  # "plain" or "tls"
    sessions: int
    errors: int
    seconds: float
    server_cpu: float
    first_error: str

    @property
    def rate(self) -> float:
        return self.sessions / self.seconds if self.seconds else 0.0

    @property
    def cpu_us(self) -> float:
        return self.server_cpu / self.sessions * 1e6 if self.sessions else 0.0


def start_server(work: Path) -> tuple[Server, dict[str, int]]:
    conf = work / "tls-conf"
    conf.mkdir(parents=True, exist_ok=True)
    (conf / "trio-mta.toml").write_text(CONFIG)
    argv = [str(VENV_BIN / "trio-mta"), "run", "--config", str(conf)]
    argv += ["--var-dir", str(work / "tls-var")]
    server = Server("trio-tls", argv, work / "trio-tls.log")
    ports = {}
    for word in server.ready_line.split()[2:]:
        name, _, address = word.partition("=")
        ports[name] = int(address.rpartition(":")[2])
    return server, ports


def one_run(
    server: Server, port: int, mode: str, *, seconds: float, processes: int, concurrency: int
) -> TlsRun:
    argv = [str(VENV_BIN / "python"), "-m", "bench_lib.tlsload", server.host, str(port)]
    argv += [str(seconds), str(concurrency), mode]
    cpu_before = server.cpu_seconds()
    clients = [
        subprocess.Popen(argv, stdout=subprocess.PIPE, cwd=Path(__file__).parent.parent)
        for _ in range(processes)
    ]
    results = []
    for client in clients:
        out, _ = client.communicate(timeout=seconds * 10 + 30)
        results.append(json.loads(out))
    cpu = server.cpu_seconds() - cpu_before
    return TlsRun(
        mode=mode,
        sessions=sum(int(r["done"]) for r in results),
        errors=sum(int(r["errors"]) for r in results),
        seconds=max(float(r["seconds"]) for r in results),
        server_cpu=cpu,
        first_error=next((str(r["first_error"]) for r in results if r["first_error"]), ""),
    )


def tls_bench(
    work: Path, *, seconds: float, repeats: int, processes: int, concurrency: int
) -> list[str]:
    """Run the bench; return the markdown report lines."""
    server, ports = start_server(work)
    runs: list[TlsRun] = []
    try:
        for rep in range(repeats):
            for mode in ("plain", "tls") if rep % 2 == 0 else ("tls", "plain"):
                port = ports["smtps"] if mode == "tls" else ports["plain"]
                run = one_run(
                    server,
                    port,
                    mode,
                    seconds=seconds,
                    processes=processes,
                    concurrency=concurrency,
                )
                runs.append(run)
                print(
                    f"tls bench rep {rep + 1} {mode:<5} {run.sessions:>6} sessions "
                    f"{run.rate:7.0f}/s {run.cpu_us:6.0f} µs server CPU/session"
                    + (f" errors {run.errors} ({run.first_error})" if run.errors else ""),
                    file=sys.stderr,
                    flush=True,
                )
    finally:
        server.stop()
    lines = [
        "## TLS handshake rate",
        "",
        f"{processes} client process(es) x {concurrency} Trio tasks, ~{seconds:g} s per run, "
        f"{repeats} run(s) per mode (alternating); each session: connect, "
        "(full TLS handshake), banner, QUIT, 221, close. Median of the runs.",
        "",
        "| mode | sessions/s | server µs CPU/session | errors |",
        "|---|--:|--:|--:|",
    ]
    for mode, label in (("plain", "plain connection"), ("tls", "implicit TLS handshake")):
        mine = [r for r in runs if r.mode == mode]
        rate = statistics.median(r.rate for r in mine)
        cpu = statistics.median(r.cpu_us for r in mine)
        spread = f" ({min(r.rate for r in mine):.0f}..{max(r.rate for r in mine):.0f})"
        lines.append(
            f"| {label} | {rate:.0f}{spread if len(mine) > 1 else ''} | {cpu:.0f} "
            f"| {sum(r.errors for r in mine)} |"
        )
    version = subprocess.run(
        [str(VENV_BIN / "python"), "-c", "import ssl; print(ssl.OPENSSL_VERSION)"],
        capture_output=True,
        text=True,
        check=False,
    ).stdout.strip()
    lines += [
        "",
        f"TLS: {version}, TLS 1.3 (client default), self-signed ECDSA P-256 certificate. "
        "Clients and server share the machine's CPUs, so sessions/s is bounded by both; the "
        "server's CPU per session is the figure to compare across machines.",
    ]
    return lines


def add_tls_arguments(p: argparse.ArgumentParser) -> None:
    p.add_argument(
        "--tls",
        action="store_true",
        help="only the TLS handshake rate (implicit TLS listener) next to the plain connection "
        "rate; --seconds (default 3), --repeats and --keep apply",
    )
    p.add_argument("--tls-processes", type=int, default=2, help="client processes (default 2)")
    p.add_argument(
        "--tls-concurrency", type=int, default=16, help="tasks per client process (default 16)"
    )


def tls_main(args: argparse.Namespace, preamble: list[str]) -> int:
    """``scripts/bench --tls``: the report on stdout, progress on stderr."""
    work = Path(tempfile.mkdtemp(prefix="trio-mta-bench-tls-"))
    out = [line for line in preamble if line.startswith(("# ", "- Machine", "- trio-mta: tree"))]
    out = [out[0], "", *(line.split(". Delivery:")[0] for line in out[1:]), ""]
    try:
        out += tls_bench(
            work,
            seconds=args.tls_seconds,
            repeats=args.repeats,
            processes=args.tls_processes,
            concurrency=args.tls_concurrency,
        )
    except RuntimeError as exc:
        print(f"bench: {exc}", file=sys.stderr)
        return 1
    finally:
        if args.keep:
            print(f"work directory kept: {work}", file=sys.stderr)
        else:
            shutil.rmtree(work, ignore_errors=True)
    print("\n".join(out), flush=True)
    return 0
