"""``trio-mta watch``: the line for a transaction, printed under a pseudo-terminal (in colour),
and the client's own pieces (URL, formatting, refusals)."""

from __future__ import annotations

import io
import os
import pty
import re
import signal
import subprocess
import time
from pathlib import Path

import trio

from tests.e2e.conftest import daemon_command
from trio_mta.admin import WatchOptions, watch
from trio_mta.admin._format import Style, format_event, format_transaction
from trio_mta.admin._watch import _show

from .kit import admin_config, eventually, running
from .outbound import DOMAIN, outbound_config, sink
from .test_process import watcher_process_pids

TOKEN = "s3cret-admin-token-0123"

CAP = 20
WORDS = ("delivered", "deferred", "bounced")
GREEN = "\x1b[32m"

END: dict[str, object] = {
    "v": 1,
    "type": "transaction.end",
    "ts": 0.0,
    "conn": "c1",
    "txn": "t1",
    "ip": "192.0.2.7",
    "helo": "client.example",
    "sender": "alice@example.org",
    "recipients": ["bob@example.test", "carol@example.test"],
    "size": 4200,
    "outcome": "accepted",
    "code": 250,
    "reply": "2.0.0 Message queued as t1",
    "queue_id": "t1",
    "duration": 0.0123,
}


async def _read_until(fd: int, needle: bytes) -> bytes:
    out = b""
    while needle not in out:
        await trio.lowlevel.wait_readable(fd)
        try:
            chunk = os.read(fd, 4096)
        except OSError:  # EIO: the other side of the pty is gone
            break
        if not chunk:
            break
        out += chunk
    return out


async def test_watch_under_a_pty_prints_the_line_of_a_transaction(tmp_path: Path) -> None:
    with trio.fail_after(CAP):
        async with running(admin_config(tmp_path / "var")) as d:
            primary, secondary = pty.openpty()
            os.set_blocking(primary, False)
            process = await trio.lowlevel.open_process(
                daemon_command("watch", "--url", d.url()),
                stdin=subprocess.DEVNULL,
                stdout=secondary,
                stderr=subprocess.PIPE,
                env={k: v for k, v in os.environ.items() if k != "NO_COLOR"},
            )
            os.close(secondary)
            try:
                assert process.stderr is not None
                hello = b""
                while b"watching" not in hello:
                    chunk = await process.stderr.receive_some()
                    assert chunk, f"trio-mta watch exited: {hello.decode()}"
                    hello += chunk
                default = "type=transaction.end%2Ctransaction.refused%2Cdelivery"
                assert f"watching {d.url(default)}".encode() in hello
                answer = await d.send("pty@example.org", ("bob@example.test",))
                out = await _read_until(primary, b"\n")
            finally:
                process.kill()
                await process.wait()
                os.close(primary)
    line = out.decode()
    txn = answer.text.rsplit(" ", 1)[1]
    assert "<pty@example.org> -> <bob@example.test>" in line
    assert f"{GREEN}accepted\x1b[0m" in line  # a terminal: coloured
    assert f"Message accepted as {txn}" in line  # queue_discard's reply
    assert "[127.0.0.1]" in line


def test_the_line_for_each_outcome_and_colour_only_when_asked() -> None:
    plain = format_transaction(END, Style(False))
    assert "\x1b" not in plain
    assert "[192.0.2.7]  <alice@example.org> -> <bob@example.test>, <carol@example.test>" in plain
    assert "4.1 KiB  accepted  2.0.0 Message queued as t1  12 ms" in plain
    refused = {**END, "outcome": "refused", "code": 554, "reply": "5.7.1 no", "recipients": []}
    assert "\x1b[31mrefused\x1b[0m" in format_transaction(refused, Style(True))
    soft = {**END, "outcome": "refused", "code": 451, "reply": "4.3.0 later"}
    assert "\x1b[33mrefused\x1b[0m" in format_transaction(soft, Style(True))
    mail_refused = {**END, "outcome": "refused", "code": None, "reply": "550 5.7.1 no"}
    assert "\x1b[31m550 5.7.1 no" in format_transaction(mail_refused, Style(True))
    gap = format_transaction({"type": "gap", "dropped": 12}, Style(False))
    assert gap == "-- 12 events lost: this watcher fell behind --"
    call = {"type": "plugin.call", "ts": 0.0, "conn": "c1", "plugin": "p", "hook": "rcpt",
            "result": "deny", "duration": 0.5, "timed_out": False, "error": None}  # fmt: skip
    line = format_event(call, Style(True))
    assert "plugin.call" in line
    assert "plugin=p hook=rcpt result=deny" in line
    assert "\x1b[31m" in line
    assert "error=" not in line


