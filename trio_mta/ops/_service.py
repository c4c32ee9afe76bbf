"""Running as a system service: systemd's readiness protocol (``sd_notify``) and dropping root
privileges once the listeners are bound.

sd_notify (``Type=notify``): systemd passes ``$NOTIFY_SOCKET``, a Unix datagram socket (a path,
or ``@name`` in the abstract namespace); one datagram of ``KEY=VALUE`` lines per state change.
The daemon sends ``READY=1`` once every listener is bound and the plugins have started,
``RELOADING=1`` / ``READY=1`` around a SIGHUP reload and ``STOPPING=1`` when it starts to drain,
so ``systemctl start`` returns when mail can flow and ``systemctl status`` shows the phase.
"""

from __future__ import annotations

import grp
import logging
import os
import pwd
import socket
import time
from pathlib import Path

from ..config import Config
from ..reloader import Reloader
from ..server import bind_listeners

log = logging.getLogger("trio_mta")


def sd_notify(state: str) -> bool:
    """Tell the service manager ``state`` ("READY=1", ...). False when not under one (no
    ``$NOTIFY_SOCKET``) or when it cannot be reached; never raises (readiness is advisory)."""
    address = os.environ.get("NOTIFY_SOCKET")
    if not address:
        return False
    if address.startswith("@"):
        address = "\0" + address[1:]  # the abstract namespace
    try:
        with socket.socket(socket.AF_UNIX, socket.SOCK_DGRAM | socket.SOCK_CLOEXEC) as sock:
            sock.connect(address)
            sock.sendall(state.encode())
    except OSError:
        return False
    return True


class PrivilegeError(Exception):
    """Privileges cannot be dropped as configured; the message says why and what to do."""


def account_problem(user: str, group: str) -> str | None:
    """Why ``[server] user``/``group`` cannot be switched to on this machine, or None."""
    if user:
        try:
            pwd.getpwnam(user)
        except KeyError:
            return f"[server] user {user!r}: no such user"
    if group:
        try:
            grp.getgrnam(group)
        except KeyError:
            return f"[server] group {group!r}: no such group"
    return None


def drop_privileges(user: str, group: str, var_dir: Path, owned: tuple[Path, ...] = ()) -> str:
    """Become ``user`` (its groups, or ``group``) for good. ``var_dir`` and ``owned`` (files
    made as root before the drop, like the lock) are handed to it if root owns them (systemd's
    StateDirectory= makes the directory as root); then ``var_dir`` and its directories must be
    writable. Returns "user:group" for the log.

    Raises:
        PrivilegeError: unknown user or group, not started as root, or var_dir not writable.
    """
    try:
        entry = pwd.getpwnam(user)
    except KeyError:
        raise PrivilegeError(f"[server] user {user!r}: no such user") from None
    try:
        gid = grp.getgrnam(group).gr_gid if group else entry.pw_gid
    except KeyError:
        raise PrivilegeError(f"[server] group {group!r}: no such group") from None
    who = f"{user}:{group or grp.getgrgid(gid).gr_name}"
    if os.geteuid() != 0:
        if (os.geteuid(), os.getegid()) == (entry.pw_uid, gid):
            return who  # started as that user already (systemd User=): nothing to drop
        raise PrivilegeError(
            f"[server] user = {user!r} needs the daemon started as root (it runs as uid"
            f' {os.geteuid()}); start it as root, or as {user} with [server] user = ""'
        )
    for path in (var_dir, *owned):
        if path.exists() and path.stat().st_uid == 0:
            os.chown(path, entry.pw_uid, gid)
    os.initgroups(user, gid)
    os.setresgid(gid, gid, gid)
    os.setresuid(entry.pw_uid, entry.pw_uid, entry.pw_uid)
    os.environ["HOME"] = entry.pw_dir
    os.environ["USER"] = os.environ["LOGNAME"] = user
    unwritable = [d for d in (var_dir, *_subdirs(var_dir)) if not os.access(d, os.W_OK | os.X_OK)]
    if unwritable:
        raise PrivilegeError(
            f"running as {who}, but {unwritable[0]} is not writable by it: chown -R {who} {var_dir}"
        )
    return who


def _subdirs(var_dir: Path) -> list[Path]:
    try:
        return [p for p in var_dir.iterdir() if p.is_dir() and not p.is_symlink()]
    except OSError:
        return []


def bind_and_drop_privileges(config: Config, lock_file: Path) -> list[socket.socket] | None:
    """With ``[server] user``: bind the SMTP listeners now (ports below 1024 need root), then
    become that user before any plugin, certificate or spool file is touched, as Postfix's
    master binds and its children run unprivileged.

    Raises:
        OSError: a listener cannot bind. PrivilegeError: the user cannot be switched to.
    """
    server = config.server
    if not server.user:
        return None
    sockets = bind_listeners(config)
    try:
        who = drop_privileges(server.user, server.group, server.var_dir, owned=(lock_file,))
    except BaseException:
        for sock in sockets:
            sock.close()
        raise
    log.info("listeners bound; running as %s (uid %d)", who, os.getuid())
    return sockets


async def notified_reload(reloader: Reloader) -> None:
    """A reload, told to systemd (Type=notify): RELOADING=1 with the time it began, READY=1."""
    sd_notify(f"RELOADING=1\nMONOTONIC_USEC={time.monotonic_ns() // 1000}")
    try:
        await reloader.reload()
    finally:
        sd_notify("READY=1\nSTATUS=accepting mail")
