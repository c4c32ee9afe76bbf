"""The hooks, and the one table that turns (hook, action) into an SMTP reply.

Haraka spreads this over twenty ``*_respond`` methods; here it is data. A plugin's own
``code``/``enhanced``/``message`` override the defaults below, the action decides whether the
connection closes afterwards.
"""

from __future__ import annotations

import attrs

from ..protocol import Reply
from ._result import Action, Result


@attrs.frozen
class HookSpec:
    name: str
    always_run: bool = False  # every plugin runs, results are ignored (connect_init, disconnect…)
    # The reply for each non-CONT action: (code, enhanced, text).
    replies: dict[Action, tuple[int, str, str]] = attrs.field(factory=dict, hash=False)


def _denials(
    hard: tuple[int, str, str], soft: tuple[int, str, str]
) -> dict[Action, tuple[int, str, str]]:
    return {
        Action.DENY: hard,
        Action.DENYDISCONNECT: hard,
        Action.DISCONNECT: hard,
        Action.DENYSOFT: soft,
        Action.DENYSOFTDISCONNECT: soft,
    }


_POLICY = _denials((550, "5.7.1", "Rejected by policy"), (450, "4.7.1", "Try again later"))

HOOKS: dict[str, HookSpec] = {
    spec.name: spec
    for spec in (
        HookSpec("connect_init", always_run=True),
        HookSpec(
            "connect",
            replies=_denials(
                (554, "5.7.1", "Connection refused"),
                (421, "4.7.0", "Service temporarily unavailable, closing connection"),
            ),
        ),
        HookSpec(
            "unrecognized_command",
            replies={
                **_denials(
                    (500, "5.5.1", "Command unrecognized"),
                    (421, "4.7.0", "Service temporarily unavailable, closing connection"),
                ),
                Action.DENYDISCONNECT: (521, "5.5.1", "Command unrecognized, closing connection"),
                Action.DENYSOFT: (450, "4.5.1", "Command not available now"),
                Action.OK: (250, "2.0.0", "OK"),
            },
        ),
        HookSpec("helo", replies=_POLICY),
        HookSpec("ehlo", replies=_POLICY),
        HookSpec("capabilities", always_run=True),
        HookSpec(
            "auth",
            replies={
                **_denials(
                    (535, "5.7.8", "Authentication credentials invalid"),
                    (454, "4.7.0", "Temporary authentication failure"),
                ),
                Action.OK: (235, "2.7.0", "Authentication successful"),
            },
        ),
        HookSpec("mail", replies={**_POLICY, Action.OK: (250, "2.1.0", "Sender OK")}),
        HookSpec(
            "rcpt",
            replies={
                **_denials(
                    (550, "5.7.1", "Recipient rejected"), (450, "4.7.1", "Recipient deferred")
                ),
                Action.OK: (250, "2.1.5", "Recipient OK"),
            },
        ),
        HookSpec(
            "rcpt_ok",
            replies=_denials(
                (550, "5.7.1", "Recipient rejected"), (450, "4.7.1", "Recipient deferred")
            ),
        ),
        HookSpec(
            "data",
            replies=_denials((554, "5.7.1", "Transaction refused"), (451, "4.7.1", "Try later")),
        ),
        HookSpec(
            "data_headers_end",
            replies=_denials((550, "5.7.1", "Message refused"), (451, "4.7.1", "Try again later")),
        ),
        HookSpec(
            "data_post",
            replies=_denials((550, "5.7.1", "Message refused"), (451, "4.7.1", "Try again later")),
        ),
        HookSpec(
            "queue",
            replies={
                **_denials(
                    (550, "5.3.0", "Message refused by the queue"),
                    (451, "4.3.0", "Queueing failed, try again later"),
                ),
                Action.OK: (250, "2.0.0", "Message queued"),
            },
        ),
        HookSpec(
            "queue_outbound",
            replies={
                **_denials(
                    (550, "5.3.0", "Message refused by the queue"),
                    (451, "4.3.0", "Queueing failed, try again later"),
                ),
                Action.OK: (250, "2.0.0", "Message queued"),
            },
        ),
        HookSpec("queue_ok", always_run=True),
        # Outbound (the queue's delivery workers; see hooks._outbound for the arguments).
        HookSpec("get_mx"),
        HookSpec("send_email"),
        HookSpec("delivered", always_run=True),
        HookSpec("deferred", always_run=True),
        HookSpec("bounce"),
        HookSpec("deny"),
        HookSpec("reset_transaction", always_run=True),
        HookSpec("disconnect", always_run=True),
    )
}

# Lifecycle methods a plugin may define; not hooks (no connection, no reply).
LIFECYCLE = frozenset({"startup", "shutdown"})


def reply_for(hook: str, result: Result, default_text: str | None = None) -> Reply:
    """The SMTP reply for ``result`` on ``hook`` (plugin overrides win over the table)."""
    code, enhanced, text = HOOKS[hook].replies.get(result.action, (250, "2.0.0", "OK"))
    if result.code is not None:
        code = result.code
        enhanced = result.enhanced or ""
        if not enhanced or enhanced[0] != str(code)[0]:
            enhanced = f"{str(code)[0]}.0.0"
    elif result.enhanced is not None and result.enhanced[:1] == str(code)[0]:
        enhanced = result.enhanced
    lines = result.message or ((default_text,) if default_text else (text,))
    return Reply(code, enhanced, lines)
