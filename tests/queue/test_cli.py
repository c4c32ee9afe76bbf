"""``trio-mta queue`` on a stopped spool: list, show, stats, hold, release, flush, delete."""

from __future__ import annotations

import os
from pathlib import Path

import attrs
import pytest

from trio_mta import cli
from trio_mta.queue import Command, Envelope, Recipient, Spool, send_command
from trio_mta.queue._control import daemon_pid, parse_command
from trio_mta.queue._records import dumps


def make_spool(var_dir: Path) -> Spool:
    spool = Spool(var_dir / "queue")
    spool.create()
    for id, rcpt in (("m1", "b@dest.test"), ("m2", "c@other.test")):
        env = Envelope(id, "a@sender.test", (Recipient(rcpt, code=451, enhanced="4.7.1",
                       text="Greylisted"),), 1.7e9, 1.7e9 + 60, attempts=1, size=17)  # fmt: skip
        spool.message_path(id).write_bytes(b"Subject: hello\r\n\r\nbody\r\n")
        spool.envelope_path(id).write_bytes(dumps(env))
    return spool


def run(var_dir: Path, *args: str) -> int:
    return cli.main(["queue", "--var-dir", str(var_dir), *args])


def test_list_show_stats(tmp_path: Path, capsys: pytest.CaptureFixture[str]) -> None:
    make_spool(tmp_path)
    assert run(tmp_path, "list") == 0
    out = capsys.readouterr().out
    assert "m1" in out
    assert "b@dest.test" in out
    assert "451 4.7.1 Greylisted" in out
    assert "-- 2 message(s)" in out
    assert run(tmp_path, "show", "m2") == 0
    out = capsys.readouterr().out
    assert "c@other.test: pending" in out
    assert "Subject: hello" in out
    assert run(tmp_path, "stats") == 0
    out = capsys.readouterr().out
    assert "messages: 2" in out
    assert "dest.test: 1" in out
    assert run(tmp_path, "show", "nope") == 1


def test_changes_on_a_stopped_spool(tmp_path: Path, capsys: pytest.CaptureFixture[str]) -> None:
    spool = make_spool(tmp_path)
    assert run(tmp_path, "hold", "m1") == 0
    assert spool.read("m1").held
    assert run(tmp_path, "release", "m1") == 0
    assert not spool.read("m1").held
    assert spool.read("m1").next_attempt == 0
    assert run(tmp_path, "flush", "other.test") == 0
    assert spool.read("m2").next_attempt == 0
    assert run(tmp_path, "delete", "m1") == 0
    assert spool.ids() == ["m2"]
    assert not spool.message_path("m1").exists()
    assert run(tmp_path, "delete", "m1") == 1
    assert run(tmp_path, "hold") == 2
    assert "error: no message m1" in capsys.readouterr().out


def test_a_stale_pid_file_is_not_a_daemon(tmp_path: Path) -> None:
    spool = make_spool(tmp_path)
    if not any(m in Path("/proc/self/cmdline").read_bytes() for m in (b"trio-mta", b"trio_mta")):
        (spool.root / "daemon.pid").write_text(f"{os.getpid()}\n")  # alive, but not trio-mta
        assert daemon_pid(spool.root) is None
    (spool.root / "daemon.pid").write_text("999999999\n")
    assert daemon_pid(spool.root) is None
    assert send_command(spool.root, Command("hold", "m2")) == "held m2"


def test_command_syntax() -> None:
    assert parse_command("flush") == Command("flush")
    assert parse_command("flush dest.test") == Command("flush", "dest.test")
    assert str(Command("hold", "m1")) == "hold m1"
    for bad in ("", "hold", "bounce m1", "hold a b"):
        with pytest.raises(ValueError):
            parse_command(bad)


def test_envelope_evolve_is_what_cli_writes(tmp_path: Path) -> None:
    spool = make_spool(tmp_path)
    before = spool.read("m1")
    send_command(spool.root, Command("hold", "m1"))
    assert spool.read("m1") == attrs.evolve(before, held=True, next_attempt=0.0)
