"""trio-mta status, plugins and check --against-running against a daemon started from the
shipped conf/, over its control socket; and what they say when no daemon runs."""

from __future__ import annotations

import json
import os
import signal
import smtplib
from pathlib import Path
from typing import Any

import trio

from .confdaemon import CAP, ConfDaemon, shipped_conf, start, stop
from .confdaemon import daemons as daemons  # the fixture
from .conftest import daemon_command


async def cli(*args: str) -> tuple[int, str, str]:
    with trio.fail_after(CAP):
        done = await trio.run_process(
            daemon_command(*args), capture_stdout=True, capture_stderr=True, check=False
        )
    return done.returncode, done.stdout.decode(), done.stderr.decode()


async def as_json(*args: str) -> Any:
    code, out, err = await cli(*args, "--json")
    assert code == 0, err
    return json.loads(out)


def _send(port: int) -> None:
    with smtplib.SMTP("127.0.0.1", port, timeout=10) as smtp:
        smtp.sendmail("a@example.test", ["bob@example.test"], b"Subject: x\r\n\r\nhi\r\n")


async def test_status_plugins_and_pending_changes_of_a_running_daemon(
    daemons: list[ConfDaemon], tmp_path: Path
) -> None:
    conf = shipped_conf(tmp_path / "conf")
    var = tmp_path / "var"
    where = ("--config", str(conf), "--var-dir", str(var))

    # Not running: status says so (exit 3, as systemctl); plugins reads the configuration.
    code, out, err = await cli("status", *where)
    assert (code, out) == (3, "")
    assert err.startswith("trio-mta: not running")
    offline = await as_json("plugins", *where)
    assert offline["running"] is False
    assert offline["order"] == ["auth_flat_file", "rcpt_to_host_list", "queue_maildir"]
    assert [h["hook"] for h in offline["hooks"]] == ["auth", "rcpt", "queue"]

    daemon = await start(daemons, conf, var, tmp_path / "daemon.log")
    await trio.to_thread.run_sync(_send, daemon.addresses["mx"])
    status = await as_json("status", *where)
    assert status["running"] is True
    assert status["pid"] == daemon.process.pid != os.getpid()
    assert status["version"] == "0.1.0"
    assert 0 <= status["uptime"] < CAP
    assert status["var_dir"] == str(var)
    assert {(x["name"], x["kind"]) for x in status["listeners"]} == {
        ("mx", "mx"), ("submission", "submission"), ("smtps", "smtps")
    }  # fmt: skip
    assert {x["address"] for x in status["listeners"]} == {
        f"127.0.0.1:{port}" for port in daemon.addresses.values()
    }
    assert status["queue"] == {"messages": 0, "active": 0, "held": 0, "deferred": 0, "waiting": 0}
    breakers = {p["name"]: p["breaker"] for p in status["plugins"]}
    assert breakers == {
        "auth_flat_file": "closed", "rcpt_to_host_list": "closed", "queue_maildir": "closed"
    }  # fmt: skip
    assert status["restart_needed"] == []

    code, out, _ = await cli("status", *where)
    assert code == 0
    assert out.startswith(f"trio-mta 0.1.0: running, pid {daemon.process.pid}, up ")
    assert "queue: 0 messages" in out

    live = await as_json("plugins", *where)
    assert live["running"] is True
    rcpt = next(h for h in live["hooks"] if h["hook"] == "rcpt")["plugins"][0]
    assert (rcpt["plugin"], rcpt["breaker"], rcpt["calls"]) == ("rcpt_to_host_list", "closed", 1)
    code, out, _ = await cli("plugins", *where)
    assert "# from the running daemon" in out
    assert "rcpt_to_host_list (30s, async, breaker closed, 1 calls, 0 failed" in out

    # A change that needs a restart and one that a reload applies, before and after SIGHUP.
    toml = conf / "trio-mta.toml"
    text = toml.read_text().replace("max_connections = 1000", "max_connections = 10")
    toml.write_text(text.replace('"rcpt_to_host_list", "queue_maildir"]', '"queue_maildir"]'))
    code, out, err = await cli("check", *where, "--against-running")
    assert code == 0, err
    assert "a reload (SIGHUP) would apply: [plugins] order" in out
    assert "changed, needing a restart: [limits] max_connections" in out
    daemon.process.send_signal(signal.SIGHUP)
    with trio.fail_after(CAP):
        while (await as_json("status", *where))["reloads"] == 0:  # noqa: ASYNC110  # polled
            await trio.sleep(0.05)
    status = await as_json("status", *where)
    assert status["restart_needed"] == ["[limits] max_connections"]
    assert [p["name"] for p in status["plugins"]] == ["auth_flat_file", "queue_maildir"]
    assert status["generation"] == 2
    log = daemon.log_text()
    assert "need a restart and are NOT in force: [limits] max_connections" in log
    await stop(daemon)
