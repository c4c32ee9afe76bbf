"""Envelope files: round trip, and every way a file can be unreadable."""

from __future__ import annotations

import pytest

from trio_mta.queue import CorruptEntry, Envelope, Kind, Recipient, Status
from trio_mta.queue._records import dumps, loads


def test_round_trip_keeps_every_field() -> None:
    env = Envelope(
        "abc123", None,
        (Recipient("b@x.test", ("SUCCESS", "FAILURE"), "rfc822;b@x.test"),
         Recipient("c@x.test", status=Status.FAILED, code=550, enhanced="5.1.1", text="no")),
        1.5, 2.5, attempts=2, kind=Kind.BOUNCE, held=True, ret="HDRS", envid="e1",
        smtputf8=True, body="8BITMIME", size=10, client="192.0.2.1",
    )  # fmt: skip
    assert loads(dumps(env)) == env


@pytest.mark.parametrize(
    "data",
    [
        b"",
        b"[]",
        b'{"format": 2}',
        b"\xff\xfe",
        b'{"format": 1, "id": "x", "sender": null, "recipients": [], "created": 1,'
        b' "next_attempt": 1, "kind": "message"}',
        b'{"format": 1, "id": "../x", "sender": null, "recipients": [{"address": "a@b",'
        b' "status": "pending"}], "created": 1, "next_attempt": 1, "kind": "message"}',
        b'{"format": 1, "id": "x", "sender": null, "recipients": [{"address": "a@b",'
        b' "status": "lost"}], "created": 1, "next_attempt": 1, "kind": "message"}',
        b'{"format": 1, "id": "x", "sender": null, "recipients": [{"address": "a@b",'
        b' "status": "pending"}], "created": "soon", "next_attempt": 1, "kind": "message"}',
        b'{"format": 1, "id": "x", "sender": null, "recipients": [{"address": "nobody",'
        b' "status": "pending"}], "created": 1, "next_attempt": 1, "kind": "message"}',
    ],
)
def test_unreadable_envelopes_are_corrupt(data: bytes) -> None:
    with pytest.raises(CorruptEntry):
        loads(data)


def test_notify_defaults_follow_rfc3461() -> None:
    plain, never = Recipient("a@b.test"), Recipient("a@b.test", ("NEVER",))
    assert plain.wants("FAILURE")
    assert plain.wants("DELAY")
    assert not plain.wants("SUCCESS")
    assert not never.wants("FAILURE")
    assert not never.wants("SUCCESS")
    assert Recipient("a@b.test", ("SUCCESS",)).wants("SUCCESS")
