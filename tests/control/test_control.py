"""The control socket over real Unix sockets, and the state-directory lock."""

from __future__ import annotations

import json
import os
import socket
import stat
from pathlib import Path
from typing import Any

import pytest
import trio
import trio.testing
from hypothesis import given, settings
from hypothesis import strategies as st

from trio_mta.control import (
    MAX_REQUEST,
    AlreadyRunning,
    ControlError,
    ControlServer,
    NotRunning,
    VarDirLock,
    arequest,
    request,
    socket_path,
)


async def echo(args: dict[str, Any]) -> Any:
    return {"echo": args}


async def refuse(args: dict[str, Any]) -> Any:
    raise LookupError("no message x1")


async def crash(args: dict[str, Any]) -> Any:
    raise RuntimeError("a bug\nover two lines")


async def forever(args: dict[str, Any]) -> Any:
    await trio.sleep_forever()


async def serving(nursery: trio.Nursery, var_dir: Path, deadline: float = 30.0) -> ControlServer:
    server = ControlServer(socket_path(var_dir), deadline=deadline)
    for name, handler in (("echo", echo), ("refuse", refuse), ("crash", crash)):
        server.register(name, handler)
    server.register("forever", forever)
    await nursery.start(server.serve)
    return server


def raw(var_dir: Path, data: bytes) -> list[dict[str, Any]]:
    """Blocking: send ``data`` as is, read replies until the daemon closes or goes quiet."""
    with socket.socket(socket.AF_UNIX, socket.SOCK_STREAM) as sock:
        sock.settimeout(5)
        sock.connect(str(socket_path(var_dir)))
        sock.sendall(data)
        sock.shutdown(socket.SHUT_WR)
        received = b""
        while chunk := sock.recv(65536):
            received += chunk
    return [json.loads(line) for line in received.splitlines()]


async def test_requests_sync_and_async_and_the_socket_file(
    nursery: trio.Nursery, tmp_path: Path
) -> None:
    server = await serving(nursery, tmp_path)
    path = socket_path(tmp_path)
    assert stat.S_ISSOCK(path.stat().st_mode)
    assert stat.S_IMODE(path.stat().st_mode) == 0o600
    answer = await trio.to_thread.run_sync(lambda: request(tmp_path, "echo", id="m1", n=2))
    assert answer == {"echo": {"id": "m1", "n": 2}}
    assert await arequest(tmp_path, "echo", x=[1]) == {"echo": {"x": [1]}}
    with pytest.raises(ControlError, match="no message x1"):
        await arequest(tmp_path, "refuse")
    assert server.commands == ["crash", "echo", "forever", "refuse"]


async def test_the_socket_file_goes_with_the_server(tmp_path: Path) -> None:
    path = socket_path(tmp_path)
    path.write_text("stale: a crashed daemon's socket")
    async with trio.open_nursery() as nursery:
        await serving(nursery, tmp_path)
        assert stat.S_ISSOCK(path.stat().st_mode)  # the stale file was replaced
        nursery.cancel_scope.cancel()
    assert not path.exists()
    with pytest.raises(NotRunning):
        request(tmp_path, "echo")
    with pytest.raises(NotRunning):
        await arequest(tmp_path, "echo")


