"""DKIM signing (RFC 6376; RSA-SHA256 and Ed25519-SHA256, RFC 8463) of outbound mail.

Signs at ``data_post`` (after the other plugins, priority 50) the messages of relaying or
authenticated clients whose From: domain has a key. The signed text is the message as it will
be queued (our header edits applied, our Received: line excluded); the DKIM-Signature header
is added unfolded (relaxed header canonicalization makes folding irrelevant). Signing needs no
DNS but is CPU work, so it runs in a worker thread under the plugin deadline (``on_timeout``
CONT: the message goes out unsigned, which is logged).

Config (``conf/plugins/dkim_sign.toml``)::

    [domains."example.org"]          # one table, or an array of tables to sign twice
    selector = "s2026"
    key = "dkim/example.org/s2026.key"   # relative to the configuration directory

Keys come from ``trio-mta dkim keygen DOMAIN SELECTOR [--type rsa|ed25519]``; the algorithm
follows the key. ``headers`` (default: dkimpy's recommended list) names the signed fields.
The note ``txn.notes["dkim_sign"]`` lists ``"d/s"`` of each signature made.
"""

from __future__ import annotations

from pathlib import Path

import attrs
import dkim
import trio

from trio_mta import hooks


@attrs.frozen
class Key:
    domain: str
    selector: str
    private: bytes
    algorithm: bytes


def load_key(domain: str, entry: object, base: Path) -> Key:
    if not isinstance(entry, dict):
        raise ValueError(f"domains.{domain}: must be a table with selector and key")
    selector, path = entry.get("selector"), entry.get("key")
    if not isinstance(selector, str) or not selector:
        raise ValueError(f"domains.{domain}.selector: must be a non-empty string")
    if not isinstance(path, str) or not path:
        raise ValueError(f"domains.{domain}.key: must be a path to a private key")
    full = base / path
    try:
        private = full.read_bytes()
    except OSError as exc:
        raise ValueError(f"domains.{domain}.key: cannot read {full}: {exc.strerror}") from None
    algorithm = b"rsa-sha256" if b"PRIVATE KEY" in private else b"ed25519-sha256"
    return Key(domain.lower(), selector, private, algorithm)


def from_domain(txn: hooks.Transaction) -> str | None:
    if txn.message is None:
        return None
    values = txn.message.headers.get_all("From") or []
    if len(values) != 1:
        return None
    _, _, domain = str(values[0]).rpartition("@")
    domain = domain.strip().rstrip(">").strip().lower()
    return domain or None


def sign(message: bytes, key: Key, headers: list[bytes] | None) -> tuple[str, str]:
    """The DKIM-Signature as (name, unfolded value) (run in a worker thread)."""
    line = dkim.sign(
        message,
        key.selector.encode(),
        key.domain.encode(),
        key.private,
        include_headers=headers,
        signature_algorithm=key.algorithm,
        linesep=b"\r\n",
    )
    name, _, value = line.decode("ascii").partition(":")
    return name, value.replace("\r\n", "").strip()


class Plugin(hooks.Plugin):
    priority = 50
    on_timeout = hooks.CONT

    def setup(self) -> None:
        unknown = set(self.config) - {"domains", "headers"}
        if unknown:
            raise ValueError(f"unknown keys: {', '.join(sorted(unknown))}")
        base = self.env.config_dir or Path.cwd()
        domains = self.config.get("domains", {})
        if not isinstance(domains, dict):
            raise ValueError("domains: must be a table of domain = {selector, key}")
        self.keys: dict[str, list[Key]] = {}
        for domain, entry in domains.items():
            entries = entry if isinstance(entry, list) else [entry]
            self.keys[domain.lower()] = [load_key(domain, e, base) for e in entries]
        headers = self.config.get("headers")
        if headers is not None and (
            not isinstance(headers, list) or not all(isinstance(h, str) for h in headers)
        ):
            raise ValueError("headers: must be a list of header field names")
        self.headers = [h.encode() for h in headers] if headers else None

    async def hook_data_post(self, conn: hooks.Connection) -> hooks.Result:
        txn = conn.transaction
        if txn is None or txn.message is None or not (conn.relaying or conn.auth_user):
            return hooks.CONT
        domain = from_domain(txn)
        keys = self.keys.get(domain or "")
        if not keys:
            return hooks.CONT
        message = txn.message_bytes()[len(txn.trace_header) :]
        made = []
        for key in keys:
            name, value = await trio.to_thread.run_sync(
                sign, message, key, self.headers, abandon_on_cancel=True
            )
            txn.add_header(name, value)
            made.append(f"{key.domain}/{key.selector}")
        txn.notes["dkim_sign"] = made
        self.log.info("conn=%s dkim signed %s", conn.id, " ".join(made))
        return hooks.CONT
