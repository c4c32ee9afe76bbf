from __future__ import annotations

import json
import logging
import re
from pathlib import Path

import pytest

from tests.mailauth.conftest import DNS, Keys
from tests.mailauth.kit import plugins, receive
from tests.mailauth.test_dkim import sign
from trio_mta.protocol import Address

CHAIN = ["spf", "dkim_verify", "dmarc", "auth_results"]

# RFC 8601 §2.2, simplified: authserv-id; resinfo (method=result ptype.property=value)*.
_VALUE = r'(?:[^\s;"]+|"(?:[^"\\]|\\.)*")'
_RESINFO = rf"[a-z0-9-]+={_VALUE}(?: reason={_VALUE})?(?: [a-z]+\.[a-z0-9-]+={_VALUE})*"
AR_SYNTAX = re.compile(rf"^[^\s;]+; (?:none|{_RESINFO}(?:; {_RESINFO})*)$", re.IGNORECASE)


def unsigned(from_domain: str) -> bytes:
    return (
        f"From: someone@{from_domain}\r\nTo: bob@example.test\r\nSubject: hi\r\n\r\nbody\r\n"
    ).encode()


async def test_reject_policy_without_aligned_pass_is_550_5_7_1(
    dnsmasq: DNS, tmp_path: Path
) -> None:
    run = plugins(CHAIN, dnsmasq.resolver(), var_dir=tmp_path)
    # SPF passes for other.test's neighbour? No: the envelope is a different domain.
    conn, mail, reply = await receive(
        run, unsigned("sender.test"), ip="192.0.2.9", sender=Address("x", "soft.test")
    )
    assert mail is None
    assert reply is not None
    assert (reply.code, reply.enhanced) == (550, "5.7.1")
    assert conn.transaction is not None
    note = conn.transaction.notes["dmarc"]
    assert isinstance(note, dict)
    assert (note["result"], note["policy"], note["disposition"]) == ("fail", "reject", "reject")
    [row] = [json.loads(line) for line in (tmp_path / "dmarc" / "aggregate.jsonl").open()]
    assert row["header_from"] == "sender.test"
    assert row["disposition"] == "reject"
    assert row["source_ip"] == "192.0.2.9"
    assert row["rua"] == "mailto:d@sender.test"
    assert row["spf"] == {"domain": "soft.test", "result": "softfail"}


async def test_aligned_dkim_pass_is_accepted(dnsmasq: DNS, keys: Keys, tmp_path: Path) -> None:
    _, signed = await sign(tmp_path, keys)
    run = plugins(CHAIN, dnsmasq.resolver(), var_dir=tmp_path)
    conn, mail, reply = await receive(run, signed, ip="192.0.2.9", sender=Address("x", "soft.test"))
    assert mail is None
    assert reply is None
    assert conn.transaction is not None
    note = conn.transaction.notes["dmarc"]
    assert isinstance(note, dict)
    assert (note["result"], note["dkim_aligned"], note["spf_aligned"]) == ("pass", True, False)
    [(name, header)] = conn.transaction.added_headers
    assert name == "Authentication-Results"
    assert AR_SYNTAX.match(header), header
    assert header.startswith("mx.example.test; spf=softfail smtp.mailfrom=soft.test; dkim=pass")
    assert "dmarc=pass policy.dmarc=reject header.from=sender.test" in header


async def test_aligned_spf_pass_is_accepted(dnsmasq: DNS, tmp_path: Path) -> None:
    run = plugins(CHAIN, dnsmasq.resolver(), var_dir=tmp_path)
    conn, _, reply = await receive(run, unsigned("sender.test"), sender=Address("x", "sender.test"))
    assert reply is None
    assert conn.transaction is not None
    assert conn.transaction.notes["dmarc"] == {
        "header_from": "sender.test",
        "result": "pass",
        "policy": "reject",
        "disposition": "none",
        "domain": "sender.test",
        "spf_aligned": True,
        "dkim_aligned": False,
    }


async def test_unaligned_dkim_does_not_count(dnsmasq: DNS, keys: Keys, tmp_path: Path) -> None:
    data = unsigned("sender.test").replace(b"From: someone@sender.test", b"From: a@other.test")
    _, signed = await sign(tmp_path, keys, data)  # signed by other.test
    forged = signed.replace(b"From: a@other.test", b"From: a@sender.test")
    run = plugins(CHAIN, dnsmasq.resolver(), var_dir=tmp_path)
    _, _, reply = await receive(run, forged, ip="192.0.2.9", sender=Address("x", "soft.test"))
    assert reply is not None
    assert reply.code == 550


