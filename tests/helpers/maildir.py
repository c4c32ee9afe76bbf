"""Reading what the server delivered into ``<var>/maildir/<domain>/<local>/new/``."""

from __future__ import annotations

import re
from pathlib import Path

# Our trace header: "Received: from HELO ([IP])" then continuation lines, the last one ending
# in "; <RFC 5322 date>".
_RECEIVED = re.compile(
    rb"Received: from [!-~]+ \(\[[0-9a-fA-F.:]+\]\)\r\n"
    rb"(?:\t[^\r\n]*\r\n)*?"
    rb"\t[^\r\n]*; [A-Z][a-z]{2}, \d{2} [A-Z][a-z]{2} \d{4} \d{2}:\d{2}:\d{2} [-+]\d{4}\r\n"
)


def split_received(data: bytes) -> tuple[bytes, bytes]:
    """Split a stored message into our leading ``Received:`` header and the client's bytes.

    Fails the test if the message does not start with exactly one such header.
    """
    match = _RECEIVED.match(data)
    assert match is not None, f"stored message does not start with our Received: {data[:300]!r}"
    return match.group(0), data[match.end() :]


# What the final delivery puts on top of each copy (RFC 5321 §4.4, Postfix's local(8) order).
_DELIVERY_HEAD = re.compile(rb"Return-Path: <[^\r\n]*>\nDelivered-To: [^\r\n]+\n")


def delivery_head(raw: bytes) -> tuple[bytes, bytes]:
    """Split a Maildir file into its ``Return-Path``/``Delivered-To`` lines and the rest.

    Fails the test if they are missing, or if the file has any CRLF (Maildir files are LF)."""
    match = _DELIVERY_HEAD.match(raw)
    assert match is not None, f"no Return-Path/Delivered-To on top: {raw[:200]!r}"
    assert b"\r\n" not in raw, f"a Maildir file with CRLF line endings: {raw[:200]!r}"
    return match.group(0), raw[match.end() :]


def as_received(raw: bytes) -> bytes:
    """A Maildir file as the SMTP message it was (our Received header first): the delivery
    lines checked and dropped, LF line endings back to CRLF."""
    return delivery_head(raw)[1].replace(b"\n", b"\r\n")


def mailbox_new(var_dir: Path, domain: str, local: str) -> Path:
    return var_dir / "maildir" / domain / local / "new"


def raw_messages_in(var_dir: Path, domain: str, local: str) -> list[bytes]:
    """The files of one mailbox's new/ exactly as stored, sorted by content."""
    new = mailbox_new(var_dir, domain, local)
    if not new.is_dir():
        return []
    return sorted(p.read_bytes() for p in new.iterdir())


def messages_in(var_dir: Path, domain: str, local: str) -> list[bytes]:
    """The stored messages of one mailbox as SMTP messages (see ``as_received``: each with its
    Received header, CRLF), sorted by content."""
    return sorted(as_received(raw) for raw in raw_messages_in(var_dir, domain, local))


def bodies_in(var_dir: Path, domain: str, local: str) -> list[bytes]:
    """The client's bytes of each stored message of one mailbox, Received header checked and
    stripped; sorted."""
    return sorted(split_received(m)[1] for m in messages_in(var_dir, domain, local))


def all_messages(var_dir: Path) -> list[Path]:
    """Every delivered file under ``maildir/*/*/new``, and nothing left behind in ``tmp``."""
    root = var_dir / "maildir"
    if not root.exists():
        return []
    leftovers = list(root.glob("*/*/tmp/*"))
    assert leftovers == [], f"files left in tmp/: {leftovers}"
    return sorted(root.glob("*/*/new/*"))
