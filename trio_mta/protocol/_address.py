"""RFC 5321 paths and ESMTP parameters.

Theory of operation: the argument of MAIL/RCPT is scanned left to right exactly once by a small
hand-written scanner (no regular expressions, so no backtracking on hostile input). The grammar
is RFC 5321 §4.1.2 with the RFC 6531 extension (UTF-8 in atoms, quoted strings and domain labels,
only when the transaction carries SMTPUTF8). Limits are RFC 5321 §4.5.3.1: local part 64
octets, domain 255, whole path 256 including the angle brackets.

Source routes (``<@a,@b:user@c>``) are parsed and kept apart so policy code can see them, but
the mailbox is what RFC 5321 §3.6.1 says to act on.
"""

from __future__ import annotations

import ipaddress

import attrs

from . import _replies as R
from ._replies import Reply

_ATEXT_ASCII = frozenset(
    "abcdefghijklmnopqrstuvwxyzABCDEFGHIJKLMNOPQRSTUVWXYZ0123456789!#$%&'*+-/=?^_`{|}~"
)
_LDH = frozenset("abcdefghijklmnopqrstuvwxyzABCDEFGHIJKLMNOPQRSTUVWXYZ0123456789-")
_KEYWORD = frozenset("abcdefghijklmnopqrstuvwxyzABCDEFGHIJKLMNOPQRSTUVWXYZ0123456789-")

MAX_LOCAL_PART = 64
MAX_DOMAIN = 255
MAX_PATH = 256

# XVERP (Postfix): the characters a client may choose as VERP delimiters (Postfix's
# verp_delimiter_filter: plain atext, with no special meaning in an address, unlike "@" or
# "%"), and the pair a bare XVERP asks for (default_verp_delimiters).
VERP_DELIMITER_CHARS = "-=+"
VERP_DEFAULT_DELIMITERS = "+="


class AddressError(Exception):
    """The argument is not acceptable; ``reply`` says why, in SMTP terms."""

    def __init__(self, reply: Reply) -> None:
        super().__init__(str(reply))
        self.reply = reply


@attrs.frozen
class Address:
    """A mailbox from a path. ``local_part`` keeps its quotes if it was quoted; ``domain`` is as
    sent (an address literal keeps its brackets). ``domain`` is empty only for ``<postmaster>``."""

    local_part: str
    domain: str
    source_route: tuple[str, ...] = ()

    def __str__(self) -> str:
        return f"{self.local_part}@{self.domain}" if self.domain else self.local_part

    @property
    def is_quoted(self) -> bool:
        return self.local_part.startswith('"')

    @property
    def unquoted_local_part(self) -> str:
        if not self.is_quoted:
            return self.local_part
        inner = self.local_part[1:-1]
        out: list[str] = []
        escaped = False
        for ch in inner:
            if escaped:
                out.append(ch)
                escaped = False
            elif ch == "\\":
                escaped = True
            else:
                out.append(ch)
        return "".join(out)

    @property
    def domain_lower(self) -> str:
        return self.domain.lower()

    @property
    def is_address_literal(self) -> bool:
        return self.domain.startswith("[")

    @property
    def is_postmaster(self) -> bool:
        return not self.domain and self.local_part.lower() == "postmaster"


@attrs.frozen
class MailParams:
    size: int | None = None
    body: str | None = None  # "7BIT" or "8BITMIME"
    smtputf8: bool = False
    auth: str | None = None  # RFC 4954 AUTH= value (xtext decoded), "<>" if none
    ret: str | None = None  # RFC 3461: "FULL" or "HDRS"
    envid: str | None = None  # RFC 3461, xtext decoded
    raw: tuple[tuple[str, str | None], ...] = ()
    # XVERP: the two VERP delimiters ("+="), None without. Set by the client's XVERP, or by a
    # plugin (verp's ``senders``) before the message is queued; the outbound queue then sends
    # one transaction per recipient, each with its own envelope sender.
    verp: str | None = None


