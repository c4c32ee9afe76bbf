"""``trio-mta queue`` on a stopped spool: list, show, stats, hold, release, flush, delete."""

from __future__ import annotations

import json
import os
import subprocess
import sys
from pathlib import Path

import attrs
import pytest
from hypothesis import given
from hypothesis import strategies as st

from trio_mta import cli
from trio_mta.control import VarDirLock
from trio_mta.queue import Envelope, Recipient, Selection, Spool, ask
from trio_mta.queue._control import DaemonBusy
from trio_mta.queue._records import dumps
from trio_mta.queue._select import parse_duration


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
    assert "corrupt entries: 0" in out
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
    assert run(tmp_path, "hold") == 1
    assert "no message m1" in capsys.readouterr().err


def test_bulk_selection_json_and_body_offline(
    tmp_path: Path, capsys: pytest.CaptureFixture[str]
) -> None:
    spool = make_spool(tmp_path)
    assert run(tmp_path, "list", "--json", "--domain", "other.test") == 0
    [entry] = json.loads(capsys.readouterr().out)
    assert entry["id"] == "m2"
    assert entry["recipients"][0]["address"] == "c@other.test"
    assert run(tmp_path, "hold", "ALL", "--to", "@dest.test") == 0
    assert capsys.readouterr().out == "held m1\n"
    assert spool.read("m1").held
    assert not spool.read("m2").held
    assert run(tmp_path, "release", "--from", "A@Sender.test", "--older-than", "1d") == 0
    assert capsys.readouterr().out.splitlines() == ["released m1", "released m2"]
    assert run(tmp_path, "hold", "--from", "<>") == 0  # no bounces here
    assert capsys.readouterr().out == "held 0\n"
    assert run(tmp_path, "delete") == 1  # nothing selected: refused, not "everything"
    assert "select messages" in capsys.readouterr().err
    assert run(tmp_path, "show", "m1", "--json") == 0
    shown = json.loads(capsys.readouterr().out)
    assert shown["headers"] == "Subject: hello"
    assert "message" not in shown
    assert run(tmp_path, "show", "m1", "--body") == 0
    out = capsys.readouterr().out
    assert "sender: <a@sender.test>" in out
    assert out.endswith("*** message ***\nSubject: hello\r\n\r\nbody\n")
    assert run(tmp_path, "hold", "m1", "nosuch") == 1  # m1 held all the same
    assert capsys.readouterr().err == "trio-mta queue hold: no message nosuch\n"
    assert spool.read("m1").held
    assert run(tmp_path, "delete", "ALL") == 0
    assert spool.ids() == []
    assert (tmp_path / "trio-mta.lock").read_text() == f"{os.getpid()}\n"  # the CLI held it


def test_the_offline_cli_holds_the_lock_and_a_running_daemon_is_asked(tmp_path: Path) -> None:
    make_spool(tmp_path)
    # A daemon starting up holds the lock before its socket listens.
    with VarDirLock(tmp_path), pytest.raises(DaemonBusy, match=f"pid {os.getpid()}"):
        ask(tmp_path, tmp_path / "queue", "hold", {"id": "m1"})


def test_selection_arguments() -> None:
    assert Selection.from_args({"ids": ["ALL"]}) == Selection(all=True)
    assert Selection.from_args({"id": "m1", "older_than": "2h"}).older_than == 7200
    with pytest.raises(ValueError):
        Selection.from_args({"older_than": "soon"})
    with pytest.raises(ValueError):
        Selection.from_args({"ids": [3]})
    assert parse_duration("15m") == 900
    assert parse_duration("1w") == 7 * 86400


@pytest.mark.parametrize(
    "args",
    [("queue", "list"), ("queue", "list", "--json"), ("queue", "show", "m1", "--body")],
)
def test_output_into_a_closed_pipe_ends_quietly(tmp_path: Path, args: tuple[str, ...]) -> None:
    """``trio-mta queue list | head``: the reader is gone before we write."""
    make_spool(tmp_path)
    read_end, write_end = os.pipe()
    os.close(read_end)
    try:
        result = subprocess.run(
            [sys.executable, "-m", "trio_mta", *args[:1], "--var-dir", str(tmp_path), *args[1:]],
            stdout=write_end, stderr=subprocess.PIPE, check=False, timeout=30,
        )  # fmt: skip
    finally:
        os.close(write_end)
    assert result.stderr == b""
    assert result.returncode == cli.SIGPIPE_EXIT


def test_output_into_a_pipe_closed_midway_ends_quietly(tmp_path: Path) -> None:
    spool = make_spool(tmp_path)
    env = spool.read("m1")
    for n in range(1500):  # about 200 KB of listing: far more than a pipe holds
        id = f"bulk{n:05d}"
        spool.message_path(id).write_bytes(b"Subject: x\r\n\r\nx\r\n")
        spool.envelope_path(id).write_bytes(dumps(attrs.evolve(env, id=id)))
    process = subprocess.Popen(
        [sys.executable, "-m", "trio_mta", "queue", "--var-dir", str(tmp_path), "list"],
        stdout=subprocess.PIPE, stderr=subprocess.PIPE,
    )  # fmt: skip
    assert process.stdout is not None
    assert process.stderr is not None
    assert process.stdout.readline().startswith(b"ID ")  # `head -1`
    process.stdout.close()
    assert process.wait(timeout=30) == cli.SIGPIPE_EXIT
    assert process.stderr.read() == b""
    process.stderr.close()


@given(st.integers(min_value=0, max_value=10**6), st.sampled_from(["", "s", "m", "h", "d", "w"]))
def test_durations(number: int, unit: str) -> None:
    factor = {"": 1, "s": 1, "m": 60, "h": 3600, "d": 86400, "w": 604800}[unit]
    assert parse_duration(f"{number}{unit.upper() if number % 2 else unit}") == number * factor


@given(st.text(max_size=20))
def test_a_duration_parses_or_is_refused(text: str) -> None:
    try:
        seconds = parse_duration(text)
    except ValueError:
        return
    assert seconds >= 0
