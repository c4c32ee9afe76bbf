"""What the srs and batv plugins share: keyed hashes, day numbers, secrets, address checks.

Both plugins sign an envelope address with a short keyed hash and a day stamp, so that mail
coming back to the signed address can be told apart from forgeries (backscatter, relay abuse)
without keeping any state. The rules they share live here:

* Hashes are HMAC-SHA1 over the inputs concatenated, with ASCII letters lower-cased first (as
  libsrs2 does): a relay that changes the case of an address does not break its signature.
  Comparisons are case-insensitive and constant-time.
* Days are whole days since the Unix epoch, UTC; both schemes carry them modulo a small number
  (1024 for SRS, 1000 for BATV), so an age is only meaningful well inside that period:
  ``MAX_AGE_DAYS`` keeps ``max_age`` far from the wrap.
* An address either plugin makes must be one our own server would accept in RCPT TO: a local
  part of at most 64 octets (RFC 5321 §4.5.3.1.1) that parses as a path. Otherwise the
  address is not made, and the sender stays as it was.

Nothing here does I/O except ``read_secrets`` (called from ``setup``), and nothing raises on
bad input but the configuration checks, whose ``ValueError`` names the key at fault.
"""

from __future__ import annotations

import hashlib
import hmac
from collections.abc import Iterable, Mapping, Sequence
from pathlib import Path

from trio_mta import hooks
from trio_mta.protocol import Address, RcptParams, make_address

DAY_SECONDS = 86400
MAX_AGE_DAYS = 365
MIN_SECRET_LENGTH = 16
MAX_LOCAL_PART = 64
SRS_SEPARATORS = "=+-"

_ASCII_LOWER = str.maketrans("ABCDEFGHIJKLMNOPQRSTUVWXYZ", "abcdefghijklmnopqrstuvwxyz")


