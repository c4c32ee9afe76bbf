from __future__ import annotations

from pathlib import Path

import dkim

from tests.mailauth.conftest import DNS, Keys
from tests.mailauth.kit import plugins, receive, verdict
from tests.mailauth.test_dkim import dkimpy_dnsfunc, sign
from tests.mailauth.test_dmarc import AR_SYNTAX

CHAIN = ["spf", "dkim_verify", "arc", "dmarc", "auth_results"]


async def forward(dnsmasq: DNS, keys: Keys, tmp_path: Path, data: bytes) -> bytes:
    """One forwarding hop that seals: what it would send on."""
    config = {
        "arc": {
            "seal": {"domain": "forwarder.test", "selector": "arc", "key": "dkim/s1.key"},
            "seal_on": "always",
        }
    }
    run = plugins(CHAIN, dnsmasq.resolver(), config, config_dir=tmp_path, var_dir=tmp_path)
    conn, _, reply = await receive(run, data, ip="192.0.2.9")
    assert reply is None
    assert conn.transaction is not None
    assert (await verdict(run, "queue", conn))[1] is None  # no queue plugin here: CONT
    assert conn.transaction.notes["arc_sealed"] == "forwarder.test/arc"
    conn.transaction.trace_header = b"Received: from x by mx.forwarder.test; now\r\n"
    return conn.transaction.message_bytes()


async def test_an_arc_sealed_forward_verifies(dnsmasq: DNS, keys: Keys, tmp_path: Path) -> None:
    _, signed = await sign(tmp_path, keys)
    sealed = await forward(dnsmasq, keys, tmp_path, signed)
    assert sealed.count(b"ARC-Seal:") == 1
    assert b"cv=none" in sealed
    assert b"ARC-Authentication-Results: i=1; mx.example.test;" in sealed
    # dkimpy's own verifier, then our plugin at the next hop.
    cv, _, reason = dkim.arc_verify(sealed, dnsfunc=dkimpy_dnsfunc(dnsmasq))
    assert cv == dkim.CV_Pass, reason
    run = plugins(CHAIN, dnsmasq.resolver(), var_dir=tmp_path)
    conn, _, reply = await receive(run, sealed, ip="192.0.2.9")
    assert reply is None
    assert conn.transaction is not None
    assert conn.transaction.notes["arc"] == {"result": "pass", "reason": "success"}
    [header] = [v for n, v in conn.transaction.added_headers if n == "Authentication-Results"]
    assert header.endswith("; arc=pass")
    assert AR_SYNTAX.match(header)


async def test_a_tampered_sealed_message_fails(dnsmasq: DNS, keys: Keys, tmp_path: Path) -> None:
    _, signed = await sign(tmp_path, keys)
    sealed = await forward(dnsmasq, keys, tmp_path, signed)
    tampered = sealed.replace(b"this is signed", b"this is changed")
    run = plugins(CHAIN, dnsmasq.resolver(), var_dir=tmp_path)
    conn, _, _ = await receive(run, tampered, ip="192.0.2.9")
    assert conn.transaction is not None
    arc = conn.transaction.notes["arc"]
    assert isinstance(arc, dict)
    assert arc["result"] == "fail"
