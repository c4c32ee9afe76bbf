"""Admin actions: ``POST /api/queue/<hold|release|delete|flush>`` and ``POST /api/breaker/reset``,
forwarded to the daemon over its control socket (``queue.hold`` ... ``breaker.reset``); and one
read, ``GET /api/plugins`` (``plugins.health``: breaker states and latency for the page's chart),
under the watching rules.

Theory of operation
-------------------
Watching is read-only and may be open on loopback; acting changes the daemon, so it is held to
a stricter rule than ``Access.check``:

1. ``POST`` only (a GET is never an action: no link, image or prefetch can trigger one).
2. A token is configured (``[admin] token``) and presented in the ``Authorization: Bearer``
   header, compared in constant time. Never from the query string (it would sit in logs and
   history), and never waived on loopback: any local user or any page in the operator's
   browser can reach 127.0.0.1.
3. ``Origin``, when sent (browsers always send it on a POST), is the listener's own or one of
   ``[admin] origins`` (``Access.check_origin``).
4. The body is JSON (``Content-Type: application/json``): a cross-site HTML form cannot send
   that, nor the ``Authorization`` header, without a CORS preflight, which is never granted.

So a request forged by another web page fails at 2, 3 and 4 at once. The arguments are checked
here (queue ids, plugin and hook names: strings of bounded length) before anything is sent on;
the daemon's answer comes back as ``{"ok": ..., "result"|"error": ...}`` with 200, 400 (the
daemon refused: no such message or plugin), 404, or 503 (no daemon answers the control socket).
Every action is logged with the client's address and the outcome, as an audit trail.
"""

from __future__ import annotations

import hmac
import json
import logging
from pathlib import Path
from typing import Any

import trio

from ..config import AdminConfig
from ..control import ControlError, NotRunning, arequest
from ._access import Access
from ._http import HttpError, RequestHead

log = logging.getLogger("trio_mta.admin")

MAX_BODY = 16 * 1024
ACTION_DEADLINE = 30.0  # seconds for the daemon to answer an action
MAX_NAME = 200  # characters in an id, a plugin or a hook name
QUEUE_ACTIONS = ("hold", "release", "delete", "flush")
ACTION_TOKEN_REQUIRED = (
    "admin: actions need the admin token in an 'Authorization: Bearer <token>' header "
    "(even on loopback); see [admin] token"
)
NO_TOKEN_CONFIGURED = "admin: actions are off: no [admin] token is configured"


PLUGINS_PATH = "/api/plugins"  # a read (watching rules), not an action


def is_action(path: str) -> bool:
    return path.startswith("/api/") and path != PLUGINS_PATH


def command_of(path: str) -> str:
    """The control command an action path names (``/api/queue/hold`` -> ``queue.hold``).

    Raises:
        HttpError: 404 for a path that is no action.
    """
    parts = path.strip("/").split("/")
    if len(parts) == 3 and parts[1] == "queue" and parts[2] in QUEUE_ACTIONS:
        return f"queue.{parts[2]}"
    if parts[1:] == ["breaker", "reset"]:
        return "breaker.reset"
    raise HttpError(404, "admin: no such action (queue/hold|release|delete|flush, breaker/reset)")


def _name(value: object, what: str) -> str:
    if not isinstance(value, str) or not value or len(value) > MAX_NAME:
        raise HttpError(400, f"admin: {what} must be a non-empty string")
    return value


def arguments(command: str, body: object) -> dict[str, Any]:
    """The control arguments of ``command`` from the request's JSON ``body``: queue actions
    by queue id (``id`` or ``ids``), a breaker reset by ``plugin`` and optional ``hook``.

    Raises:
        HttpError: 400 naming what is wrong.
    """
    if not isinstance(body, dict):
        raise HttpError(400, "admin: the body must be a JSON object")
    if command == "breaker.reset":
        args: dict[str, Any] = {"plugin": _name(body.get("plugin"), "plugin")}
        if body.get("hook") not in (None, ""):
            args["hook"] = _name(body.get("hook"), "hook")
        return args
    ids = body.get("ids")
    if ids is None:
        ids = [body.get("id")]
    if not isinstance(ids, list) or not ids or len(ids) > 1000:
        raise HttpError(400, "admin: give a queue id ('id') or a list of them ('ids')")
    return {"ids": [_name(i, "a queue id") for i in ids]}


def authorize(access: Access, config: AdminConfig, head: RequestHead) -> None:
    """Raise ``HttpError`` (401/403/405/415) unless ``head`` may act (see the module's rules)."""
    if head.method != "POST":
        raise HttpError(405, "admin: actions are POST requests")
    access.check_origin(head)
    if not config.token:
        raise HttpError(403, NO_TOKEN_CONFIGURED)
    auth = head.header("authorization") or ""
    scheme, _, value = auth.partition(" ")
    if scheme.lower() != "bearer" or not value.strip():
        raise HttpError(401, ACTION_TOKEN_REQUIRED)
    if not hmac.compare_digest(value.strip().encode("utf-8"), config.token.encode("utf-8")):
        raise HttpError(401, "admin: the bearer token is not valid")
    kind = (head.header("content-type") or "").split(";")[0].strip().lower()
    if kind != "application/json":
        raise HttpError(415, "admin: actions take a JSON body (Content-Type: application/json)")


async def read_body(stream: trio.abc.ReceiveStream, head: RequestHead, raw: bytes) -> bytes:
    """The request body (``Content-Length`` octets, at most ``MAX_BODY``), after the head in
    ``raw``; the caller bounds the time.

    Raises:
        HttpError: 400/411/413 for a missing, bad or too large length, or a short body.
    """
    length_text = head.header("content-length")
    if length_text is None:
        raise HttpError(411, "admin: a Content-Length is required")
    if not length_text.isdigit():
        raise HttpError(400, "admin: bad Content-Length")
    length = int(length_text)
    if length > MAX_BODY:
        raise HttpError(413, f"admin: the body is larger than {MAX_BODY} octets")
    body = bytearray(raw[raw.find(b"\r\n\r\n") + 4 :])
    while len(body) < length:
        chunk = await stream.receive_some(length - len(body))
        if not chunk:
            raise HttpError(400, "admin: the body ended early")
        body += chunk
    return bytes(body[:length])


async def perform(
    var_dir: Path, command: str, args: dict[str, Any], client: str, *, audit: bool = True
) -> tuple[int, bytes]:
    """Send the command to the daemon; the HTTP status and JSON body of its answer. Actions are
    logged (``audit``); reads are not."""
    reply: dict[str, Any] = {"ok": True, "result": None}
    status = 200
    try:
        with trio.fail_after(ACTION_DEADLINE):
            reply["result"] = await arequest(var_dir, command, **args)
    except NotRunning:
        status, reply = 503, {"ok": False, "error": "the daemon's control socket does not answer"}
    except ControlError as exc:
        status, reply = 400, {"ok": False, "error": str(exc)}
    except trio.TooSlowError:
        status, reply = 503, {"ok": False, "error": "the daemon did not answer in time"}
    if not audit:
        return status, json.dumps(reply).encode("utf-8")
    log.info(
        "admin action %s %s from %s: %s",
        command,
        json.dumps(args, sort_keys=True),
        client,
        "ok" if reply["ok"] else reply["error"],
    )
    return status, json.dumps(reply).encode("utf-8")


def parse_json(data: bytes) -> object:
    try:
        return json.loads(data)
    except ValueError:
        raise HttpError(400, "admin: the body is not JSON") from None
