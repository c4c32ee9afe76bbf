"""Verify SMTP AUTH by logging in to another SMTP server (Haraka's ``auth/auth_proxy``).

Each AUTH here opens a session to the upstream server, says EHLO, STARTTLS per ``tls``, and
tries AUTH PLAIN (or LOGIN) with the client's user name and password, then QUITs.

Config (``conf/plugins/auth_smtp_proxy.toml``):

``host`` (required), ``port`` (default 587)
    The upstream server.
``tls`` (default ``"required"``)
    STARTTLS policy towards it: ``"required"`` (never send a password in the clear; the
    certificate is checked against ``tls_ca_file`` or the system CAs), ``"opportunistic"``
    (when offered, unverified) or ``"never"``. Implicit TLS (port 465) is not supported.
``tls_ca_file``
    CA certificates to verify the upstream against.
``allow_plaintext`` (default ``false``)
    Send the password without TLS when the session is not encrypted (tests, a server on the
    same host). Required for ``tls = "never"``.
``helo`` (default: the server's hostname)

Verdicts on the ``auth`` hook: upstream 235 → OK; upstream 535 (credentials invalid) → DENY,
answered 535 5.7.8; anything else (no connection, a refused greeting, a 4xx, another 5xx such
as 534 or 538, a broken session, a TLS failure, no PLAIN/LOGIN offered) is the upstream's or
our configuration's problem, not the client's → DENYSOFT (454 4.7.0). Only PLAIN and LOGIN:
CRAM-MD5 would need the password, which the client never sends with it. The deadline is the
plugin's ``timeout``. Passwords are never logged (the client's errors do not contain them).
"""

from __future__ import annotations

import ssl

from trio_mta import hooks

_KEYS = frozenset({"host", "port", "tls", "tls_ca_file", "allow_plaintext", "helo"})


class Plugin(hooks.Plugin):
    auth_mechanisms = frozenset({"PLAIN", "LOGIN"})

    def setup(self) -> None:
        config = self.config
        unknown = set(config) - _KEYS
        if unknown:
            raise ValueError(f"unknown keys {sorted(unknown)}; known: {sorted(_KEYS)}")
        host, port = config.get("host"), config.get("port", 587)
        if not isinstance(host, str) or not host:
            raise ValueError("host: required, the upstream server's name or address")
        if isinstance(port, bool) or not isinstance(port, int) or not 0 < port < 65536:
            raise ValueError("port: must be a port number")
        tls = config.get("tls", "required")
        if tls not in {t.value for t in hooks.StartTLS}:
            raise ValueError('tls: must be "required", "opportunistic" or "never"')
        ca_file = config.get("tls_ca_file")
        if ca_file is not None and not isinstance(ca_file, str):
            raise ValueError("tls_ca_file: must be a path")
        plaintext = config.get("allow_plaintext", False)
        if not isinstance(plaintext, bool):
            raise ValueError("allow_plaintext: must be true or false")
        if tls == "never" and not plaintext:
            raise ValueError('tls = "never" sends passwords in the clear: set allow_plaintext')
        helo = config.get("helo", self.env.hostname)
        if not isinstance(helo, str) or not helo:
            raise ValueError("helo: must be a host name")
        self.host, self.port, self.helo = host, port, helo
        self.tls = hooks.StartTLS(tls)
        self.ca_file = ca_file
        self.allow_plaintext = plaintext

    async def hook_auth(self, conn: hooks.Connection, creds: hooks.Credentials) -> hooks.Result:
        if creds.password is None:
            return hooks.CONT
        context = ssl.create_default_context(cafile=self.ca_file) if self.ca_file else None
        try:
            async with hooks.open_smtp_client(
                self.host,
                self.port,
                helo=self.helo,
                tls=context,
                starttls=self.tls,
                auth=(creds.username, creds.password),
                auth_require_tls=not self.allow_plaintext,
            ):
                pass
        except hooks.SMTPClientError as exc:
            if exc.reply is not None and exc.reply.code == 535:
                self.log.info("conn=%s upstream refused user %r", conn.id, creds.username)
                return hooks.deny()
            where = f"{self.host}:{self.port}"
            self.log.warning("conn=%s upstream %s unusable: %s", conn.id, where, exc)
            return hooks.denysoft()
        return hooks.OK
