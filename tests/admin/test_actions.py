"""Admin actions over HTTP on a running daemon: the token is required even on loopback (even
where watching is open without one), POST with a JSON body only, Origin checked; with the token
the queue item is held, released, flushed and deleted, and a breaker reset, through the control
socket."""

from __future__ import annotations

import json
from pathlib import Path
from typing import Any

import trio

from trio_mta.control import arequest

from .kit import Daemon, admin_config, running
from .outbound import DOMAIN, outbound_config, sink

CAP = 30
TOKEN = "s3cret-admin-token-0123"
AUTH = {"Authorization": f"Bearer {TOKEN}"}


async def queued(var_dir: Path) -> dict[str, dict[str, Any]]:
    entries = await arequest(var_dir, "queue.list")
    return {e["id"]: e for e in entries}


async def attempted(var_dir: Path, queue_id: str, attempts: int) -> None:
    """Until the queue has recorded ``attempts`` attempts of ``queue_id`` (another task of the
    daemon: polled over the control socket)."""
    while (await queued(var_dir)).get(queue_id, {}).get("attempts", 0) < attempts:  # noqa: ASYNC110
        await trio.sleep(0.02)


async def deferred_message(d: Daemon, var_dir: Path) -> str:
    """A message the sink greylists: it stays in the queue (next attempt in 10 minutes)."""
    answer = await d.send(f"s@{DOMAIN}", (f"defer@{DOMAIN}",))
    queue_id = answer.text.rsplit(" ", 1)[1]
    await attempted(var_dir, queue_id, 1)
    return queue_id


async def test_actions_need_the_token_even_on_loopback_and_then_act_on_the_queue(
    tmp_path: Path,
) -> None:
    var = tmp_path / "var"
    with sink() as peer, trio.fail_after(CAP):
        async with running(outbound_config(var, peer, token=TOKEN)) as d:
            queue_id = await deferred_message(d, var)
            hold = "/api/queue/hold"
            body = {"id": queue_id}
            # Watching is open on loopback without a token; acting is not.
            assert (await d.get("/metrics"))[0] == 200
            refusals = [
                await d.post(hold, body),  # no token
                await d.post(hold, body, {"Authorization": "Bearer wrong-token-0123456789"}),
                await d.post(f"{hold}?token={TOKEN}", body),  # never from the URL
                await d.post(hold, body, {**AUTH, "Origin": "http://evil.example"}),
                await d.post(hold, body, {**AUTH, "Content-Type": "text/plain"}),  # a form's
                await d.post(hold, body, AUTH, method="GET"),
                await d.post("/api/queue/purge", body, AUTH),
                await d.post(hold, b"{not json", AUTH),
                await d.post(hold, {"id": 7}, AUTH),
            ]
            assert [status for status, _ in refusals] == [
                401,
                401,
                401,
                403,
                415,
                405,
                404,
                400,
                400,
            ]
            assert b"even on loopback" in refusals[0][1]
            assert (await queued(var))[queue_id]["held"] is False
            # With the token: held on the running daemon at once.
            status, reply = await d.post(hold, body, {**AUTH, "Origin": f"http://{d.base_url}"})
            assert status == 200
            assert json.loads(reply) == {
                "ok": True,
                "result": {"action": "held", "ids": [queue_id]},
            }
            entry = (await queued(var))[queue_id]
            assert entry["held"] is True
            assert entry["state"] == "held"
            # Released: due at once, tried again (not in 10 minutes).
            status, reply = await d.post("/api/queue/release", {"ids": [queue_id]}, AUTH)
            assert (status, json.loads(reply)["result"]["action"]) == (200, "released")
            await attempted(var, queue_id, 2)
            assert (await queued(var))[queue_id]["held"] is False
            # Flushed: tried again at once.
            status, reply = await d.post("/api/queue/flush", body, AUTH)
            assert (status, json.loads(reply)["result"]["ids"]) == (200, [queue_id])
            await attempted(var, queue_id, 3)
            status, reply = await d.post("/api/queue/delete", body, AUTH)
            assert (status, json.loads(reply)["result"]) == (
                200, {"action": "deleted", "ids": [queue_id]}
            )  # fmt: skip
            while queue_id in await queued(var):  # noqa: ASYNC110  # the daemon's task
                await trio.sleep(0.02)
            # The daemon's own refusal comes back as the error.
            status, reply = await d.post(hold, {"id": "no-such-id"}, AUTH)
            assert status == 400
            assert json.loads(reply) == {"ok": False, "error": "queue.hold: no message no-such-id"}


async def test_a_breaker_reset_goes_to_the_runner(tmp_path: Path) -> None:
    var = tmp_path / "var"
    with sink() as peer, trio.fail_after(CAP):
        async with running(outbound_config(var, peer, token=TOKEN)) as d:
            await d.send(f"s@{DOMAIN}", (f"ok@{DOMAIN}",))  # relay_acl has answered
            # The runner's health is a read: open on loopback like /metrics, no token needed.
            status, reply = await d.get("/api/plugins")
            assert status == 200
            health = {(h["plugin"], h["hook"]): h for h in json.loads(reply)["result"]}
            connect = health["relay_acl", "connect"]
            assert (connect["breaker"], connect["calls"]) == ("closed", 1)
            assert connect["p95_ms"] >= connect["p50_ms"] > 0
            assert (await d.post("/api/plugins", {}, AUTH))[0] == 405
            reset = "/api/breaker/reset"
            assert (await d.post(reset, {"plugin": "relay_acl"}))[0] == 401
            status, reply = await d.post(reset, {"plugin": "relay_acl", "hook": "connect"}, AUTH)
            assert status == 200, reply
            assert json.loads(reply) == {
                "ok": True,
                "result": {"plugin": "relay_acl", "hooks": ["connect"]},
            }
            status, reply = await d.post(reset, {"plugin": "nope"}, AUTH)
            assert status == 400
            assert "nope" in json.loads(reply)["error"]
            assert (await d.post(reset, {"hook": "connect"}, AUTH))[0] == 400


async def test_without_a_configured_token_there_are_no_actions(tmp_path: Path) -> None:
    with trio.fail_after(CAP):
        async with running(admin_config(tmp_path / "var")) as d:
            status, reply = await d.post("/api/queue/hold", {"id": "x"}, AUTH)
    assert status == 403
    assert b"no [admin] token is configured" in reply


async def test_the_plugin_health_read_follows_the_watching_rules(tmp_path: Path) -> None:
    config = admin_config(tmp_path / "var", token=TOKEN, open_on_loopback=False)
    with trio.fail_after(CAP):
        async with running(config) as d:
            assert (await d.get("/api/plugins"))[0] == 401
            status, reply = await d.get("/api/plugins", AUTH)
    assert status == 200
    assert json.loads(reply)["ok"] is True