@attrs.frozen
class RcptParams:
    notify: tuple[str, ...] = ()  # RFC 3461: ("NEVER",) or a subset of SUCCESS/FAILURE/DELAY
    orcpt: str | None = None  # "addr-type;address", xtext decoded
    raw: tuple[tuple[str, str | None], ...] = ()


def _is_ascii(text: str) -> bool:
    return text.isascii()


def _octets(text: str) -> int:
    # "surrogatepass": a str from elsewhere may hold lone surrogates; the character checks
    # refuse them, this length must not raise first.
    return len(text.encode("utf-8", "surrogatepass"))


def _check_domain(domain: str, utf8: bool) -> None:
    if not domain or _octets(domain) > MAX_DOMAIN:
        raise AddressError(R.BAD_ADDRESS)
    if domain.startswith("["):
        _check_address_literal(domain)
        return
    for label in domain.split("."):
        if not label or _octets(label) > 63:
            raise AddressError(R.BAD_ADDRESS)
        if label[0] == "-" or label[-1] == "-":
            raise AddressError(R.BAD_ADDRESS)
        for ch in label:
            if ch in _LDH:
                continue
            if utf8 and ord(ch) > 127 and ch.isprintable():
                continue
            raise AddressError(R.BAD_ADDRESS)


def _check_address_literal(literal: str) -> None:
    if not literal.endswith("]"):
        raise AddressError(R.BAD_ADDRESS)
    inner = literal[1:-1]
    try:
        if inner[:5].lower() == "ipv6:":
            if "%" in inner:  # ipaddress accepts a scope ID ("fe80::1%eth0"); RFC 5321 doesn't
                raise ValueError(inner)
            ipaddress.IPv6Address(inner[5:])
        else:
            # RFC 5321 §4.1.3 IPv4 literal: dotted quad only, no leading "0x" or short forms.
            parts = inner.split(".")
            if len(parts) != 4 or not all(p.isdigit() and len(p) <= 3 for p in parts):
                raise ValueError(inner)
            ipaddress.IPv4Address(inner)
    except ValueError:
        raise AddressError(R.BAD_ADDRESS) from None


def _scan_local_part(text: str, pos: int, utf8: bool) -> int:
    """Return the index just past the local part starting at ``pos``."""
    n = len(text)
    if pos < n and text[pos] == '"':
        i = pos + 1
        while i < n:
            ch = text[i]
            if ch == "\\":
                if i + 1 >= n:
                    raise AddressError(R.BAD_ADDRESS)
                nxt = text[i + 1]
                if not (32 <= ord(nxt) <= 126 or (utf8 and ord(nxt) > 127 and nxt.isprintable())):
                    raise AddressError(R.BAD_ADDRESS)
                i += 2
                continue
            if ch == '"':
                return i + 1
            code = ord(ch)
            if not (
                code in (32, 33) or 35 <= code <= 126 or (utf8 and code > 127 and ch.isprintable())
            ):
                raise AddressError(R.BAD_ADDRESS)
            i += 1
        raise AddressError(R.BAD_ADDRESS)
    i = pos
    atom_len = 0
    while i < n:
        ch = text[i]
        if ch in _ATEXT_ASCII or (utf8 and ord(ch) > 127 and ch.isprintable()):
            atom_len += 1
        elif ch == ".":
            if atom_len == 0:
                raise AddressError(R.BAD_ADDRESS)
            atom_len = 0
        else:
            break
        i += 1
    if atom_len == 0:
        raise AddressError(R.BAD_ADDRESS)
    return i


def _scan_domain_end(text: str, pos: int) -> int:
    """Index of the first character after the domain or address literal at ``pos``."""
    if pos < len(text) and text[pos] == "[":
        end = text.find("]", pos)
        if end < 0:
            raise AddressError(R.BAD_ADDRESS)
        return end + 1
    i = pos
    n = len(text)
    while i < n and text[i] not in ">,: ":
        i += 1
    return i


