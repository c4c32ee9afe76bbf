"""RFC 3464 reports: structure, per-recipient fields, what of the original comes back."""

from __future__ import annotations

import email
import email.message
import email.policy
from datetime import UTC, datetime

from trio_mta.queue import DsnAction, Envelope, Recipient, Status, build_dsn

ORIGINAL = b"From: a@x.test\r\nSubject: the original\r\n\r\n" + b"body line\r\n" * 10
NOW = datetime(2024, 1, 2, 3, 4, 5, tzinfo=UTC)


def report(ret: str | None = None, original: bytes = ORIGINAL) -> email.message.Message:
    env = Envelope("q1", "a@x.test", (), 1.7e9, 1.7e9, ret=ret, envid="E-1", client="192.0.2.1")
    failed = Recipient(
        "b@y.test", orcpt="rfc822;B@y.test", status=Status.FAILED, code=550,
        enhanced="5.1.1", text="No such user", remote="mx.y.test[192.0.2.2]",
    )  # fmt: skip
    data = build_dsn(
        env, [(failed, DsnAction.FAILED)], original,
        hostname="mx.example.test", to="a@x.test", message_id="b1", now=NOW,
    )  # fmt: skip
    assert b"\r\n" in data
    assert b"\n" not in data.replace(b"\r\n", b"")
    return email.message_from_bytes(data, policy=email.policy.compat32)


def parts(message: email.message.Message) -> list[email.message.Message]:
    payload = message.get_payload()
    assert isinstance(payload, list)
    return [p for p in payload if isinstance(p, email.message.Message)]


def test_structure_and_fields() -> None:
    message = report()
    assert message["To"] == "<a@x.test>"
    assert message["From"] == "Mail Delivery System <MAILER-DAEMON@mx.example.test>"
    assert message.get_content_type() == "multipart/report"
    assert message.get_param("report-type") == "delivery-status"
    text, status, original = parts(message)
    assert "b@y.test" in str(text.get_payload())
    assert "No such user" in str(text.get_payload())
    per_message, per_recipient = parts(status)
    assert per_message["Reporting-MTA"] == "dns; mx.example.test"
    assert per_message["Original-Envelope-Id"] == "E-1"
    assert per_message["Arrival-Date"] is not None
    assert per_recipient["Final-Recipient"] == "rfc822; b@y.test"
    assert per_recipient["Original-Recipient"] == "rfc822; B@y.test"
    assert per_recipient["Action"] == "failed"
    assert per_recipient["Status"] == "5.1.1"
    assert per_recipient["Remote-MTA"] == "dns; mx.y.test[192.0.2.2]"
    assert per_recipient["Diagnostic-Code"] == "smtp; 550 5.1.1 No such user"
    assert original.get_content_type() == "message/rfc822"


def test_ret_hdrs_and_large_messages_return_the_headers_only() -> None:
    for message in (report("HDRS"), report(None, ORIGINAL + b"x" * 300_000)):
        original = parts(message)[2]
        assert original.get_content_type() == "text/rfc822-headers"
        assert "Subject: the original" in str(original.get_payload())
        assert "body line" not in str(original.get_payload())
    full = parts(report("FULL", ORIGINAL + b"x" * 300_000))[2]
    assert full.get_content_type() == "message/rfc822"  # asked for: whatever the size
