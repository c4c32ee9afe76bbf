"""Who may watch: the token, loopback-open, Origin and Host checks, and the refusal to expose
the stream without a token; plain HTTP errors; a taken port."""

from __future__ import annotations

import logging
import socket
import struct
from pathlib import Path

import attrs
import pytest
import trio
import trio_websocket

from tests.e2e.conftest import daemon_command, write_conf
from trio_mta.admin import AdminServer, AdminSetupError, Metrics
from trio_mta.config import AdminConfig, ConfigError, load_config
from trio_mta.events import EventBus

from .kit import admin_config, running, watching

CAP = 20
TOKEN = "s3cret-admin-token-0123"


async def rejected(url: str, headers: list[tuple[bytes, bytes]] | None = None) -> tuple[int, str]:
    try:
        async with watching(url, extra_headers=headers or []):
            pass
    except trio_websocket.ConnectionRejected as exc:
        return exc.status_code, (exc.body or b"").decode()
    raise AssertionError(f"{url} was accepted")


async def test_the_token_is_enforced_when_the_listener_is_not_open(tmp_path: Path) -> None:
    config = admin_config(tmp_path / "var", token=TOKEN, open_on_loopback=False)
    with trio.fail_after(CAP):
        async with running(config) as d:
            status, body = await rejected(d.url())
            assert status == 401
            assert "a bearer token is required" in body
            assert "Authorization: Bearer" in body
            status, body = await rejected(d.url(), [(b"authorization", b"Bearer wrong-token")])
            assert (status, body.strip()) == (401, "admin: the bearer token is not valid")
            assert (await rejected(d.url(f"token={TOKEN}x")))[0] == 401
            auth = [(b"authorization", f"Bearer {TOKEN}".encode())]
            async with watching(d.url(), extra_headers=auth) as w:
                assert w.hello is not None
            async with watching(d.url(f"token={TOKEN}")) as w:  # browsers: no headers
                assert w.hello is not None
            assert (await d.get("/metrics"))[0] == 401
            code, text = await d.get("/metrics", {"Authorization": f"Bearer {TOKEN}"})
            assert code == 200
            assert b"trio_mta_connections_open" in text
            assert (await d.get("/"))[0] == 200  # the page holds no data


async def test_loopback_open_needs_no_token_but_checks_host_and_origin(tmp_path: Path) -> None:
    config = admin_config(tmp_path / "var", token=TOKEN)  # open_on_loopback stays true
    with trio.fail_after(CAP):
        async with running(config) as d:
            async with watching(d.url()) as w:
                assert w.hello is not None
            own = f"http://{d.base_url}".encode()
            async with watching(d.url(), extra_headers=[(b"origin", own)]) as w:
                assert w.hello is not None
            status, body = await rejected(d.url(), [(b"origin", b"https://evil.example")])
            assert status == 403
            assert "origin 'https://evil.example' is not allowed" in body
            # DNS rebinding: the attacker's name for 127.0.0.1, its own origin.
            rebinding = {"Host": "evil.example:8025", "Origin": "http://evil.example:8025"}
            code, text = await d.upgrade("/events", rebinding)
            assert code == 403
            assert b"loopback Host" in text
            loopback = {"Host": "localhost:8025", "Origin": "http://localhost:8025"}
            assert (await d.upgrade("/events", loopback))[0] == 101
            # A wrong token is refused even where no token is needed.
            assert (await rejected(d.url("token=not-the-token")))[0] == 401
            assert (await d.get("/metrics", {"Host": "evil.example"}))[0] == 403


async def test_configured_origins_are_allowed(tmp_path: Path) -> None:
    config = admin_config(tmp_path / "var", origins=("https://Dash.example/",))
    with trio.fail_after(CAP):
        async with running(config) as d:
            headers = [(b"origin", b"https://dash.example")]
            async with watching(d.url(), extra_headers=headers) as w:
                assert w.hello is not None


