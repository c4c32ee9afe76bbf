from __future__ import annotations

import logging
from pathlib import Path

import dkim
import dns.resolver
import pytest

from tests.mailauth.conftest import DNS, Keys
from tests.mailauth.kit import begin, connection, message, plugins, verdict
from trio_mta import hooks

BODY = (
    b"From: Alice <alice@sender.test>\r\n"
    b"To: bob@example.test\r\n"
    b"Subject: signed\r\n"
    b"Message-ID: <1@sender.test>\r\n"
    b"\r\n"
    b"Hello,\r\nthis is signed.\r\n"
)


def dkimpy_dnsfunc(dnsmasq: DNS):  # type: ignore[no-untyped-def]
    """dkimpy's own verifier, asking dnsmasq with plain dnspython (not our code)."""
    res = dns.resolver.Resolver(configure=False)
    res.nameservers = ["127.0.0.1"]
    res.port = dnsmasq.port

    def lookup(name: bytes, timeout: int = 5) -> bytes | None:
        answer = res.resolve(name.decode(), "TXT", raise_on_no_answer=False, tcp=True)
        for rdata in answer:
            return b"".join(rdata.strings)
        return None

    return lookup


def write_keys(tmp_path: Path, keys: Keys) -> Path:
    (tmp_path / "dkim").mkdir()
    (tmp_path / "dkim" / "s1.key").write_bytes(keys.rsa)
    (tmp_path / "dkim" / "ed.key").write_bytes(keys.ed)
    (tmp_path / "dkim" / "other.key").write_bytes(keys.other)
    return tmp_path


async def sign(
    tmp_path: Path, keys: Keys, data: bytes = BODY, *, relaying: bool = True
) -> tuple[hooks.Transaction, bytes]:
    """The message as dkim_sign leaves it for the queue (our trace header excluded)."""
    config = {
        "domains": {
            "sender.test": [
                {"selector": "s1", "key": "dkim/s1.key"},
                {"selector": "ed", "key": "dkim/ed.key"},
            ],
            "other.test": {"selector": "s1", "key": "dkim/other.key"},
        }
    }
    run = plugins(["dkim_sign"], None, {"dkim_sign": config}, config_dir=write_keys(tmp_path, keys))
    conn = connection("127.0.0.1", relaying=relaying)
    txn = begin(conn)
    txn.trace_header = b"Received: from test by mx.example.test; now\r\n"
    txn.message = message(data)
    assert (await verdict(run, "data_post", conn))[1] is None
    return txn, txn.message_bytes()[len(txn.trace_header) :]


async def test_what_we_sign_verifies_with_dkimpys_own_verifier(
    dnsmasq: DNS, keys: Keys, tmp_path: Path
) -> None:
    txn, signed = await sign(tmp_path, keys)
    assert txn.notes["dkim_sign"] == ["sender.test/s1", "sender.test/ed"]
    assert signed.count(b"DKIM-Signature:") == 2
    assert b"a=rsa-sha256" in signed
    assert b"a=ed25519-sha256" in signed
    lookup = dkimpy_dnsfunc(dnsmasq)
    checker = dkim.DKIM(signed)
    assert checker.verify(idx=0, dnsfunc=lookup)
    assert checker.verify(idx=1, dnsfunc=lookup)
    assert not dkim.verify(signed.replace(b"this is signed", b"this is forged"), dnsfunc=lookup)


async def test_not_signed_for_unauthenticated_clients(keys: Keys, tmp_path: Path) -> None:
    txn, signed = await sign(tmp_path, keys, relaying=False)
    assert b"DKIM-Signature" not in signed
    assert "dkim_sign" not in txn.notes


async def verify(dnsmasq: DNS, data: bytes) -> list[dict[str, str]]:
    run = plugins(["dkim_verify"], dnsmasq.resolver())
    conn = connection("127.0.0.1")
    txn = begin(conn)
    txn.message = message(data)
    assert (await verdict(run, "data_post", conn))[1] is None
    notes = txn.notes["dkim"]
    assert isinstance(notes, list)
    return notes


async def test_every_signature_is_verified(dnsmasq: DNS, keys: Keys, tmp_path: Path) -> None:
    _, signed = await sign(tmp_path, keys)
    notes = await verify(dnsmasq, signed)
    assert [(n["result"], n["domain"], n["selector"]) for n in notes] == [
        ("pass", "sender.test", "ed"),
        ("pass", "sender.test", "s1"),
    ]


async def test_a_tampered_message_fails(dnsmasq: DNS, keys: Keys, tmp_path: Path) -> None:
    _, signed = await sign(tmp_path, keys)
    notes = await verify(dnsmasq, signed.replace(b"this is signed", b"this is forged"))
    assert [n["result"] for n in notes] == ["fail", "fail"]
    notes = await verify(dnsmasq, signed.replace(b"Subject: signed", b"Subject: forged"))
    assert [n["result"] for n in notes] == ["fail", "fail"]


async def test_a_missing_key_is_permerror_and_unsigned_is_empty(
    dnsmasq: DNS, keys: Keys, tmp_path: Path
) -> None:
    _, signed = await sign(tmp_path, keys)
    notes = await verify(dnsmasq, signed.replace(b"s=s1;", b"s=gone;"))
    results = sorted(n["result"] for n in notes)
    assert results[0] in ("fail", "neutral", "permerror")
    assert results[1] == "pass"
    assert await verify(dnsmasq, BODY) == []


def test_sign_config_errors(tmp_path: Path) -> None:
    with pytest.raises(hooks.PluginLoadError, match="cannot read"):
        plugins(
            ["dkim_sign"],
            None,
            {"dkim_sign": {"domains": {"a.test": {"selector": "s", "key": "nope.key"}}}},
            config_dir=tmp_path,
        )


async def test_signatures_naming_impossible_keys_fail_without_crashing(
    dnsmasq: DNS, keys: Keys, tmp_path: Path, caplog: pytest.LogCaptureFixture
) -> None:
    _, signed = await sign(tmp_path, keys)
    for selector in (b"s=\xff\xfe;", b"s=" + b"x" * 64 + b";", b"s=a..b;"):
        notes = await verify(dnsmasq, signed.replace(b"s=s1;", selector))
        results = sorted(n["result"] for n in notes)
        assert results[0] in ("fail", "neutral", "permerror")
        assert results[1] == "pass"
    assert not [
        r for r in caplog.records if r.levelno >= logging.ERROR and r.name.startswith("trio_mta")
    ]
