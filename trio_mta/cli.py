"""The ``trio-mta`` command: ``run`` the daemon, ``check`` a configuration, ``passwd`` a user,
manage the ``queue``."""

from __future__ import annotations

import argparse
import getpass
import os
import sys
import tempfile
from pathlib import Path

import attrs
import trio

from . import __version__, app, logs, ops, queue
from .admin import AdminSetupError, add_watch_parser
from .config import Config, ConfigError, ListenerConfig, load_config, parse_listen
from .control import AlreadyRunning
from .hooks import PluginLoadError, check_username, hash_password, parse_users, update_users
from .server import BoundListener, TlsSetupError, auth_warnings


def _config_dir(value: str | None) -> Path | None:
    if value is not None:
        return Path(value)
    # Out of the box: ./conf if it is there, the embedded defaults otherwise.
    default = Path("conf")
    return default if (default / "trio-mta.toml").is_file() else None


def _apply_overrides(config: Config, args: argparse.Namespace) -> Config:
    if args.var_dir:
        config = attrs.evolve(
            config, server=attrs.evolve(config.server, var_dir=Path(args.var_dir))
        )
    if args.listen:
        listeners = []
        for i, text in enumerate(args.listen):
            host, port = parse_listen(text)
            listeners.append(ListenerConfig(name=f"mx{i}" if i else "mx", host=host, port=port))
        config = attrs.evolve(config, listeners=tuple(listeners))
    return config


def _pinned(args: argparse.Namespace) -> frozenset[str]:
    """The settings the command line replaced: a reload keeps them, whatever the file says."""
    return frozenset(
        name
        for name, given in (("server.var_dir", args.var_dir), ("listeners", args.listen))
        if given
    )


def _print_ready(bound: list[BoundListener]) -> None:
    # One machine-readable line on stdout, so scripts and tests know the actual ports.
    addrs = " ".join(f"{b.name}={b.host}:{b.port}" for b in bound)
    print(f"trio-mta ready {addrs}", flush=True)


def cmd_run(args: argparse.Namespace) -> int:
    try:
        config = _apply_overrides(load_config(_config_dir(args.config)), args)
    except ConfigError as exc:
        print(f"trio-mta: invalid configuration:\n{exc}", file=sys.stderr)
        return 1
    except ValueError as exc:
        print(f"trio-mta: {exc}", file=sys.stderr)
        return 2
    try:
        app.setup_logging(config)
    except logs.LogSetupError as exc:
        print(f"trio-mta: {exc}", file=sys.stderr)
        return 1
    try:
        trio.run(lambda: app.run(config, on_ready=_print_ready, tune_gc=True, pinned=_pinned(args)))
    except AlreadyRunning as exc:
        # One line, and nothing of the running daemon's (pid file, socket, spool) touched.
        print(f"trio-mta: not starting: {exc}", file=sys.stderr)
        return 1
    except (
        PluginLoadError,
        TlsSetupError,
        AdminSetupError,
        ops.PrivilegeError,
        OSError,
        ExceptionGroup,
    ) as exc:
        # A listener that cannot bind or a plugin that cannot start fails inside the app's
        # nursery, so trio hands it over wrapped in (nested) exception groups.
        error = _sole_startup_error(exc)
        if error is None:
            raise
        print(f"trio-mta: {error}", file=sys.stderr)
        return 1
    return 0


def _sole_startup_error(exc: BaseException) -> BaseException | None:
    while isinstance(exc, BaseExceptionGroup) and len(exc.exceptions) == 1:
        exc = exc.exceptions[0]
    startup = (PluginLoadError, TlsSetupError, AdminSetupError, ops.PrivilegeError, OSError)
    return exc if isinstance(exc, startup) else None


def cmd_check(args: argparse.Namespace) -> int:
    config_dir = _config_dir(args.config)
    try:
        config = load_config(config_dir)
        # Loading the plugins also runs each plugin's own validation of its settings.
        plugins = app.load_plugin_set(config)
    except ConfigError as exc:
        print(exc, file=sys.stderr)
        return 1
    except PluginLoadError as exc:
        print(f"{config_dir or 'embedded defaults'}: plugins: {exc}", file=sys.stderr)
        return 1
    where = config_dir if config_dir is not None else "embedded defaults"
    problem = ops.account_problem(config.server.user, config.server.group)
    if problem is not None:  # the start would stop there, after binding: say it now
        print(f"{where}: {problem}", file=sys.stderr)
        return 1
    # Legal but useless (a submission port where nobody can log in): said, not refused.
    for line in auth_warnings(config, plugins):
        print(f"warning: {line}", file=sys.stderr)
    print(f"configuration OK ({where})")
    if args.against_running:
        overrides = argparse.Namespace(var_dir=args.var_dir, listen=None)
        return ops.against_running(_apply_overrides(config, overrides))
    return 0