def day_number(now: float) -> int:
    """Whole days since 1970-01-01 UTC."""
    return int(now // DAY_SECONDS)


def ascii_lower(text: str) -> str:
    """Lower-case ASCII letters only (``str.lower`` would also fold non-ASCII ones, which
    libsrs2, working on bytes, does not)."""
    return text.translate(_ASCII_LOWER)


def _octets(text: str) -> bytes:
    # Lone surrogates (from a str built elsewhere) must hash, not raise.
    return text.encode("utf-8", "surrogatepass")


def keyed_digest(key: bytes, *parts: str) -> bytes:
    """HMAC-SHA1 of the parts, concatenated, ASCII letters lower-cased."""
    mac = hmac.new(key, digestmod=hashlib.sha1)
    for part in parts:
        mac.update(_octets(ascii_lower(part)))
    return mac.digest()


def same_text(given: str, expected: str) -> bool:
    """Case-insensitive, constant-time comparison of two hash texts."""
    return hmac.compare_digest(_octets(ascii_lower(given)), _octets(ascii_lower(expected)))


def is_srs_local(local: str) -> bool:
    """Whether a local part is in the SRS0/SRS1 form (any separator), whoever made it."""
    return ascii_lower(local[:4]) in ("srs0", "srs1") and local[4:5] in tuple(SRS_SEPARATORS)


def normal_domain(domain: str) -> str:
    return domain.lower().rstrip(".")


def is_remote(address: Address, local_domains: frozenset[str]) -> bool:
    return bool(address.domain) and normal_domain(address.domain) not in local_domains


def note_map(notes: dict[str, object], key: str) -> dict[str, str]:
    """The ``{address: address}`` note under ``key``, made empty if missing or not a dict."""
    value = notes.get(key)
    if not isinstance(value, dict):
        value = notes[key] = {}
    return value


def replace_recipients(
    recipients: Sequence[tuple[Address, RcptParams]], mapping: Mapping[str, str]
) -> list[tuple[Address, RcptParams]] | None:
    """The recipients with every address found in ``mapping`` (by its text) replaced by the
    address it maps to, duplicates dropped (the first stays); None if nothing changed."""
    replaced: list[tuple[Address, RcptParams]] = []
    changed = False
    for address, params in recipients:
        target = mapping.get(str(address))
        if target is not None and target != str(address):
            replacement = make_address(*target.rsplit("@", 1)) if "@" in target else None
            if replacement is not None:
                address, changed = replacement, True
        replaced.append((address, params))
    if not changed:
        return None
    # A client may have named both the signed address and the plain one: deliver once.
    out: list[tuple[Address, RcptParams]] = []
    seen: set[tuple[str, str]] = set()
    for address, params in replaced:
        key = (address.local_part, normal_domain(address.domain))
        if key not in seen:
            seen.add(key)
            out.append((address, params))
    return out


def rewrite_recipients(txn: hooks.Transaction, key: str) -> None:
    """Replace the transaction's recipients found in the ``{address: address}`` note under
    ``key`` (what the rcpt hook recorded) by the addresses they map to."""
    mapping = note_map(txn.notes, key)
    if mapping:
        replaced = replace_recipients(txn.recipients, mapping)
        if replaced is not None:
            txn.recipients = replaced


# ------------------------------------------------------------------------- configuration


def check_keys(config: Mapping[str, object], known: Iterable[str]) -> None:
    unknown = set(config) - set(known)
    if unknown:
        raise ValueError(f"unknown keys {sorted(unknown)}; known: {sorted(known)}")


def check_secret(value: object, where: str) -> bytes:
    if not isinstance(value, str):
        raise ValueError(f"{where}: must be a string")
    if len(value) < MIN_SECRET_LENGTH or value != value.strip():
        raise ValueError(
            f"{where}: must be at least {MIN_SECRET_LENGTH} characters without surrounding "
            "spaces (a random string, e.g. from `openssl rand -base64 24`)"
        )
    return value.encode("utf-8")


def read_secrets(value: object, config_dir: Path | None, where: str) -> tuple[bytes, ...]:
    """The secrets in a file, one a line (blank lines and ``#`` comments skipped), first one
    first. A relative path is relative to the configuration directory."""
    if not isinstance(value, str) or not value:
        raise ValueError(f"{where}: must be a file name")
    path = Path(value)
    if not path.is_absolute() and config_dir is not None:
        path = config_dir / path
    try:
        text = path.read_text(encoding="utf-8")
    except (OSError, UnicodeDecodeError) as exc:
        reason = exc.strerror if isinstance(exc, OSError) else "not UTF-8 text"
        raise ValueError(f"{where}: cannot read {path}: {reason}") from None
    lines = [line.strip() for line in text.splitlines()]
    secrets = tuple(
        check_secret(line, f"{where}: {path} line {n}")
        for n, line in enumerate(lines, 1)
        if line and not line.startswith("#")
    )
    if not secrets:
        raise ValueError(f"{where}: {path} holds no secret")
    return secrets


def check_days(config: Mapping[str, object], key: str, default: int) -> int:
    value = config.get(key, default)
    if isinstance(value, bool) or not isinstance(value, int) or not 1 <= value <= MAX_AGE_DAYS:
        raise ValueError(f"{key}: must be a whole number of days from 1 to {MAX_AGE_DAYS}")
    return value


def check_domain(value: object, where: str) -> str:
    if not isinstance(value, str) or make_address("x", value.rstrip("."), utf8=False) is None:
        raise ValueError(f"{where}: {value!r} is not a domain name")
    if value.startswith("["):
        raise ValueError(f"{where}: {value!r}: an address literal cannot be used here")
    return normal_domain(value)


def check_domains(value: object, where: str) -> frozenset[str]:
    if not isinstance(value, list | tuple):
        raise ValueError(f"{where}: must be a list of domain names")
    return frozenset(check_domain(d, where) for d in value)


def check_choice(config: Mapping[str, object], key: str, choices: Sequence[str]) -> str:
    value = config.get(key, choices[0])
    if value not in choices:
        raise ValueError(f"{key}: must be " + " or ".join(f'"{c}"' for c in choices))
    assert isinstance(value, str)
    return value
