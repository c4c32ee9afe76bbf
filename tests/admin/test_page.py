"""The live page: served with its CSP, and, in headless Chromium driven over the DevTools
protocol, showing the row of a message sent while it is open."""

from __future__ import annotations

import base64
import itertools
import json
import os
import re
import shutil
import signal
import subprocess
from collections.abc import AsyncIterator
from contextlib import asynccontextmanager
from pathlib import Path

import trio
import trio_websocket

from trio_mta.control import arequest

from .kit import admin_config, running
from .outbound import DOMAIN, outbound_config, sink

CAP = 40
WORDS = ("delivered", "deferred", "bounced")
CHROMIUM = shutil.which("chromium")
FLAGS = (
    "--headless",
    "--no-sandbox",
    "--disable-gpu",
    "--disable-background-networking",
    "--disable-component-update",
    "--disable-sync",
    "--no-first-run",
    "--remote-debugging-port=0",
)


async def test_the_page_is_self_contained_and_locked_down(tmp_path: Path) -> None:
    async with running(admin_config(tmp_path / "var")) as d:
        stream = await trio.open_tcp_stream(*d.admin)
        await stream.send_all(f"GET / HTTP/1.1\r\nHost: {d.base_url}\r\n\r\n".encode())
        data = b""
        while chunk := await stream.receive_some():
            data += chunk
    head, _, body = data.partition(b"\r\n\r\n")
    headers = dict(line.split(": ", 1) for line in head.decode().split("\r\n")[1:] if ": " in line)
    assert head.startswith(b"HTTP/1.1 200 ")
    assert headers["Content-Type"] == "text/html; charset=utf-8"
    csp = headers["Content-Security-Policy"]
    assert "default-src 'none'" in csp
    assert "script-src 'sha256-" in csp
    assert f"connect-src 'self' ws://{d.base_url}" in csp
    # Nothing outside the machine: no external URL anywhere in the page.
    # (The SVG namespace is a name, never fetched: the only URL-like string allowed.)
    text = body.decode().replace('"http://www.w3.org/2000/svg"', "")
    assert "http://" not in text
    assert "https://" not in text
    assert "<script src" not in text
    assert "innerHTML" not in text  # addresses and HELO names are attacker-controlled text


class DevTools:
    """A minimal DevTools-protocol client over trio-websocket."""

    def __init__(self, ws: trio_websocket.WebSocketConnection) -> None:
        self.ws = ws
        self.ids = itertools.count(1)

    async def call(self, method: str, **params: object) -> dict[str, object]:
        call_id = next(self.ids)
        await self.ws.send_message(json.dumps({"id": call_id, "method": method, "params": params}))
        while True:
            reply = json.loads(await self.ws.get_message())
            if reply.get("id") == call_id:
                assert "error" not in reply, reply
                result: dict[str, object] = reply["result"]
                return result

    async def evaluate(self, expression: str) -> object:
        result = await self.call("Runtime.evaluate", expression=expression, returnByValue=True)
        value = result["result"]
        assert isinstance(value, dict)
        return value.get("value")

    async def wait_for(self, expression: str) -> object:
        """Poll ``expression`` until it is truthy (the page updates on its own)."""
        while not (value := await self.evaluate(expression)):  # noqa: ASYNC110  # in the browser
            await trio.sleep(0.05)
        return value


async def _http_get(port: int, path: str) -> bytes:
    """A GET to Chromium's DevTools HTTP endpoint (which keeps the connection open)."""
    stream = await trio.open_tcp_stream("127.0.0.1", port)
    await stream.send_all(f"GET {path} HTTP/1.1\r\nHost: 127.0.0.1:{port}\r\n\r\n".encode())
    data = b""
    while True:
        head, blank, body = data.partition(b"\r\n\r\n")
        if blank:
            length = [line for line in head.lower().split(b"\r\n") if b"content-length:" in line]
            if length and len(body) >= int(length[0].split(b":")[1]):
                break
        chunk = await stream.receive_some()
        assert chunk, data
        data += chunk
    await stream.aclose()
    return body