def parse_path(
    text: str, *, utf8: bool, allow_null: bool, allow_postmaster: bool
) -> tuple[Address | None, str]:
    """Parse ``<path>`` at the start of ``text``; return the address (None for ``<>``) and the rest.

    Raises:
        AddressError: with the reply to send (553 5.1.3 syntax, 553 5.6.7 UTF-8 without SMTPUTF8).
    """
    if not text.startswith("<"):
        raise AddressError(R.BAD_ADDRESS)
    if not utf8 and not _is_ascii(text):
        end = text.find(">")
        if end < 0 or not text[: end + 1].isascii():
            raise AddressError(R.NEED_SMTPUTF8)
    if text.startswith("<>"):
        if not allow_null:
            raise AddressError(R.BAD_ADDRESS)
        return None, text[2:]
    pos = 1
    route: list[str] = []
    # Source route: "@a,@b:" (RFC 5321 §4.1.2 A-d-l); kept, then ignored per §3.6.1.
    if text.startswith("@", pos):
        while True:
            if not text.startswith("@", pos):
                raise AddressError(R.BAD_ADDRESS)
            end = _scan_domain_end(text, pos + 1)
            hop = text[pos + 1 : end]
            _check_domain(hop, utf8)
            route.append(hop)
            if end < len(text) and text[end] == ",":
                pos = end + 1
                continue
            if end < len(text) and text[end] == ":":
                pos = end + 1
                break
            raise AddressError(R.BAD_ADDRESS)
    local_end = _scan_local_part(text, pos, utf8)
    local = text[pos:local_end]
    if _octets(local) > MAX_LOCAL_PART:
        raise AddressError(reply_too_long("local part", MAX_LOCAL_PART))
    if local_end < len(text) and text[local_end] == ">":
        if allow_postmaster and not route and local.lower() == "postmaster":
            return Address(local, "", ()), text[local_end + 1 :]
        raise AddressError(R.BAD_ADDRESS)
    if local_end >= len(text) or text[local_end] != "@":
        raise AddressError(R.BAD_ADDRESS)
    dom_start = local_end + 1
    dom_end = _scan_domain_end(text, dom_start)
    if dom_end >= len(text) or text[dom_end] != ">":
        raise AddressError(R.BAD_ADDRESS)
    domain = text[dom_start:dom_end]
    _check_domain(domain, utf8)
    if _octets(text[: dom_end + 1]) > MAX_PATH:
        raise AddressError(reply_too_long("path", MAX_PATH))
    return Address(local, domain, tuple(route)), text[dom_end + 1 :]


def reply_too_long(what: str, limit: int) -> Reply:
    return R.reply(501, "5.5.4", f"Address {what} too long (max {limit} octets)")


def _split_params(rest: str) -> list[tuple[str, str | None]]:
    """ESMTP parameters (RFC 5321 §4.1.2 esmtp-param), keywords upper-cased, in order."""
    if rest and not rest.startswith(" "):
        raise AddressError(R.BAD_ADDRESS)
    out: list[tuple[str, str | None]] = []
    seen: set[str] = set()
    for word in rest.split(" "):
        if not word:
            continue
        key, eq, value = word.partition("=")
        if not key or not key[0].isalnum() or any(c not in _KEYWORD for c in key):
            raise AddressError(R.BAD_PARAM)
        key = key.upper()
        if key in seen:
            raise AddressError(R.reply(501, "5.5.4", f"Duplicate parameter {key}"))
        seen.add(key)
        if eq:
            # XVERP=+= breaks the esmtp-value rule (no "="), as Postfix has it: its value is
            # judged by _xverp alone, so that every malformed XVERP gets the same 555.
            bad_value = not value or any(ord(c) < 33 or c == "=" or ord(c) == 127 for c in value)
            if bad_value and key != "XVERP":
                raise AddressError(R.BAD_PARAM)
            out.append((key, value))
        else:
            out.append((key, None))
    return out


