"""``trio-mta watch`` lines for refusals (issue #16 hazard 5): a ``transaction.refused`` event,
and a ``transaction.end`` that names the recipients refused along the way."""

from __future__ import annotations

from trio_mta.admin._format import Style, format_summary

REFUSED: dict[str, object] = {
    "v": 1,
    "type": "transaction.refused",
    "ts": 0.0,
    "conn": "c1",
    "txn": "t1",
    "ip": "192.0.2.7",
    "stage": "rcpt",
    "sender": "alice@example.org",
    "recipient": "eve@elsewhere.example",
    "code": 451,
    "reply": "4.3.0 Temporary failure",
    "plugin": "slow_rcpt",
}


def test_a_refusal_names_stage_addresses_reply_and_plugin() -> None:
    line = format_summary(REFUSED, Style(False))
    assert line is not None
    assert "[192.0.2.7]" in line
    assert "refused at rcpt" in line
    assert "<alice@example.org> -> <eve@elsewhere.example>" in line
    assert "451 4.3.0 Temporary failure" in line
    assert "by slow_rcpt" in line


def test_a_transaction_end_lists_its_refused_recipients() -> None:
    end = {
        "type": "transaction.end",
        "ts": 0.0,
        "ip": "192.0.2.7",
        "sender": "alice@example.org",
        "recipients": ["bob@example.test"],
        "refused": ["eve@elsewhere.example"],
        "size": 10,
        "outcome": "accepted",
        "code": 250,
        "reply": "2.0.0 ok",
        "duration": 0.01,
    }
    line = format_summary(end, Style(False))
    assert line is not None
    assert "<bob@example.test> (refused <eve@elsewhere.example>)" in line
