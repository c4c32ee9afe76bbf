"""AUTH for plugins: the credentials an ``auth`` hook verifies, and scrypt password hashes.

Theory of operation
-------------------
The server runs the SASL exchange (``server/_sasl.py``) and hands the ``auth`` hook one
``Credentials``: PLAIN and LOGIN carry the password; CRAM-MD5 (RFC 2195) carries the challenge
the server sent and the client's HMAC-MD5 digest, which only a backend that knows the plaintext
secret (or an equivalent) can check. ``repr`` never shows the password or the digest, so a
``Credentials`` in a log line or a traceback leaks nothing.

Stored passwords are scrypt hashes (RFC 7914) with a per-user random salt, written as
``scrypt$<log2 N>$<r>$<p>$<salt, base64>$<hash, base64>``; the cost parameters travel with the
hash, so they can be raised later without invalidating old entries. Verification compares in
constant time and refuses absurd parameters (a hostile file must not make one check use gigabytes).

A users file has one ``user:hash`` per line; blank lines and lines starting with ``#`` are kept
as they are when a user is added, changed or removed.
"""

from __future__ import annotations

import base64
import binascii
import hashlib
import hmac
import os

import attrs

SCHEME = "scrypt"
DEFAULT_LOG2_N = 14  # 16 MiB and about 50 ms per check with r = 8
DEFAULT_R = 8
DEFAULT_P = 1
_SALT_BYTES = 16
_HASH_BYTES = 32
_MAX_LOG2_N, _MAX_R, _MAX_P = 20, 32, 16
_MAX_MEMORY = 256 * 1024 * 1024  # 128 * r * N octets, per check


@attrs.frozen
class Credentials:
    """What the client proved it knows, for the ``auth`` hook.

    ``mechanism`` is ``"PLAIN"``, ``"LOGIN"`` or ``"CRAM-MD5"``. PLAIN and LOGIN set
    ``password``; CRAM-MD5 sets ``challenge`` (as sent, without base64) and ``digest`` (the
    client's lower-case hex HMAC-MD5 of the challenge, keyed with the secret)."""

    mechanism: str
    username: str
    password: str | None = attrs.field(default=None, repr=False)
    challenge: str | None = None
    digest: str | None = attrs.field(default=None, repr=False)

    def matches_secret(self, secret: str) -> bool:
        """For a backend that holds the plaintext secret: do these credentials prove it?
        Works for every mechanism; compares in constant time."""
        key = secret.encode("utf-8")
        if self.password is not None:
            return hmac.compare_digest(self.password.encode("utf-8"), key)
        if self.challenge is None or self.digest is None:
            return False
        expected = hmac.new(key, self.challenge.encode("utf-8"), hashlib.md5).hexdigest()
        return hmac.compare_digest(expected.encode("ascii"), self.digest.lower().encode("ascii"))


def _b64(data: bytes) -> str:
    return base64.b64encode(data).decode("ascii")


def hash_password(
    password: str,
    *,
    log2_n: int = DEFAULT_LOG2_N,
    r: int = DEFAULT_R,
    p: int = DEFAULT_P,
    salt: bytes | None = None,
) -> str:
    """An encoded scrypt hash of ``password`` with a fresh random salt."""
    salt = os.urandom(_SALT_BYTES) if salt is None else salt
    digest = _scrypt(password, salt, log2_n, r, p)
    return f"{SCHEME}${log2_n}${r}${p}${_b64(salt)}${_b64(digest)}"


def _scrypt(
    password: str, salt: bytes, log2_n: int, r: int, p: int, dklen: int = _HASH_BYTES
) -> bytes:
    n = 1 << log2_n
    return hashlib.scrypt(
        password.encode("utf-8"),
        salt=salt,
        n=n,
        r=r,
        p=p,
        maxmem=2 * 128 * r * n + 128 * r * p + (1 << 20),
        dklen=dklen,
    )


def _decode_hash(encoded: str) -> tuple[int, int, int, bytes, bytes]:
    parts = encoded.split("$")
    if len(parts) != 6 or parts[0] != SCHEME:
        raise ValueError(f"not a {SCHEME}$... password hash")
    try:
        log2_n, r, p = int(parts[1]), int(parts[2]), int(parts[3])
        salt = base64.b64decode(parts[4], validate=True)
        digest = base64.b64decode(parts[5], validate=True)
    except (ValueError, binascii.Error):
        raise ValueError("malformed scrypt parameters, salt or hash") from None
    if not (1 <= log2_n <= _MAX_LOG2_N and 1 <= r <= _MAX_R and 1 <= p <= _MAX_P):
        raise ValueError("scrypt cost parameters out of range")
    if 128 * r * (1 << log2_n) > _MAX_MEMORY:
        raise ValueError("scrypt cost parameters need too much memory")
    if not salt or len(digest) < 16:
        raise ValueError("scrypt salt or hash too short")
    return log2_n, r, p, salt, digest


def check_hash(encoded: str) -> None:
    """Raise ``ValueError`` if ``encoded`` is not a usable hash (for loading files)."""
    _decode_hash(encoded)


def verify_password(password: str, encoded: str) -> bool:
    """Does ``password`` match the encoded hash? Constant-time comparison.

    Raises:
        ValueError: ``encoded`` is not a well-formed hash.
    """
    log2_n, r, p, salt, digest = _decode_hash(encoded)
    candidate = _scrypt(password, salt, log2_n, r, p, len(digest))
    return hmac.compare_digest(candidate, digest)


def check_username(user: str) -> None:
    """Raise ``ValueError`` unless ``user`` can be a users-file name (no ``:``, no spaces or
    control characters, not empty)."""
    if not user or ":" in user or not user.isprintable() or any(c.isspace() for c in user):
        raise ValueError(
            f"{user!r} is not a valid user name (no ':', spaces or control characters)"
        )


def parse_users(text: str) -> dict[str, str]:
    """``user:hash`` lines into a dict; ``ValueError`` naming the line for anything else."""
    users: dict[str, str] = {}
    for number, raw in enumerate(text.splitlines(), 1):
        line = raw.strip()
        if not line or line.startswith("#"):
            continue
        user, colon, encoded = line.partition(":")
        try:
            if not colon:
                raise ValueError("expected user:hash")
            check_username(user)
            check_hash(encoded)
        except ValueError as exc:
            raise ValueError(f"line {number}: {exc}") from None
        if user in users:
            raise ValueError(f"line {number}: user {user!r} appears twice")
        users[user] = encoded
    return users


def update_users(text: str, user: str, encoded: str | None) -> str:
    """``text`` (a users file) with ``user``'s line replaced, appended, or (``encoded`` None)
    removed; every other line is kept as it is."""
    check_username(user)
    out: list[str] = []
    found = False
    for raw in text.splitlines():
        name, colon, _ = raw.strip().partition(":")
        if colon and name == user and not raw.lstrip().startswith("#"):
            found = True
            if encoded is not None:
                out.append(f"{user}:{encoded}")
            continue
        out.append(raw)
    if not found and encoded is not None:
        out.append(f"{user}:{encoded}")
    return "".join(line + "\n" for line in out)