def test_no_token_on_a_public_listener_is_refused_everywhere(tmp_path: Path) -> None:
    public = AdminConfig(listen="0.0.0.0:8025")
    with pytest.raises(AdminSetupError, match=r"admin\.token: required when listen"):
        AdminServer(public, EventBus(), Metrics(EventBus()))
    AdminServer(attrs.evolve(public, token=TOKEN), EventBus(), Metrics(EventBus()))
    AdminServer(attrs.evolve(public, enabled=False), EventBus(), Metrics(EventBus()))
    write_conf(tmp_path, '[admin]\nlisten = "[::]:8025"\n')
    with pytest.raises(ConfigError) as caught:
        load_config(tmp_path)
    [issue] = caught.value.issues
    assert issue.key == "admin.token"
    assert issue.why.startswith("required when listen ([::]:8025) is not a loopback address")
    write_conf(tmp_path, "[admin]\nopen_on_loopback = false\n")
    with pytest.raises(ConfigError, match=r"admin\.token: required when open_on_loopback"):
        load_config(tmp_path)
    write_conf(tmp_path, '[admin]\ntoken = "short"\n')
    with pytest.raises(ConfigError, match=r"admin\.token: must be at least 16") as short:
        load_config(tmp_path)
    assert "short" not in short.value.issues[0].why  # a secret is never echoed


async def test_the_daemon_refuses_to_start_with_a_public_admin_listener(tmp_path: Path) -> None:
    conf = write_conf(tmp_path / "conf", '[admin]\nlisten = "0.0.0.0:0"\n')
    with trio.fail_after(CAP):
        result = await trio.run_process(
            daemon_command("run", "--config", str(conf), "--listen", "127.0.0.1:0"),
            capture_stdout=True,
            capture_stderr=True,
            check=False,
        )
    assert result.returncode == 1
    assert result.stdout == b""
    assert b"admin.token: required when listen (0.0.0.0:0) is not a loopback" in result.stderr


async def test_a_taken_admin_port_is_logged_and_mail_still_flows(
    tmp_path: Path, caplog: pytest.LogCaptureFixture
) -> None:
    with socket.socket() as taken:
        taken.bind(("127.0.0.1", 0))
        taken.listen()
        port = taken.getsockname()[1]
        config = admin_config(tmp_path / "var", listen=f"127.0.0.1:{port}")
        from trio_mta import app

        addresses: list[tuple[str, int] | None] = []
        with trio.fail_after(CAP), caplog.at_level(logging.ERROR, "trio_mta.admin"):
            async with trio.open_nursery() as nursery:
                bound = await nursery.start(
                    lambda task_status: app.run(
                        config, on_admin=addresses.append, task_status=task_status
                    )
                )
                from tests.helpers.smtp import LineClient

                client = LineClient(await trio.open_tcp_stream(bound[0].host, bound[0].port))
                await client.expect(220)
                await client.command("QUIT", 221)
                nursery.cancel_scope.cancel()
    assert addresses == [None]
    assert f"admin listener 127.0.0.1:{port} could not bind" in caplog.text


async def test_plain_http_errors(tmp_path: Path) -> None:
    with trio.fail_after(CAP):
        async with running(admin_config(tmp_path / "var")) as d:
            assert (await d.get("/nowhere"))[0] == 404
            status, body = await d.get("/events")
            assert status == 426
            assert b"websocket" in body
            stream = await trio.open_tcp_stream(*d.admin)
            await stream.send_all(b"POST / HTTP/1.1\r\nHost: 127.0.0.1\r\n\r\n")
            assert (await stream.receive_some()).startswith(b"HTTP/1.1 405 ")
            stream = await trio.open_tcp_stream(*d.admin)
            await stream.send_all(b"NONSENSE\r\n\r\n")
            assert (await stream.receive_some()).startswith(b"HTTP/1.1 400 ")


async def test_a_client_gone_before_its_error_response_costs_nothing(tmp_path: Path) -> None:
    with trio.fail_after(CAP):
        async with running(admin_config(tmp_path / "var")) as d:
            for _ in range(20):  # a refused request, then a reset before the answer
                sock = trio.socket.socket()
                await sock.connect(d.admin)
                await sock.send(b"POST / HTTP/1.1\r\nHost: " + d.base_url.encode() + b"\r\n\r\n")
                sock.setsockopt(socket.SOL_SOCKET, socket.SO_LINGER, struct.pack("ii", 1, 0))
                sock.close()
            await trio.sleep(0.2)  # let the listener try its answers
            status, _ = await d.get("/metrics")
            assert status == 200
            assert (await d.send()).code == 250