def _users_file(args: argparse.Namespace) -> Path:
    if args.file:
        return Path(args.file)
    config_dir = _config_dir(args.config) or Path("conf")
    config = load_config(config_dir)
    name = config.plugin_configs.get("auth_flat_file", {}).get("users_file", "auth_users")
    return config_dir / str(name)


def _read_password() -> str:
    if not sys.stdin.isatty():  # a script: one line on stdin
        return sys.stdin.readline().rstrip("\r\n")
    first = getpass.getpass("Password: ")
    if getpass.getpass("Again: ") != first:
        raise ValueError("the passwords differ")
    return first


def _replace_file(path: Path, text: str) -> None:
    """Write ``text`` to ``path`` atomically (temporary file, fsync, rename), keeping its mode
    (0600 for a new file: the hashes are not for everyone to attack offline)."""
    try:
        mode = path.stat().st_mode & 0o777
    except FileNotFoundError:
        mode = 0o600
    fd, tmp = tempfile.mkstemp(prefix=f".{path.name}.", dir=path.parent)
    try:
        with os.fdopen(fd, "w", encoding="utf-8") as f:
            f.write(text)
            f.flush()
            os.fchmod(f.fileno(), mode)
            os.fsync(f.fileno())
        os.replace(tmp, path)
    except BaseException:
        Path(tmp).unlink(missing_ok=True)
        raise
    directory = os.open(path.parent, os.O_RDONLY)
    try:
        os.fsync(directory)
    finally:
        os.close(directory)


def cmd_passwd(args: argparse.Namespace) -> int:
    try:
        check_username(args.user)
        path = _users_file(args)
        text = path.read_text(encoding="utf-8") if path.exists() else ""
        users = parse_users(text)
        if args.delete:
            if args.user not in users:
                raise ValueError(f"no user {args.user!r} in {path}")
            encoded = None
        else:
            password = _read_password()
            if not password:
                raise ValueError("empty password")
            encoded = hash_password(password)
        _replace_file(path, update_users(text, args.user, encoded))
    except ConfigError as exc:
        print(f"trio-mta: invalid configuration (use --file):\n{exc}", file=sys.stderr)
        return 1
    except (OSError, ValueError) as exc:
        print(f"trio-mta: {exc}", file=sys.stderr)
        return 1
    verb = "removed from" if args.delete else "updated in" if args.user in users else "added to"
    print(f"user {args.user} {verb} {path}")
    return 0


def _queue_config(args: argparse.Namespace) -> Config:
    overrides = argparse.Namespace(var_dir=args.var_dir, listen=None)
    return _apply_overrides(load_config(_config_dir(args.config)), overrides)


def cmd_dkim_keygen(args: argparse.Namespace) -> int:
    """Write a DKIM private key and print the TXT record to publish."""
    from . import dkimkey

    base = _config_dir(args.config) or Path("conf")
    path = Path(args.out) if args.out else base / "dkim" / args.domain / f"{args.selector}.key"
    if path.exists() and not args.force:
        print(f"trio-mta: {path} exists (use --force to replace it)", file=sys.stderr)
        return 1
    private, record = dkimkey.generate(args.type, args.bits)
    try:
        path.parent.mkdir(parents=True, exist_ok=True)
        fd = os.open(path, os.O_WRONLY | os.O_CREAT | os.O_TRUNC, 0o600)
        with os.fdopen(fd, "wb") as f:
            f.write(private)
    except OSError as exc:
        print(f"trio-mta: {path}: {exc.strerror}", file=sys.stderr)
        return 1
    print(f"; private key written to {path}")
    shown = path.relative_to(base) if path.is_relative_to(base) else path
    print(f'; dkim_sign: [domains."{args.domain}"] selector = "{args.selector}", key = "{shown}"')
    print(dkimkey.zone_line(args.domain, args.selector, record))
    return 0