def test_the_stream_url_carries_the_filters() -> None:
    summary = "transaction.end%2Ctransaction.refused%2Cdelivery"
    assert WatchOptions().stream_url() == f"ws://127.0.0.1:8025/events?type={summary}"
    outbound = WatchOptions(inbound=False).stream_url()
    assert outbound == "ws://127.0.0.1:8025/events?type=delivery"
    inbound = WatchOptions(follow=True, outbound=False).stream_url()
    assert inbound == "ws://127.0.0.1:8025/events?type=transaction.end%2Ctransaction.refused"
    follow = WatchOptions(follow=True, ips=("10.0.0.0/8", "::1"), replay=5)
    assert follow.stream_url() == "ws://127.0.0.1:8025/events?ip=10.0.0.0%2F8%2C%3A%3A1&replay=5"
    options = WatchOptions(url="ws://[::1]:9/x?a=1", json=True, sender_domains=("a.example",))
    assert options.stream_url() == "ws://[::1]:9/x?a=1&sender_domain=a.example"


async def test_watch_reports_a_refusal_and_an_unreachable_server(tmp_path: Path) -> None:
    config = admin_config(tmp_path / "var", token="s3cret-admin-token-0123", open_on_loopback=False)
    with trio.fail_after(CAP):
        async with running(config) as d:
            err = io.StringIO()
            assert await watch(WatchOptions(url=d.url()), io.StringIO(), err) == 1
            assert err.getvalue().startswith("trio-mta watch: refused (401): admin: a bearer")
            port = d.admin[1]
    err = io.StringIO()
    with trio.fail_after(CAP):
        status = await watch(WatchOptions(url=f"ws://127.0.0.1:{port}/events"), io.StringIO(), err)
    assert status == 1
    assert f"cannot connect to ws://127.0.0.1:{port}/events" in err.getvalue()
    err = io.StringIO()
    assert await watch(WatchOptions(url="http://x/events"), io.StringIO(), err) == 2
    assert "--url must be ws:// or wss://" in err.getvalue()


async def test_watch_json_prints_raw_events(tmp_path: Path) -> None:
    import json

    with trio.fail_after(CAP):
        async with running(admin_config(tmp_path / "var")) as d:
            out = io.StringIO()

            async def send_then_close(scope: trio.CancelScope) -> None:
                # Subscribed once the daemon has taken the watcher (bus active).
                await eventually(lambda: d.bus.active)
                await d.send()
                await eventually(lambda: "\n" in out.getvalue())
                scope.cancel()  # a watcher runs until stopped

            async with trio.open_nursery() as nursery:
                nursery.start_soon(send_then_close, nursery.cancel_scope)
                options = WatchOptions(url=d.url(), json=True, types=("transaction.end",))
                await watch(options, out, io.StringIO())
    [event] = [json.loads(line) for line in out.getvalue().splitlines()]
    assert event["type"] == "transaction.end"
    assert event["outcome"] == "accepted"


async def test_watch_reconnect_survives_the_watcher_process_being_replaced(
    tmp_path: Path,
) -> None:
    with trio.fail_after(CAP):
        async with running(admin_config(tmp_path / "var")) as d:
            out, err = io.StringIO(), io.StringIO()

            async def kill_then_send(scope: trio.CancelScope) -> None:
                await eventually(lambda: "watching" in err.getvalue())
                [pid] = watcher_process_pids()
                os.kill(pid, signal.SIGKILL)  # the stream ends under the watcher
                await eventually(lambda: err.getvalue().count("watching") == 2)
                await d.send()
                await eventually(lambda: "accepted" in out.getvalue())
                scope.cancel()

            async with trio.open_nursery() as nursery:
                nursery.start_soon(kill_then_send, nursery.cancel_scope)
                options = WatchOptions(url=d.url(), reconnect=True, retry_delay=0.05)
                await watch(options, out, err)
    assert "the server closed the stream" in err.getvalue()
    assert "connecting again in 0.05s" in err.getvalue()
    [line] = out.getvalue().splitlines()
    assert "<alice@example.org> -> <bob@example.test>" in line


async def test_watch_reconnect_does_not_retry_a_refusal(tmp_path: Path) -> None:
    config = admin_config(tmp_path / "var", token=TOKEN, open_on_loopback=False)
    with trio.fail_after(CAP):
        async with running(config) as d:
            err = io.StringIO()
            options = WatchOptions(url=d.url(), reconnect=True, retry_delay=0.05)
            assert await watch(options, io.StringIO(), err) == 1
    assert "refused (401)" in err.getvalue()
    assert "connecting again" not in err.getvalue()


