"""The trace header we prepend to every accepted message (RFC 5321 §4.4, RFC 3848 protocol
names, RFC 6531 UTF8SMTP variants)."""

from __future__ import annotations

import email.utils
import functools

from ._session import Session


def protocol_name(session: Session, *, smtputf8: bool) -> str:
    if not session.extended:
        return "SMTP"
    name = "UTF8SMTP" if smtputf8 else "ESMTP"
    if session.tls_version:
        name += "S"
    if session.auth_user:
        name += "A"
    return name


def _clean(text: str) -> str:
    # The HELO name is the client's word: keep it from breaking the header's structure.
    return "".join(ch if 33 <= ord(ch) < 127 and ch not in "()\\" else "?" for ch in text)[:255]


@functools.lru_cache(maxsize=4)
def _date(second: int) -> str:
    # Formatting a date costs more than the rest of the header; it changes once a second.
    return email.utils.formatdate(second, localtime=False)


def received_header(session: Session, hostname: str, *, now: float) -> bytes:
    txn = session.transaction
    assert txn is not None
    helo = _clean(session.helo or "unknown")
    proto = protocol_name(session, smtputf8=txn.mail_params.smtputf8)
    lines = [f"Received: from {helo} ([{session.client_ip}])"]
    by = f"\tby {hostname} (trio-mta) with {proto} id {txn.id}"
    if session.tls_version:
        by += f"\r\n\t(version={session.tls_version} cipher={session.tls_cipher})"
    lines.append(by)
    if len(txn.recipients) == 1:
        lines.append(f"\tfor <{_clean(str(txn.recipients[0][0]))}>")
    lines[-1] += "; " + _date(int(now))
    return ("\r\n".join(lines) + "\r\n").encode("utf-8")