@asynccontextmanager
async def chromium(profile: Path) -> AsyncIterator[DevTools]:
    """Headless Chromium on a fresh profile, its page target driven over DevTools; stopped by
    its PID on the way out."""
    assert CHROMIUM is not None, "this test needs Debian's chromium (apt-get install chromium)"
    profile.mkdir()  # noqa: ASYNC240  # once, before anything runs
    log = (profile.parent / "chromium.log").open("wb")
    process = await trio.lowlevel.open_process(
        [CHROMIUM, *FLAGS, f"--user-data-dir={profile}", "about:blank"],
        stdin=subprocess.DEVNULL,
        stdout=log,
        stderr=log,
    )
    try:
        port_file = profile / "DevToolsActivePort"
        while not port_file.exists() or not port_file.read_text().strip():  # noqa: ASYNC110  # another process writes it
            await trio.sleep(0.05)
        port = int(port_file.read_text().split()[0])
        targets = json.loads(await _http_get(port, "/json/list"))
        [page] = [t for t in targets if t["type"] == "page"]
        async with trio_websocket.open_websocket_url(
            page["webSocketDebuggerUrl"], max_message_size=16 * 1024 * 1024
        ) as ws:
            yield DevTools(ws)
    finally:
        if process.returncode is None:
            process.send_signal(signal.SIGTERM)
            with trio.move_on_after(5):
                await process.wait()
        if process.returncode is None:
            process.kill()
            await process.wait()
        log.close()


async def test_headless_chromium_shows_a_row_for_a_message_sent_while_open(
    tmp_path: Path,
) -> None:
    with trio.fail_after(CAP):
        async with (
            running(admin_config(tmp_path / "var")) as d,
            chromium(tmp_path / "profile") as browser,
        ):
            await browser.call("Page.navigate", url=f"http://{d.base_url}/")
            await browser.wait_for("document.body.dataset.state === 'connected'")
            answer = await d.send("page@example.org", ("bob@example.test",))
            txn = answer.text.rsplit(" ", 1)[1]
            row = f"document.querySelector('tr[data-txn=\"{txn}\"]')"
            outcome = await browser.wait_for(f"{row} && {row}.dataset.outcome")
            text = await browser.evaluate(f"{row}.textContent")
            verdicts = await browser.evaluate(
                f"Array.from({row}.querySelectorAll('td.plugin')).map(td => td.className)"
            )
            headers = await browser.evaluate(
                "Array.from(document.querySelectorAll('#head th')).map(th => th.textContent)"
            )
            rate = await browser.wait_for("Number(document.getElementById('rate').textContent)")
    assert outcome == "accepted"
    assert isinstance(text, str)
    assert "page@example.org" in text
    assert "bob@example.test" in text
    assert "accepted" in text
    # One coloured cell per plugin, in the order the plugins first answered: both said OK.
    assert isinstance(headers, list)
    assert headers[-2:] == ["rcpt_to_host_list", "queue_discard"]
    assert verdicts == ["plugin v-ok", "plugin v-ok"]
    assert isinstance(rate, int | float)
    assert rate > 0