def add_dkim_parser(sub: argparse._SubParsersAction[argparse.ArgumentParser]) -> None:
    dkim = sub.add_parser("dkim", help="DKIM key management")
    dkim_sub = dkim.add_subparsers(dest="dkim_command", required=True)
    keygen = dkim_sub.add_parser(
        "keygen", help="write a new signing key and print the DNS TXT record to publish"
    )
    keygen.add_argument("domain", metavar="DOMAIN")
    keygen.add_argument("selector", metavar="SELECTOR")
    keygen.add_argument("--type", choices=("rsa", "ed25519"), default="rsa")
    keygen.add_argument("--bits", type=int, default=2048, help="RSA key size (default 2048)")
    keygen.add_argument("--config", metavar="DIR", help="configuration directory (default: ./conf)")
    keygen.add_argument(
        "--out", metavar="FILE", help="key file (default: CONFIG/dkim/DOMAIN/SELECTOR.key)"
    )
    keygen.add_argument("--force", action="store_true", help="replace an existing key file")
    keygen.set_defaults(func=cmd_dkim_keygen)


def build_parser() -> argparse.ArgumentParser:
    parser = argparse.ArgumentParser(prog="trio-mta", description="A plugin-oriented MTA on Trio.")
    parser.add_argument("--version", action="version", version=f"trio-mta {__version__}")
    sub = parser.add_subparsers(dest="command", required=True)
    run = sub.add_parser("run", help="run the daemon")
    run.add_argument("--config", metavar="DIR", help="configuration directory (default: ./conf)")
    run.add_argument(
        "--listen",
        metavar="HOST:PORT",
        action="append",
        help="listen here instead of the configured listeners (repeatable; port 0 = any)",
    )
    run.add_argument("--var-dir", metavar="DIR", help="state directory (default: ./var)")
    run.set_defaults(func=cmd_run)
    check = sub.add_parser("check", help="validate the configuration and report every error")
    check.add_argument("--config", metavar="DIR", help="configuration directory (default: ./conf)")
    check.add_argument(
        "--against-running",
        action="store_true",
        help="also ask the running daemon what a reload would apply and what needs a restart",
    )
    check.add_argument(
        "--var-dir", metavar="DIR", help="the running daemon's state directory (default: ./var)"
    )
    check.set_defaults(func=cmd_check)
    passwd = sub.add_parser(
        "passwd",
        help="set a user's password in the auth_flat_file users file (read from the terminal,"
        " or one line on stdin)",
    )
    passwd.add_argument("user", metavar="USER")
    passwd.add_argument(
        "--file", metavar="F", help="users file (default: auth_flat_file's users_file)"
    )
    passwd.add_argument("--config", metavar="DIR", help="configuration directory (default: ./conf)")
    passwd.add_argument("--delete", action="store_true", help="remove the user instead")
    passwd.set_defaults(func=cmd_passwd)
    add_dkim_parser(sub)
    add_watch_parser(sub, _config_dir)
    queue.add_parser(sub, _queue_config)
    ops.add_parsers(sub, _queue_config, app.load_plugin_set)
    ops.add_init_parser(sub)
    return parser


SIGPIPE_EXIT = 128 + 13  # what a shell reports for a tool that SIGPIPE ended


def main(argv: list[str] | None = None) -> int:
    args = build_parser().parse_args(argv)
    try:
        result: int = args.func(args)
        sys.stdout.flush()
    except BrokenPipeError:
        return _stdout_closed()
    except BaseExceptionGroup as group:  # a Trio command (watch) whose reader went away
        rest = group.subgroup(lambda e: not isinstance(e, BrokenPipeError | BaseExceptionGroup))
        if rest is not None:
            raise
        return _stdout_closed()
    return result


def _stdout_closed() -> int:
    """The reader of our output went away (``trio-mta queue list | head``): stop quietly, as
    Unix tools do, instead of a traceback. Python would flush stdout again at exit and fail
    once more, so stdout now points at /dev/null."""
    devnull = os.open(os.devnull, os.O_WRONLY)
    os.dup2(devnull, sys.stdout.fileno())
    os.close(devnull)
    return SIGPIPE_EXIT


if __name__ == "__main__":
    sys.exit(main())
