"""Verify SMTP AUTH against a file of users and scrypt password hashes (Haraka's
``auth/flat_file``, without its plaintext passwords).

Config (``conf/plugins/auth_flat_file.toml``):

``users_file`` (default ``"auth_users"``)
    One ``user:scrypt$...`` line per user, relative to the configuration directory. Write it
    with ``trio-mta passwd [--file F] USER``. Blank lines and ``#`` comments are allowed. A file
    that does not exist yet means no users (every login fails until ``trio-mta passwd`` creates
    it), so the shipped configuration can load this plugin before anyone has a password. A file
    that exists must be well formed when the plugin loads; afterwards it is re-read whenever
    its modification time or size changes, or it appears (no reload needed after ``trio-mta
    passwd``). A re-read that fails is logged and the previous version stays in use.

Verdicts on the ``auth`` hook: the right password → OK; a wrong one → DENY (535 5.7.8); a user
not in the file → CONT, so a later auth plugin may know them (if none does, the server answers
535 too). A user not in the file costs the same scrypt computation as one in it, so timing does
not tell which users exist. Hashes run in a worker thread (about 50 ms each), never on the
event loop.

A scrypt hash cannot verify CRAM-MD5 (it needs the plaintext secret), so this plugin offers
only PLAIN and LOGIN, and with it loaded the server does not advertise CRAM-MD5.
"""

from __future__ import annotations

import os
import threading
from pathlib import Path

import trio

from trio_mta import hooks

_KEYS = frozenset({"users_file"})


class Plugin(hooks.Plugin):
    auth_mechanisms = frozenset({"PLAIN", "LOGIN"})

    def setup(self) -> None:
        unknown = set(self.config) - _KEYS
        if unknown:
            raise ValueError(f"unknown keys {sorted(unknown)}; known: {sorted(_KEYS)}")
        name = self.config.get("users_file", "auth_users")
        if not isinstance(name, str) or not name:
            raise ValueError("users_file: must be a path")
        base = self.env.config_dir if self.env.config_dir is not None else Path.cwd()
        self.path = base / name
        if not self.path.parent.is_dir():  # a typo, not a file still to be written
            raise ValueError(f"users_file {str(self.path)!r}: No such file or directory")
        self._lock = threading.Lock()
        self._stamp: tuple[int, int] | None = None
        self.users: dict[str, str] = {}
        try:
            self._reload()
        except (OSError, ValueError) as exc:
            raise ValueError(f"users_file {str(self.path)!r}: {exc}") from None
        if self._stamp is None:
            self.log.info(
                "users_file %s does not exist yet: no users until `trio-mta passwd` adds one",
                self.path,
            )
        # Checked against when the user is unknown, so that costs as much as a known user.
        self._dummy = hooks.hash_password(os.urandom(16).hex())

    def _reload(self) -> None:
        try:
            st = self.path.stat()
        except FileNotFoundError:
            # Not written yet (or removed): nobody can log in. A file that appears later is read.
            self.users, self._stamp = {}, None
            return
        stamp = (st.st_mtime_ns, st.st_size)
        if stamp == self._stamp:
            return
        users = hooks.parse_users(self.path.read_text(encoding="utf-8"))
        self.users, self._stamp = users, stamp

    def _current(self) -> dict[str, str]:
        with self._lock:
            try:
                self._reload()
            except (OSError, ValueError) as exc:
                self.log.error("users_file %s: %s; keeping the previous version", self.path, exc)
            return self.users

    def _check(self, username: str, password: str) -> bool | None:
        """True/False for a known user, None for an unknown one (after the same work)."""
        encoded = self._current().get(username)
        if encoded is None:
            hooks.verify_password(password, self._dummy)
            return None
        return hooks.verify_password(password, encoded)

    async def hook_auth(self, conn: hooks.Connection, creds: hooks.Credentials) -> hooks.Result:
        if creds.password is None:  # CRAM-MD5: not verifiable against a hash
            return hooks.CONT
        verdict = await trio.to_thread.run_sync(self._check, creds.username, creds.password)
        if verdict is None:
            return hooks.CONT
        return hooks.OK if verdict else hooks.deny()