async def test_subdomain_uses_org_record_and_sp_quarantine(dnsmasq: DNS, tmp_path: Path) -> None:
    run = plugins(CHAIN, dnsmasq.resolver(), var_dir=tmp_path)
    conn, _, reply = await receive(run, unsigned("news.sender.test"), ip="192.0.2.9")
    assert reply is None
    assert conn.transaction is not None
    note = conn.transaction.notes["dmarc"]
    assert isinstance(note, dict)
    assert (note["domain"], note["policy"], note["disposition"]) == (
        "sender.test",
        "quarantine",
        "quarantine",
    )
    names = [n for n, _ in conn.transaction.added_headers]
    assert names == ["X-Quarantine", "Authentication-Results"]


async def test_relaxed_alignment_and_pct_zero(dnsmasq: DNS, tmp_path: Path) -> None:
    run = plugins(CHAIN, dnsmasq.resolver(), var_dir=tmp_path)
    # pct=0: a failing message is never sampled, reject becomes quarantine.
    conn, _, reply = await receive(run, unsigned("relaxed.test"), ip="192.0.2.9")
    assert reply is None
    assert conn.transaction is not None
    note = conn.transaction.notes["dmarc"]
    assert isinstance(note, dict)
    assert note["disposition"] == "quarantine"
    # SPF for the organizational domain aligns (relaxed) with a subdomain in From.
    conn, _, reply = await receive(
        run, unsigned("mail.relaxed.test"), sender=Address("x", "relaxed.test")
    )
    assert reply is None
    assert conn.transaction is not None
    note = conn.transaction.notes["dmarc"]
    assert isinstance(note, dict)
    assert note["spf_aligned"] is True
    assert note["result"] == "pass"


async def test_no_record_and_authenticated_clients(dnsmasq: DNS, tmp_path: Path) -> None:
    run = plugins(CHAIN, dnsmasq.resolver(), var_dir=tmp_path)
    conn, _, reply = await receive(run, unsigned("nothing.test"), ip="192.0.2.9")
    assert reply is None
    assert conn.transaction is not None
    assert conn.transaction.notes["dmarc"] == {"header_from": "nothing.test", "result": "none"}
    conn, _, reply = await receive(run, unsigned("sender.test"), ip="192.0.2.9", auth_user="bob")
    assert reply is None
    assert conn.transaction is not None
    assert "dmarc" not in conn.transaction.notes


async def test_forged_authentication_results_for_us_are_removed(
    dnsmasq: DNS, tmp_path: Path
) -> None:
    data = (
        b"Authentication-Results: mx.example.test; dkim=pass header.d=sender.test\r\n"
        b"Authentication-Results: upstream.example;\r\n spf=pass smtp.mailfrom=x.test\r\n"
        + unsigned("nothing.test")
    )
    run = plugins(CHAIN, dnsmasq.resolver(), var_dir=tmp_path)
    conn, _, reply = await receive(run, data, ip="192.0.2.9")
    assert reply is None
    assert conn.transaction is not None
    txn = conn.transaction
    out = txn.message_bytes()
    assert b"dkim=pass header.d=sender.test" not in out
    assert b"Authentication-Results: upstream.example; spf=pass smtp.mailfrom=x.test" in out
    ours = [v for n, v in txn.added_headers if v.startswith("mx.example.test")]
    assert len(ours) == 1
    assert AR_SYNTAX.match(ours[0])
    assert out.index(b"mx.example.test; spf=") < out.index(b"upstream.example")


async def test_a_from_domain_that_cannot_exist_is_no_policy_not_a_crash(
    dnsmasq: DNS, tmp_path: Path, caplog: pytest.LogCaptureFixture
) -> None:
    # Undecodable bytes and a 64-octet label: no DNS name, so no record (NXDOMAIN), and the
    # chain must reach its verdict without any plugin failing on the way.
    run = plugins(CHAIN, dnsmasq.resolver(), var_dir=tmp_path)
    for from_header in (
        b"From: \xff\xfe@\xc3(\r\n",
        ("From: a@" + "b" * 64 + ".test\r\n").encode(),
    ):
        data = from_header + b"Subject: hi\r\n\r\nbody\r\n"
        conn, _, reply = await receive(run, data, ip="192.0.2.9")
        assert reply is None
        assert conn.transaction is not None
        note = conn.transaction.notes["dmarc"]
        assert isinstance(note, dict)
        assert note["result"] == "none"
    assert not [
        r for r in caplog.records if r.levelno >= logging.ERROR and r.name.startswith("trio_mta")
    ]