async def test_the_page_shows_deliveries_with_queue_id_host_reply_and_24_hour_times(
    tmp_path: Path,
) -> None:
    with sink() as peer, trio.fail_after(CAP):
        async with (
            running(outbound_config(tmp_path / "var", peer)) as d,
            chromium(tmp_path / "profile") as browser,
        ):
            await browser.call(
                "Emulation.setDeviceMetricsOverride",
                width=1280, height=900, deviceScaleFactor=1, mobile=False,
            )  # fmt: skip
            await browser.call("Page.navigate", url=f"http://{d.base_url}/")
            await browser.wait_for("document.body.dataset.state === 'connected'")
            rcpts = (f"ok@{DOMAIN}", f"defer@{DOMAIN}", f"reject@{DOMAIN}")
            answer = await d.send(f"a-rather-long-sender-name@{DOMAIN}", rcpts)
            queue_id = answer.text.rsplit(" ", 1)[1]
            rows = f"document.querySelectorAll('tr.dlv[data-queue-id=\"{queue_id}\"]')"
            # The bounce is a message of its own (to the sender): this one's rows are 3.
            outcomes = await browser.wait_for(
                f"{rows}.length === 3 && Array.from({rows}).every(r => r.dataset.delivery) && "
                f"Array.from({rows}).map(r => r.dataset.delivery).sort().join()"
            )
            cells = await browser.evaluate(
                f"Array.from({rows}).map(r => Array.from(r.cells).map(c => c.textContent))"
            )
            titles = await browser.evaluate(f"Array.from({rows}).map(r => r.cells[0].title)")
            width = await browser.evaluate("document.documentElement.scrollWidth")
            tz = await browser.evaluate("document.getElementById('tz').textContent")
            # The breaker light of a plugin with no breaker event yet: the runner's health
            # (/api/plugins, fetched when the page connects and every 15 s; now, here).
            await browser.evaluate("seedPlugins(); true")
            relay = "document.querySelector('#chart-plugins g[data-plugin=\"relay_acl\"]')"
            breaker = await browser.wait_for(f"{relay} && {relay}.dataset.breaker !== 'unknown' "
                                             f"&& {relay}.dataset.breaker")  # fmt: skip
    assert outcomes == "bounced,deferred,delivered"
    assert breaker == "closed"
    assert isinstance(cells, list)
    # (A deferred row's result cell also holds its action buttons.)
    by_outcome = {w: row for row in cells for w in WORDS if row[8].startswith(w)}
    assert "holdretrydelete" in by_outcome["deferred"][8]
    assert by_outcome["delivered"][8] == "delivered"
    host = f"{peer.ip}[{peer.ip}]"
    delivered = by_outcome["delivered"]
    assert delivered[1] == queue_id
    assert delivered[2] == host
    assert delivered[5] == f"a-rather-long-sender-name@{DOMAIN}"
    assert delivered[6] == f"ok@{DOMAIN}"
    assert delivered[9] == "250 2.0.0 Accepted"
    deferred = by_outcome["deferred"]
    assert deferred[9].startswith("451 4.7.1 Greylisted, try again later; next ")
    assert re.fullmatch(r".*; next \d{4}-\d\d-\d\d \d\d:\d\d:\d\d", deferred[9])
    assert by_outcome["bounced"][9] == "550 5.1.1 No such user here"
    for row in cells:
        assert re.fullmatch(r"\d\d:\d\d:\d\d", row[0])  # 24-hour, never "12:31:43 AM"
    assert isinstance(titles, list)
    assert all(re.fullmatch(r"\d{4}-\d\d-\d\d \d\d:\d\d:\d\d", t) for t in titles)
    assert isinstance(tz, str)
    assert re.fullmatch(r"UTC[+-]\d\d:\d\d", tz)
    assert isinstance(width, int)
    assert width <= 1280  # the table fits the window: no horizontal scrolling


# Events of the contracts other parts publish (``transaction.refused``, ``plugin.breaker``), fed
# to the page as the stream would deliver them: the charts must read them as documented.
SYNTHETIC = """receive([
  {v: 1, type: "transaction.refused", ts: Date.now() / 1000, conn: "c9", txn: null,
   ip: "192.0.2.9", stage: "rcpt", sender: "s@x.example", recipient: "r@y.example", code: 550,
   reply: "5.7.1 Relaying denied", plugin: "relay_acl"},
  {v: 1, type: "transaction.refused", ts: Date.now() / 1000, conn: "c9", txn: null,
   ip: "192.0.2.9", stage: "rcpt", sender: "s@x.example", recipient: "q@y.example", code: 550,
   reply: "5.7.1 Relaying denied", plugin: "relay_acl"},
  {v: 1, type: "transaction.refused", ts: Date.now() / 1000, conn: "c8", txn: null,
   ip: "192.0.2.8", stage: "helo", sender: null, recipient: null, code: 450,
   reply: "4.7.1 Client host rejected: cannot find your hostname", plugin: "helo_checks"},
  {v: 1, type: "plugin.breaker", ts: Date.now() / 1000, plugin: "relay_acl", hook: "rcpt",
   state: "open", reason: "5 calls in a row timed out within 3s"},
].concat(["dnsbl_spamhaus", "spf_check", "dkim_verify", "greylist_sqlite", "rspamd_scan"]
  .map((name, i) => ({v: 1, type: "plugin.call", ts: Date.now() / 1000, conn: "c9", txn: null,
    ip: "192.0.2.9", plugin: name, hook: "rcpt", result: i === 3 ? "denysoft" : "cont",
    duration: 0.002 * (i + 1), timed_out: false, error: null})))); true"""