def xtext_decode(value: str) -> str:
    """RFC 3461 §4 xtext: ``+XX`` is a hex-escaped octet."""
    if "+" not in value:
        return value
    out = bytearray()
    i = 0
    raw = value.encode("utf-8")
    while i < len(raw):
        b = raw[i]
        if b == 0x2B:  # "+"
            hexpart = raw[i + 1 : i + 3]
            if len(hexpart) != 2 or not all(c in b"0123456789ABCDEF" for c in hexpart):
                raise AddressError(R.BAD_PARAM)
            out.append(int(hexpart, 16))
            i += 3
        else:
            out.append(b)
            i += 1
    return out.decode("utf-8", errors="surrogateescape")


def _need(value: str | None, key: str) -> str:
    if value is None:
        raise AddressError(R.reply(501, "5.5.4", f"Parameter {key} requires a value"))
    return value


def _no_value(value: str | None, key: str) -> None:
    if value is not None:
        raise AddressError(R.reply(501, "5.5.4", f"Parameter {key} takes no value"))


def verp_delimiters_ok(delimiters: str) -> bool:
    """Two characters, each one of ``VERP_DELIMITER_CHARS`` (Postfix's verp_delims_verify)."""
    return len(delimiters) == 2 and all(c in VERP_DELIMITER_CHARS for c in delimiters)


def _xverp(value: str | None) -> str:
    if value is None:
        return VERP_DEFAULT_DELIMITERS
    if not verp_delimiters_ok(value):
        raise AddressError(R.XVERP_MALFORMED)
    return value


def parse_mail_params(rest: str) -> MailParams:
    raw = _split_params(rest)
    size: int | None = None
    body = auth = ret = envid = verp = None
    smtputf8 = False
    for key, value in raw:
        if key == "SIZE":
            v = _need(value, key)
            if not (v.isascii() and v.isdigit()) or len(v) > 20:  # "²".isdigit() is True
                raise AddressError(R.reply(501, "5.5.4", "SIZE requires a number"))
            size = int(v)
        elif key == "BODY":
            v = _need(value, key).upper()
            if v not in ("7BIT", "8BITMIME"):
                raise AddressError(R.reply(555, "5.5.4", f"BODY={v} not supported"))
            body = v
        elif key == "SMTPUTF8":
            _no_value(value, key)
            smtputf8 = True
        elif key == "AUTH":
            auth = xtext_decode(_need(value, key))
        elif key == "RET":
            v = _need(value, key).upper()
            if v not in ("FULL", "HDRS"):
                raise AddressError(R.BAD_PARAM)
            ret = v
        elif key == "ENVID":
            envid = xtext_decode(_need(value, key))
            if len(envid) > 100:
                raise AddressError(R.BAD_PARAM)
        elif key == "XVERP":
            verp = _xverp(value)
        else:
            raise AddressError(R.reply(555, "5.5.4", f"Unsupported parameter {key}"))
    return MailParams(size, body, smtputf8, auth, ret, envid, tuple(raw), verp=verp)


_NOTIFY = frozenset({"SUCCESS", "FAILURE", "DELAY"})


def parse_rcpt_params(rest: str) -> RcptParams:
    raw = _split_params(rest)
    notify: tuple[str, ...] = ()
    orcpt: str | None = None
    for key, value in raw:
        if key == "NOTIFY":
            items = tuple(x.upper() for x in _need(value, key).split(","))
            if items != ("NEVER",) and (
                not items or any(x not in _NOTIFY for x in items) or len(set(items)) != len(items)
            ):
                raise AddressError(R.BAD_PARAM)
            notify = items
        elif key == "ORCPT":
            v = _need(value, key)
            kind, semi, addr = v.partition(";")
            if not semi or not kind or not addr:
                raise AddressError(R.BAD_PARAM)
            orcpt = f"{kind};{xtext_decode(addr)}"
        else:
            raise AddressError(R.reply(555, "5.5.4", f"Unsupported parameter {key}"))
    return RcptParams(notify, orcpt, tuple(raw))