async def test_watch_outbound_shows_each_delivery_outcome_with_queue_id_host_and_reply(
    tmp_path: Path,
) -> None:
    with sink() as peer, trio.fail_after(CAP):
        async with running(outbound_config(tmp_path / "var", peer)) as d:
            out = io.StringIO()
            sent: list[str] = []

            async def send_then_close(scope: trio.CancelScope) -> None:
                await eventually(lambda: d.bus.active)
                rcpts = (f"ok@{DOMAIN}", f"defer@{DOMAIN}", f"reject@{DOMAIN}")
                answer = await d.send(f"sender@{DOMAIN}", rcpts)
                sent.append(answer.text.rsplit(" ", 1)[1])
                await eventually(lambda: all(w in out.getvalue() for w in WORDS))
                scope.cancel()

            async with trio.open_nursery() as nursery:
                nursery.start_soon(send_then_close, nursery.cancel_scope)
                options = WatchOptions(url=d.url(), inbound=False, color=False)
                await watch(options, out, io.StringIO())
    [queue_id] = sent
    lines = {
        word: [ln for ln in out.getvalue().splitlines() if f"  {word}  " in ln] for word in WORDS
    }
    host = f"host {peer.ip}[{peer.ip}]"
    [delivered] = [ln for ln in lines["delivered"] if f"<ok@{DOMAIN}>" in ln]
    assert f"  {queue_id}  delivered  <sender@{DOMAIN}> -> <ok@{DOMAIN}>  {host}  " in delivered
    assert "250 2.0.0 Accepted  attempt 1, delay " in delivered
    [deferred] = lines["deferred"]
    assert f"{queue_id}  deferred  <sender@{DOMAIN}> -> <defer@{DOMAIN}>  {host}" in deferred
    assert "451 4.7.1 Greylisted, try again later  attempt 1, delay " in deferred
    # The next attempt as a full 24-hour local time: retry_first (600 s) from now.
    next_at = deferred.rsplit("next ", 1)[1]
    assert re.fullmatch(r"\d{4}-\d\d-\d\d \d\d:\d\d:\d\d", next_at)
    due = time.mktime(time.strptime(next_at, "%Y-%m-%d %H:%M:%S"))
    assert 590 <= due - time.time() <= 610
    [bounced] = lines["bounced"]
    assert f"{queue_id}  bounced  <sender@{DOMAIN}> -> <reject@{DOMAIN}>  {host}" in bounced
    assert "550 5.1.1 No such user here" in bounced
    # The attempt itself, before its outcomes, with the host tried.
    assert f"{queue_id}  attempt 1  <sender@{DOMAIN}> -> " in out.getvalue()
    # Nothing of the inbound side.
    assert "accepted" not in out.getvalue()


def test_the_lines_for_deliveries_and_refusals() -> None:
    deferred = {"type": "delivery.deferred", "ts": 0.0, "txn": "Q1", "recipients": ["a@b.example"],
                "domain": "b.example", "attempt": 3, "mx_host": "mx.b.example[192.0.2.1]",
                "code": 421, "reply": "4.4.2 busy", "until": 86400.0 * 365, "sender": "",
                "delay": 5400.0}  # fmt: skip
    line = format_event(deferred, Style(False))
    next_at = time.strftime("%Y-%m-%d %H:%M:%S", time.localtime(86400.0 * 365))
    assert line.endswith(
        f"Q1  deferred  <> -> <a@b.example>  host mx.b.example[192.0.2.1]  421 4.4.2 busy"
        f"  attempt 3, delay 1.5h, next {next_at}"
    )
    assert "\x1b[33mdeferred" in format_event(deferred, Style(True))
    refused = {"type": "transaction.refused", "ts": 0.0, "ip": "192.0.2.9", "stage": "rcpt",
               "sender": "s@x.example", "recipient": "r@y.example", "code": 550,
               "reply": "5.7.1 Relaying denied", "plugin": "relay_acl"}  # fmt: skip
    assert format_event(refused, Style(False)).endswith(
        "[192.0.2.9]  refused at rcpt  <s@x.example> -> <r@y.example>  550 5.7.1 Relaying denied"
        "  by relay_acl"
    )
    at_helo = {**refused, "stage": "helo", "sender": None, "recipient": None, "code": 421,
               "plugin": "core"}  # fmt: skip
    assert "refused at helo  -  421" in format_event(at_helo, Style(False))
    assert "\x1b[33mrefused at helo" in format_event(at_helo, Style(True))


def test_follow_leaves_the_samples_out_unless_asked() -> None:
    sample = {"type": "server.stats", "ts": 0.0, "queue": 3, "connections": 1, "uptime": 9.0}
    for types, shown in (((), False), (("server",), True)):
        out = io.StringIO()
        _show(sample, WatchOptions(follow=True, types=types), Style(False), out, io.StringIO(), "")
        assert ("server.stats queue=3 connections=1 uptime=9.0" in out.getvalue()) is shown


async def test_watch_prints_a_refused_recipient_with_the_deciding_plugin(tmp_path: Path) -> None:
    with trio.fail_after(CAP):
        async with running(admin_config(tmp_path / "var")) as d:
            out = io.StringIO()

            async def refuse_then_close(scope: trio.CancelScope) -> None:
                await eventually(lambda: d.bus.active)
                client = await d.greeted()
                await client.command("MAIL FROM:<alice@example.org>", 250)
                await client.command("RCPT TO:<eve@elsewhere.example>", 550)
                await client.command("QUIT", 221)
                await client.stream.aclose()
                await eventually(lambda: "refused at rcpt" in out.getvalue())
                scope.cancel()

            async with trio.open_nursery() as nursery:
                nursery.start_soon(refuse_then_close, nursery.cancel_scope)
                await watch(WatchOptions(url=d.url(), color=False), out, io.StringIO())
    [line] = [ln for ln in out.getvalue().splitlines() if "refused at rcpt" in ln]
    assert line.endswith(
        "[127.0.0.1]  refused at rcpt  <alice@example.org> -> <eve@elsewhere.example>"
        "  550 5.7.1 Relaying denied  by core"
    )