SCREENSHOT_COPY = "TRIO_MTA_PAGE_SCREENSHOT"  # also copy the screenshot there (for a report)


async def test_the_charts_render_live_traffic_and_a_screenshot_is_taken(tmp_path: Path) -> None:
    shot = tmp_path / "page.png"
    with sink() as peer, trio.fail_after(CAP):
        async with (
            running(outbound_config(tmp_path / "var", peer)) as d,
            chromium(tmp_path / "profile") as browser,
        ):
            await browser.call(
                "Emulation.setDeviceMetricsOverride",
                width=1280, height=900, deviceScaleFactor=1, mobile=False,
            )  # fmt: skip
            await browser.call("Page.navigate", url=f"http://{d.base_url}/")
            await browser.wait_for("document.body.dataset.state === 'connected'")
            for n in range(6):
                await d.send(f"s{n}@{DOMAIN}", (f"ok{n}@{DOMAIN}", f"defer{n}@{DOMAIN}"))
            # A real refusal: 127.0.0.3 may not relay.
            client = await d.greeted("127.0.0.3")
            await client.command(f"MAIL FROM:<s@{DOMAIN}>", 250)
            await client.command("RCPT TO:<x@elsewhere.example>", 550)
            await client.command("QUIT", 221)
            await client.stream.aclose()
            await browser.wait_for("document.getElementById('now-reasons').textContent === '1'")
            await browser.evaluate(SYNTHETIC)
            series = "#chart-rate polyline[data-series={}]"
            for name, count in (("accepted", 6), ("deferred", 6), ("refused", 4)):
                selector = series.format(name)
                await browser.wait_for(  # drawn once a second: until all of them are in
                    f"document.querySelector('{selector}') && "
                    f"Number(document.querySelector('{selector}').dataset.total) >= {count}"
                )
            # The queue's depth from server.stats (the deferred recipients keep 6 messages).
            await browser.wait_for("document.getElementById('now-queue').textContent === '6'")
            await browser.wait_for(
                "document.querySelector('#chart-queue polyline').getAttribute('points') !== ''"
            )
            await browser.wait_for(
                "Number(document.querySelector('#chart-queue polyline').dataset.total) > 0"
            )
            relay = "document.querySelector('#chart-plugins g[data-plugin=\"relay_acl\"]')"
            await browser.wait_for(f"{relay} && Number({relay}.dataset.p95) > 0")
            charts = await browser.evaluate(
                "({totals: Array.from(document.querySelectorAll('#chart-rate polyline'))"
                "    .map(p => [p.dataset.series, Number(p.dataset.total),"
                "               p.getAttribute('points').split(' ').length]),"
                f"  breaker: {relay}.dataset.breaker,"
                f"  p50: Number({relay}.dataset.p50), p95: Number({relay}.dataset.p95),"
                "  reasons: Array.from(document.querySelectorAll('#chart-reasons g'))"
                "    .map(g => [g.dataset.reason, Number(g.dataset.count)]),"
                "  circles: document.querySelectorAll('#chart-plugins circle').length,"
                "  width: document.documentElement.scrollWidth})"
            )
            picture = await browser.call("Page.captureScreenshot", format="png")
            metrics = (await d.get("/metrics"))[1].decode()
    data = picture["data"]
    assert isinstance(data, str)
    shot.write_bytes(base64.b64decode(data))
    if os.environ.get(SCREENSHOT_COPY):
        shutil.copyfile(shot, os.environ[SCREENSHOT_COPY])
    assert shot.read_bytes().startswith(b"\x89PNG\r\n\x1a\n")
    assert isinstance(charts, dict)
    totals = {name: (total, points) for name, total, points in charts["totals"]}
    assert totals["accepted"][0] == 6
    assert totals["deferred"][0] == 6
    assert totals["refused"][0] == 4  # the real one and three fed
    assert all(points == 60 for _, points in totals.values())  # a point per second
    assert charts["breaker"] == "open"
    assert 0 < charts["p50"] <= charts["p95"]
    assert charts["circles"] == 6  # one breaker light per plugin seen
    assert charts["reasons"] == [
        ["550 5.7.1 Relaying denied (relay_acl)", 2],
        ["550 5.7.1 Relaying denied (core)", 1],
        ["450 4.7.1 Client host rejected: cannot find your hostname (helo_checks)", 1],
    ]
    assert charts["width"] <= 1280
    # /metrics reads the same queue (its gauge was never fed before).
    assert "\ntrio_mta_queue_size 6.0\n" in metrics