async def test_malformed_requests_are_answered_and_the_server_goes_on(
    nursery: trio.Nursery, tmp_path: Path, caplog: pytest.LogCaptureFixture
) -> None:
    await serving(nursery, tmp_path)
    lines = [
        b"not json",
        b"[1, 2]",
        b'{"no": "cmd"}',
        b'{"cmd": 7}',
        b'{"cmd": "nope"}',
        b'{"cmd": "refuse"}',
        b'{"cmd": "crash"}',
        b"\xff\xfe",
        b'{"cmd": "echo", "a": 1}',
    ]
    replies = await trio.to_thread.run_sync(raw, tmp_path, b"\n".join(lines) + b"\n")
    assert [r["ok"] for r in replies] == [False] * 8 + [True]
    errors = [r["error"] for r in replies[:8]]
    assert errors[0].startswith("malformed request")
    assert errors[1] == "malformed request: not a JSON object"
    assert errors[2] == errors[3] == 'malformed request: no "cmd"'
    assert errors[4].startswith("unknown command 'nope' (known: crash, echo")
    assert errors[5] == "refuse: no message x1"
    assert errors[6].startswith("crash: internal error: RuntimeError('a bug")
    assert "\n" not in errors[6]
    assert errors[7].startswith("malformed request")
    assert "control: crash failed" in caplog.text  # a handler's bug is logged
    assert replies[8]["result"] == {"echo": {"a": 1}}


async def test_an_overlong_request_is_refused_and_its_connection_closed(
    nursery: trio.Nursery, tmp_path: Path
) -> None:
    await serving(nursery, tmp_path)
    huge = b'{"cmd": "echo", "x": "' + b"a" * MAX_REQUEST + b'"}\n{"cmd": "echo"}\n'
    replies = await trio.to_thread.run_sync(raw, tmp_path, huge)
    assert replies == [{"ok": False, "error": f"request longer than {MAX_REQUEST} octets"}]
    assert await arequest(tmp_path, "echo") == {"echo": {}}


async def test_a_request_has_a_deadline(
    nursery: trio.Nursery, tmp_path: Path, autojump_clock: trio.testing.MockClock
) -> None:
    server = await serving(nursery, tmp_path, deadline=5.0)
    start = trio.current_time()
    reply = await server.answer(b'{"cmd": "forever"}')
    assert reply == {"ok": False, "error": "forever: no answer within 5 s"}
    assert trio.current_time() - start == pytest.approx(5.0)


async def test_a_silent_client_is_closed_at_the_deadline(
    nursery: trio.Nursery, tmp_path: Path, autojump_clock: trio.testing.MockClock
) -> None:
    await serving(nursery, tmp_path, deadline=5.0)
    sock = trio.socket.socket(socket.AF_UNIX, socket.SOCK_STREAM)
    with sock:
        await sock.connect(str(socket_path(tmp_path)))
        start = trio.current_time()
        assert await sock.recv(100) == b""  # closed by the server
        assert trio.current_time() - start == pytest.approx(5.0)


async def test_a_long_state_directory_path_still_works(
    nursery: trio.Nursery, tmp_path: Path
) -> None:
    deep = tmp_path / ("d" * 60) / ("e" * 60)
    deep.mkdir(parents=True)
    assert len(str(socket_path(deep))) > 108
    await serving(nursery, deep)
    assert await arequest(deep, "echo") == {"echo": {}}
    assert await trio.to_thread.run_sync(lambda: request(deep, "echo")) == {"echo": {}}


def test_the_lock_keeps_a_second_owner_out(tmp_path: Path) -> None:
    first = VarDirLock(tmp_path)
    first.acquire()
    assert (tmp_path / "trio-mta.lock").read_text() == f"{os.getpid()}\n"
    with pytest.raises(AlreadyRunning) as refused:
        VarDirLock(tmp_path).acquire()
    assert refused.value.pid == os.getpid()
    assert f"pid {os.getpid()}" in str(refused.value)
    first.release()
    with VarDirLock(tmp_path) as second:
        assert second.held
    assert not second.held


@settings(max_examples=200, deadline=None)
@given(st.one_of(st.binary(max_size=200), st.text(max_size=200).map(str.encode)))
def test_any_request_line_gets_a_one_line_reply(line: bytes) -> None:
    server = ControlServer(Path("unused.sock"))
    server.register("echo", echo)
    reply = trio.run(server.answer, line)
    assert set(reply) in ({"ok", "result"}, {"ok", "error"})
    assert reply["ok"] is ("result" in reply)
    assert "\n" not in json.dumps(reply)
