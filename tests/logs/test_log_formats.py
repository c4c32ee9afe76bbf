"""[log]: text and JSON lines with UTC ISO 8601 times, syslog over a Unix datagram socket, a
file that is reopened after logrotate renamed it, case-insensitive level names."""

from __future__ import annotations

import json
import logging
import os
import socket
import sys
from collections.abc import Iterator
from pathlib import Path

import pytest

from tests.e2e.conftest import write_conf
from trio_mta import logs
from trio_mta.config import LogConfig, LogDestination, LogFormat, load_config

# 2026-12-08T00:34:55.123Z, in a zone far from UTC: the time must not be local.
CREATED = 1796690095.1234


def record(msg: str = "txn=%s outcome=%s", *args: object) -> logging.LogRecord:
    rec = logging.LogRecord("trio_mta.transaction", logging.INFO, __file__, 1, msg, args, None)
    rec.created = CREATED
    return rec


@pytest.fixture
def far_from_utc(monkeypatch: pytest.MonkeyPatch) -> Iterator[None]:
    import time

    monkeypatch.setenv("TZ", "Pacific/Kiritimati")  # UTC+14
    time.tzset()
    yield
    monkeypatch.delenv("TZ")
    time.tzset()


def test_text_lines_have_utc_iso_8601_times(far_from_utc: None) -> None:
    line = logs.TextFormatter().format(record("txn=%s outcome=%s", "A1", "accepted"))
    assert line == ("2026-12-08T00:34:55.123Z INFO trio_mta.transaction txn=A1 outcome=accepted")


def test_json_lines_are_one_object_each(far_from_utc: None) -> None:
    rec = record("said %r", "a\nb")
    obj = json.loads(logs.JsonFormatter().format(rec))
    assert obj == {
        "time": "2026-12-08T00:34:55.123Z",
        "level": "INFO",
        "logger": "trio_mta.transaction",
        "message": "said 'a\\nb'",
        "pid": os.getpid(),
    }
    try:
        raise ValueError("boom")
    except ValueError:
        failed = record("failed")
        failed.exc_info = sys.exc_info()
    line = logs.JsonFormatter().format(failed)
    assert "\n" not in line
    assert "ValueError: boom" in json.loads(line)["exception"]


def test_the_second_is_cached_but_the_milliseconds_are_not() -> None:
    formatter = logs.TextFormatter()
    first, second = record("x"), record("x")
    second.created = CREATED + 0.5
    third = record("x")
    third.created = CREATED + 1.0
    assert formatter.format(first).startswith("2026-12-08T00:34:55.123Z ")
    assert formatter.format(second).startswith("2026-12-08T00:34:55.623Z ")
    assert formatter.format(third).startswith("2026-12-08T00:34:56.123Z ")


def test_level_names_are_case_insensitive(tmp_path: Path) -> None:
    for written in ("info", "Warning", "DEBUG"):
        conf = write_conf(tmp_path / written, f'[log]\nlevel = "{written}"\n')
        assert load_config(conf).log.level == written.upper()


def test_syslog_goes_to_a_unix_datagram_socket(tmp_path: Path) -> None:
    path = tmp_path / "log.sock"
    with socket.socket(socket.AF_UNIX, socket.SOCK_DGRAM) as server:
        server.bind(str(path))
        server.settimeout(5)
        config = LogConfig(destination=LogDestination.SYSLOG, syslog_socket=str(path))
        handler = logs.build_handler(config, tmp_path)
        try:
            handler.handle(record("txn=%s", "A1"))
            datagram = server.recv(4096)
            json_handler = logs.build_handler(
                LogConfig(
                    destination=LogDestination.SYSLOG,
                    syslog_socket=str(path),
                    syslog_facility="local3",
                    format=LogFormat.JSON,
                ),
                tmp_path,
            )
            json_handler.handle(record("txn=%s", "A2"))
            second = server.recv(4096)
            json_handler.close()
        finally:
            handler.close()
    # <PRI> = facility mail (2) * 8 + severity info (6); syslog stamps the time itself.
    assert datagram == f"<22>trio-mta[{os.getpid()}]: INFO trio_mta.transaction txn=A1\0".encode()
    prefix = f"<158>trio-mta[{os.getpid()}]: ".encode()  # local3 (19) * 8 + 6
    assert second.startswith(prefix)
    assert json.loads(second[len(prefix) : -1])["message"] == "txn=A2"


def test_a_missing_syslog_socket_is_a_clear_error(tmp_path: Path) -> None:
    config = LogConfig(destination=LogDestination.SYSLOG, syslog_socket=str(tmp_path / "nope"))
    with pytest.raises(logs.LogSetupError, match=r"\[log\] syslog_socket '.*nope': "):
        logs.build_handler(config, tmp_path)


def test_a_file_is_reopened_after_it_was_renamed(tmp_path: Path) -> None:
    config = LogConfig(destination=LogDestination.FILE, file="log/mta.log")
    handler = logs.build_handler(config, tmp_path)  # relative to var_dir; directory made
    assert isinstance(handler, logs.ReopenableFileHandler)
    try:
        path = tmp_path / "log" / "mta.log"
        handler.handle(record("one"))
        path.rename(tmp_path / "log" / "mta.log.1")  # logrotate
        handler.handle(record("two"))  # still the old file, until told
        handler.reopen()
        handler.handle(record("three"))
    finally:
        handler.close()
    rotated = (tmp_path / "log" / "mta.log.1").read_text().splitlines()
    assert [line.rsplit(" ", 1)[1] for line in rotated] == ["one", "two"]
    assert path.read_text().splitlines()[0].endswith(" three")