async def click(browser: DevTools, selector: str) -> None:
    """A real mouse click (pressed and released) at the middle of the element."""
    box = await browser.wait_for(
        f"(() => {{ const el = document.querySelector('{selector}'); if (!el) return null;"
        "  el.scrollIntoView({block: 'center'}); const r = el.getBoundingClientRect();"
        "  return [r.x + r.width / 2, r.y + r.height / 2]; })()"
    )
    assert isinstance(box, list)
    x, y = box
    for kind in ("mousePressed", "mouseReleased"):
        await browser.call(
            "Input.dispatchMouseEvent", type=kind, x=x, y=y, button="left", clickCount=1
        )


async def test_a_click_on_hold_holds_the_queued_message_asking_for_the_token_once(
    tmp_path: Path,
) -> None:
    var = tmp_path / "var"
    token = "s3cret-admin-token-0123"
    with sink() as peer, trio.fail_after(CAP):
        async with (
            running(outbound_config(var, peer, token=token)) as d,
            chromium(tmp_path / "profile") as browser,
        ):
            await browser.call(
                "Emulation.setDeviceMetricsOverride",
                width=1280, height=900, deviceScaleFactor=1, mobile=False,
            )  # fmt: skip
            # Viewing is open on loopback: the page is opened without the token.
            await browser.call("Page.navigate", url=f"http://{d.base_url}/")
            await browser.wait_for("document.body.dataset.state === 'connected'")
            answer = await d.send(f"s@{DOMAIN}", (f"defer@{DOMAIN}",))
            queue_id = answer.text.rsplit(" ", 1)[1]
            row = f'tr[data-queue-id="{queue_id}"][data-delivery="deferred"]'
            await click(browser, f'{row} button[data-action="queue/hold"]')
            # Asked for the token (nothing was sent without it).
            await browser.wait_for("!document.getElementById('token-box').hidden")
            assert not (await arequest(var, "queue.show", id=queue_id))["held"]
            await browser.call("Input.insertText", text=token)  # the box has the focus
            await click(browser, "#token-ok")
            await browser.wait_for(f"document.querySelector('{row}').dataset.held === 'true'")
            said = await browser.evaluate("document.getElementById('act-result').textContent")
            held = (await arequest(var, "queue.show", id=queue_id))["held"]
            # The next action is not asked for the token again: release by the action bar.
            await click(browser, row)  # a click on the row fills the queue id in
            await click(browser, '#actions button[data-action="queue/release"]')
            await browser.wait_for(f"!('held' in document.querySelector('{row}').dataset)")
            asked_again = await browser.evaluate("!document.getElementById('token-box').hidden")
            released = not (await arequest(var, "queue.show", id=queue_id))["held"]
    assert said == f"held {queue_id}"
    assert held is True
    assert asked_again is False
    assert released
