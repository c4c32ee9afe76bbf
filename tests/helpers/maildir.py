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


def mailbox_new(var_dir: Path, domain: str, local: str) -> Path:
    return var_dir / "maildir" / domain / local / "new"


def messages_in(var_dir: Path, domain: str, local: str) -> list[bytes]:
    """The stored messages of one mailbox (each with its Received header), sorted by content."""
    new = mailbox_new(var_dir, domain, local)
    if not new.is_dir():
        return []
    return sorted(p.read_bytes() for p in new.iterdir())


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
