"""VERP addresses: a recipient folded into the envelope sender, and unfolded again.

Theory of operation (Postfix's XVERP, after qmail and ezmlm; https://cr.yp.to/proto/verp.txt).
With the delimiters ``+=``, mail from ``list-bounces@example.test`` to ``alice@remote.example``
leaves with the envelope sender ``list-bounces+alice=remote.example@example.test``: the sender's
local part, the first delimiter, the recipient's local part, the second delimiter, the
recipient's domain, at the sender's domain. A bounce to that address names the recipient that
failed, whatever the remote's report says (or fails to say).

Encoding works on unquoted local parts and quotes the result only when it is not a dot-atom.
An encoded sender our own server would refuse in RCPT TO (a local part over 64 octets, RFC 5321
§4.5.3.1.1) is not made (None): the caller sends with the plain sender, so the bounce still
arrives, without the recipient in its address.

Decoding: the first delimiter may occur in the base (``list-bounces`` with ``-=``) and either
delimiter in the recipient's local part, so the base is matched as a known prefix when the
caller knows it (otherwise the base ends at the first first-delimiter), and the rest is split at
the *last* second delimiter: a domain never holds ``=`` or ``+``. It may hold ``-``, so ``-`` as
the second delimiter cannot be decoded reliably (``a-b-c.example``); ``verp_decodable`` says which
pairs can. Decoding never raises: any address gives a ``VerpAddress`` or None.
"""

from __future__ import annotations

import attrs

from ._address import Address, AddressError, parse_path, verp_delimiters_ok


@attrs.frozen
class VerpAddress:
    """A decoded VERP address: the base it is made from and the recipient it carries."""

    base: Address
    recipient: Address


def verp_decodable(delimiters: str) -> bool:
    """Valid XVERP delimiters whose addresses ``verp_decode`` can take apart unambiguously."""
    return verp_delimiters_ok(delimiters) and delimiters[1] != "-"


def _quoted(local: str) -> str:
    return '"' + local.replace("\\", "\\\\").replace('"', '\\"') + '"'


def make_address(local: str, domain: str, *, utf8: bool = True) -> Address | None:
    """``local@domain`` (``local`` unquoted) as our server would parse it in RCPT TO, quoted
    if it is not a dot-atom; None if it would be refused (syntax, length). For whatever builds
    an envelope address from parts: VERP here, SRS and BATV in plugins."""
    if not local or not domain:
        return None
    for candidate in (local, _quoted(local)):
        try:
            address, rest = parse_path(
                f"<{candidate}@{domain}>", utf8=utf8, allow_null=False, allow_postmaster=False
            )
        except AddressError:
            continue
        if address is not None and not rest:
            return address
    return None


def verp_encode(sender: Address, recipient: Address, delimiters: str) -> Address | None:
    """The envelope sender for ``recipient``, or None when there is none to make (bad
    delimiters, a recipient without a domain, a local part over 64 octets).

    An empty local part (``""@host``) on either side gets none either: the bounce address would
    start with the delimiter or hold ``-=host``, which no decoder can tell apart from a
    malformed one, so its bounces could not be traced back (the caller sends the plain sender)."""
    if not verp_delimiters_ok(delimiters) or not recipient.domain or not sender.domain:
        return None
    if not recipient.unquoted_local_part or not sender.unquoted_local_part:
        return None
    first, second = delimiters[0], delimiters[1]
    local = (
        f"{sender.unquoted_local_part}{first}{recipient.unquoted_local_part}"
        f"{second}{recipient.domain}"
    )
    return make_address(local, sender.domain)


def verp_decode(
    address: Address, delimiters: str, *, base: str | None = None
) -> VerpAddress | None:
    """Take a VERP address apart, or None if it is not one (with these delimiters and, when
    given, this base local part, matched case-insensitively). Never raises."""
    if not verp_delimiters_ok(delimiters) or not address.domain:
        return None
    first, second = delimiters[0], delimiters[1]
    local = address.unquoted_local_part
    if base is not None:
        if not base or local[: len(base) + 1].lower() != (base + first).lower():
            return None
        cut = len(base)
    else:
        cut = local.find(first)
        if cut <= 0:
            return None
    rest = local[cut + 1 :]
    split = rest.rfind(second)
    if split <= 0:
        return None
    recipient = make_address(rest[:split], rest[split + 1 :])
    plain = make_address(local[:cut], address.domain)
    if recipient is None or plain is None:
        return None
    return VerpAddress(plain, recipient)
