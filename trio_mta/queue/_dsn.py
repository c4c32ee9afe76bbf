"""Delivery status notifications (RFC 3464): bounces, double bounces, success notices.

A notification is ``multipart/report; report-type=delivery-status`` (RFC 6522) with three
parts: a human-readable explanation, the ``message/delivery-status`` fields (one per-message
block, then one block per recipient), and the original: its header section
(``text/rfc822-headers``) or, when RET=FULL asked for it, the whole message
(``message/rfc822``). Without RET the whole message is returned if it is small. A "delayed"
report (a warning: the message is still being retried) returns the header section only, and
says until when it will be retried (``Will-Retry-Until``, RFC 3464 §2.3.9).
"""

from __future__ import annotations

import email.utils
import enum
from collections.abc import Sequence
from datetime import datetime

from ._records import Envelope, Recipient

FULL_RETURN_LIMIT = 256 * 1024  # without RET, larger originals come back as headers only


class DsnAction(enum.Enum):
    FAILED = "failed"
    DELIVERED = "delivered"
    RELAYED = "relayed"
    DELAYED = "delayed"


def header_section(message: bytes) -> bytes:
    end = message.find(b"\r\n\r\n")
    if message.startswith(b"\r\n"):
        return b""
    return message if end < 0 else message[: end + 2]


def _status(r: Recipient, action: DsnAction) -> str:
    if r.enhanced and r.enhanced[:1] in "245":
        return r.enhanced
    if action is DsnAction.FAILED:
        return f"{r.code // 100 if r.code >= 400 else 5}.0.0"
    if action is DsnAction.DELAYED:
        return "4.0.0"
    return "2.0.0"


def _fold(value: str) -> str:
    return " ".join(value.split())


def build_dsn(
    envelope: Envelope,
    recipients: Sequence[tuple[Recipient, DsnAction]],
    original: bytes,
    *,
    hostname: str,
    to: str,
    message_id: str,
    now: datetime,
    retry_until: datetime | None = None,
) -> bytes:
    """The notification's bytes (CRLF line ends), addressed to ``to``. ``retry_until``: when
    a delayed message will be given up."""
    boundary = f"{message_id}/{hostname}"
    date = email.utils.format_datetime(now)
    arrival = email.utils.format_datetime(datetime.fromtimestamp(envelope.created, tz=now.tzinfo))
    failed = any(action is DsnAction.FAILED for _, action in recipients)
    delayed = not failed and any(action is DsnAction.DELAYED for _, action in recipients)
    if failed:
        subject = "Undelivered Mail Returned to Sender"
    elif delayed:
        subject = "Delayed Mail (still being retried)"
    else:
        subject = "Successful Mail Delivery Report"
    lines = [
        f"From: Mail Delivery System <MAILER-DAEMON@{hostname}>",
        f"To: <{to}>",
        f"Subject: {subject}",
        f"Date: {date}",
        f"Message-ID: <{message_id}@{hostname}>",
        "Auto-Submitted: auto-replied",
        "MIME-Version: 1.0",
        "Content-Type: multipart/report; report-type=delivery-status;",
        f'\tboundary="{boundary}"',
        "",
        "This is a MIME-encapsulated message.",
        "",
        f"--{boundary}",
        "Content-Description: Notification",
        'Content-Type: text/plain; charset="utf-8"',
        "Content-Transfer-Encoding: 8bit",
        "",
        f"This is the mail system at host {hostname}.",
        "",
    ]
    if failed:
        lines += [
            "I'm sorry to have to inform you that your message could not",
            "be delivered to one or more recipients. The reasons are below.",
        ]
    elif delayed:
        until = email.utils.format_datetime(retry_until) if retry_until else "it gives up"
        lines += [
            "####################################################################",
            "# THIS IS A WARNING ONLY.  YOU DO NOT NEED TO RESEND YOUR MESSAGE. #",
            "####################################################################",
            "",
            "Your message could not be delivered yet to the recipients below.",
            f"The mail system will keep trying until {until}.",
        ]
    else:
        lines += ["Your message was successfully delivered to the recipients below."]
    lines.append("")
    for r, action in recipients:
        said = f"{r.code} {r.enhanced} {r.text}".strip() if r.code else r.text
        where = f" (host {r.remote} said)" if r.remote else ""
        lines.append(_fold(f"<{r.address}>: {action.value}{where}: {said}"))
    lines += [
        "",
        f"--{boundary}",
        "Content-Description: Delivery report",
        "Content-Type: message/delivery-status",
        "",
        f"Reporting-MTA: dns; {hostname}",
        f"X-Queue-ID: {envelope.id}",
    ]
    if envelope.envid:
        lines.append(f"Original-Envelope-Id: {_fold(envelope.envid)}")
    if envelope.client:
        lines.append(f"Received-From-MTA: dns; [{envelope.client}]")
    lines.append(f"Arrival-Date: {arrival}")
    for r, action in recipients:
        lines += ["", f"Final-Recipient: rfc822; {r.address}"]
        if r.orcpt:
            kind, _, address = r.orcpt.partition(";")
            lines.append(f"Original-Recipient: {kind}; {_fold(address)}")
        lines += [f"Action: {action.value}", f"Status: {_status(r, action)}"]
        if r.remote:
            lines.append(f"Remote-MTA: dns; {r.remote}")
        if r.code:
            kind = "smtp"
            lines.append(_fold(f"Diagnostic-Code: {kind}; {r.code} {r.enhanced} {r.text}"))
        lines.append(f"Last-Attempt-Date: {date}")
        if action is DsnAction.DELAYED and retry_until is not None:
            lines.append(f"Will-Retry-Until: {email.utils.format_datetime(retry_until)}")
    whole = not delayed and (
        envelope.ret == "FULL" or (envelope.ret is None and len(original) <= FULL_RETURN_LIMIT)
    )
    lines += [
        "",
        f"--{boundary}",
        (
            "Content-Description: Delayed Message"
            if delayed
            else "Content-Description: Undelivered Message"
        )
        + ("" if whole else " Headers"),
        f"Content-Type: {'message/rfc822' if whole else 'text/rfc822-headers'}",
        "",
    ]
    head = "\r\n".join(lines).encode("utf-8") + b"\r\n"
    body = original if whole else header_section(original)
    if not body.endswith(b"\r\n"):
        body += b"\r\n"
    return head + body + f"\r\n--{boundary}--\r\n".encode()
