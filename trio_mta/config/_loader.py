"""Reading ``<config_dir>/trio-mta.toml`` into a :class:`Config`, reporting every problem at once.

Theory of operation: a TOML table becomes a section by evolving that section's default instance
one key at a time. Each value is first coerced by the field's annotated type (TOML has no Path or
enum, and a TOML boolean must never pass as an integer), then tried alone with ``attrs.evolve``,
so the field's own converter and validator run exactly as they will for the finished object and a
failure blames exactly that key. Problems are collected, never raised early, until the whole file
has been read: the operator fixes everything in one pass.

Adding a section: its class in ``_schema``, a field on ``Config`` named like the TOML table, and
that name in ``_SECTIONS``. Only ``[[listener]]`` needs its own code, because one TOML key
(``listen``) fills two fields.
"""

import difflib
import enum
import tomllib
import typing
from collections.abc import Iterable, Mapping
from pathlib import Path

import attrs

from ._admin import AdminConfig, admin_problems
from ._queue import RouteConfig, route_problems
from ._schema import Config, ListenerConfig, TlsConfig, listener_conflicts, parse_listen
from ._tlsfiles import tls_problems

CONFIG_FILE_NAME = "trio-mta.toml"

_SECTIONS = (
    "server",
    "timeouts",
    "limits",
    "data",
    "log",
    "plugins",
    "tls",
    "auth",
    "queue",
    "resolver",
    "admin",
)
PLUGIN_CONFIG_DIR = "plugins"
_LISTENER = "listener"
_ROUTE = "route"  # [[route]] tables become Config.routes

_A = typing.TypeVar("_A", bound=attrs.AttrsInstance)


@attrs.frozen
class ConfigIssue:
    """One problem: ``key`` is dotted (``limits.max_recipients``, ``listener[0].listen``), or
    empty when the problem is the file itself (unreadable, not TOML)."""

    file: str
    key: str
    why: str

    def __str__(self) -> str:
        return f"{self.file}: {self.key}: {self.why}" if self.key else f"{self.file}: {self.why}"


class ConfigError(Exception):
    """The configuration is unusable; ``issues`` holds every problem found, in file order."""

    def __init__(self, issues: Iterable[ConfigIssue]) -> None:
        self.issues = tuple(issues)
        super().__init__(*self.issues)

    def __str__(self) -> str:
        return "\n".join(map(str, self.issues))


@attrs.define
class _Issues:
    file: str
    found: list[ConfigIssue] = attrs.Factory(list)

    def add(self, key: str, why: str) -> None:
        self.found.append(ConfigIssue(self.file, key, why))


def load_config(config_dir: Path | None) -> Config:
    """Load and validate ``<config_dir>/trio-mta.toml``.

    Args:
      config_dir: the configuration directory, or ``None`` for the embedded defaults.

    Returns:
      A validated ``Config`` with ``config_dir`` set; the defaults if the directory has no
      ``trio-mta.toml``.

    Raises:
      ConfigError: listing every problem found. A missing directory is an error (a mistyped
        ``--config`` should not quietly run on defaults); a missing file in it is not.
    """
    if config_dir is None:
        return Config()
    if not config_dir.is_dir():
        raise ConfigError([ConfigIssue(str(config_dir), "", "not a directory")])
    path = config_dir / CONFIG_FILE_NAME
    try:
        text = path.read_bytes().decode("utf-8")
        document = tomllib.loads(text)
    except FileNotFoundError:
        return Config(config_dir=config_dir)
    except OSError as exc:
        raise ConfigError([ConfigIssue(str(path), "", exc.strerror or str(exc))]) from exc
    except UnicodeDecodeError as exc:
        why = f"not valid UTF-8 (byte {exc.start})"
        raise ConfigError([ConfigIssue(str(path), "", why)]) from exc
    except tomllib.TOMLDecodeError as exc:
        raise ConfigError([ConfigIssue(str(path), "", str(exc))]) from exc
    return _config_from_document(document, _Issues(str(path)), config_dir)


def _config_from_document(
    document: Mapping[str, object], issues: _Issues, config_dir: Path
) -> Config:
    defaults = Config()
    changes: dict[str, object] = {}
    for key, value in document.items():
        if key in _SECTIONS:
            if not isinstance(value, dict):
                issues.add(key, f"expected a [{key}] table, got {_describe(value)}")
                continue
            section = _evolve_from_table(getattr(defaults, key), value, key, issues)
            if section is not None:
                changes[key] = section
        elif key == _LISTENER:
            changes["listeners"] = _load_listeners(value, issues)
        elif key == _ROUTE:
            changes["routes"] = _load_routes(value, issues)
        else:
            issues.add(key, "unknown section" + _suggest(key, (*_SECTIONS, _LISTENER, _ROUTE)))
    changes["plugin_configs"] = _load_plugin_configs(config_dir / PLUGIN_CONFIG_DIR, issues)
    # The certificate files are checked even when other keys are wrong: one pass shows all.
    tls = changes.get("tls", defaults.tls)
    listeners = changes.get("listeners", defaults.listeners)
    if isinstance(tls, TlsConfig) and isinstance(listeners, tuple):
        for key, why in tls_problems(tls, listeners, config_dir):
            issues.add(key, why)
    admin = changes.get("admin", defaults.admin)
    if isinstance(admin, AdminConfig):
        for key, why in admin_problems(admin):
            issues.add(f"admin.{key}", why)
    if issues.found:
        raise ConfigError(issues.found)
    return _evolve(defaults, {**changes, "config_dir": config_dir})


def _load_plugin_configs(directory: Path, issues: _Issues) -> dict[str, dict[str, object]]:
    """Every ``<name>.toml`` in the plugin config directory, parsed but not interpreted."""
    found: dict[str, dict[str, object]] = {}
    if not directory.is_dir():
        return found
    for path in sorted(directory.glob("*.toml")):
        try:
            found[path.stem] = tomllib.loads(path.read_bytes().decode("utf-8"))
        except (OSError, UnicodeDecodeError, tomllib.TOMLDecodeError) as exc:
            issues.found.append(ConfigIssue(str(path), "", str(exc)))
    return found


def _load_listeners(raw: object, issues: _Issues) -> tuple[ListenerConfig, ...]:
    if not isinstance(raw, list) or not all(isinstance(table, dict) for table in raw):
        issues.add(_LISTENER, f"expected [[{_LISTENER}]] tables, got {_describe(raw)}")
        return ()
    if not raw:
        issues.add(_LISTENER, "at least one listener is required")
    # Any valid listener will do as the starting point: name and address are always replaced.
    template = Config().listeners[0]
    built: list[tuple[int, ListenerConfig]] = []
    for index, table in enumerate(raw):
        listener = _load_listener(template, table, f"{_LISTENER}[{index}]", issues)
        if listener is not None:
            built.append((index, listener))
    for position, key, why in listener_conflicts([listener for _, listener in built]):
        issues.add(f"{_LISTENER}[{built[position][0]}].{key}", why)
    return tuple(listener for _, listener in built)


def _load_routes(raw: object, issues: _Issues) -> tuple[RouteConfig, ...]:
    if not isinstance(raw, list) or not all(isinstance(table, dict) for table in raw):
        issues.add(_ROUTE, f"expected [[{_ROUTE}]] tables, got {_describe(raw)}")
        return ()
    built: list[tuple[int, RouteConfig]] = []
    for index, table in enumerate(raw):
        if "domain" not in table:
            issues.add(f"{_ROUTE}[{index}].domain", "missing required key")
            continue
        route = _evolve_from_table(RouteConfig(), table, f"{_ROUTE}[{index}]", issues)
        if route is not None:
            built.append((index, route))
    for position, key, why in route_problems([route for _, route in built]):
        issues.add(f"{_ROUTE}[{built[position][0]}].{key}", why)
    return tuple(route for _, route in built)


def _load_listener(
    template: ListenerConfig, table: Mapping[str, object], prefix: str, issues: _Issues
) -> ListenerConfig | None:
    rest = dict(table)
    listen = rest.pop("listen", None)
    clean = True
    for required in ("name", "listen"):
        if required not in table:
            issues.add(f"{prefix}.{required}", "missing required key")
            clean = False
    address: dict[str, object] = {}
    if listen is not None and not isinstance(listen, str):
        issues.add(f"{prefix}.listen", f"expected a string HOST:PORT, got {_describe(listen)}")
        clean = False
    elif listen is not None:
        try:
            address["host"], address["port"] = parse_listen(listen)
        except ValueError as exc:
            issues.add(f"{prefix}.listen", str(exc))
            clean = False
    renamed = {"host": "listen", "port": "listen"}
    listener = _evolve_from_table(template, rest, prefix, issues, renamed=renamed)
    if listener is None or not clean:
        return None
    return _evolve(listener, address)


def _evolve_from_table(
    template: _A,
    table: Mapping[str, object],
    prefix: str,
    issues: _Issues,
    *,
    renamed: Mapping[str, str] | None = None,
) -> _A | None:
    """``template`` with the table's keys applied, or None after reporting what was wrong.

    ``renamed`` maps fields that the TOML spells differently to that spelling; they are not
    accepted under their field names.
    """
    renamed = renamed or {}
    fields = attrs.fields_dict(type(template))
    kinds = typing.get_type_hints(type(template))
    changes: dict[str, object] = {}
    clean = True
    for key, raw in table.items():
        where = f"{prefix}.{key}"
        if key not in fields or key in renamed:
            known = {*fields.keys() - renamed.keys(), *renamed.values()}
            issues.add(where, "unknown key" + _suggest(key, sorted(known)))
            clean = False
            continue
        try:
            value = _coerce(raw, kinds[key])
            _evolve(template, {key: value})
        except ValueError as exc:
            issues.add(where, str(exc))
            clean = False
            continue
        changes[key] = value
    return _evolve(template, changes) if clean else None


def _evolve(instance: _A, changes: Mapping[str, object]) -> _A:
    # The mypy attrs plugin types attrs.evolve per field, which cannot check changes whose keys
    # are only known at run time; through a plain reference it keeps the stub's signature.
    evolve = attrs.evolve
    return evolve(instance, **changes)


def _coerce(raw: object, kind: object) -> object:
    """``raw`` as a value of the annotated field type ``kind``, or ``ValueError``."""
    if kind is bool:
        if isinstance(raw, bool):
            return raw
        raise ValueError(f"expected true or false, got {_describe(raw)}")
    # bool is a subclass of int in Python; `max_recipients = true` is a mistake, not 1.
    if kind is int and isinstance(raw, int) and not isinstance(raw, bool):
        return raw
    if kind is int:
        raise ValueError(f"expected an integer, got {_describe(raw)}")
    if kind is float and isinstance(raw, int | float) and not isinstance(raw, bool):
        return float(raw)
    if kind is float:
        raise ValueError(f"expected a number, got {_describe(raw)}")
    if kind is str or kind is Path:
        if isinstance(raw, str):
            return raw if kind is str else Path(raw)
        raise ValueError(f"expected a string, got {_describe(raw)}")
    if isinstance(kind, type) and issubclass(kind, enum.Enum):
        for member in kind:
            if member.value == raw and isinstance(raw, str):
                return member
        choices = ", ".join(f'"{member.value}"' for member in kind)
        raise ValueError(f"expected one of {choices}, got {_describe(raw)}")
    if typing.get_origin(kind) is tuple and typing.get_args(kind)[1:] == (Ellipsis,):
        if not isinstance(raw, list):
            raise ValueError(f"expected an array, got {_describe(raw)}")
        item_kind = typing.get_args(kind)[0]
        items = []
        for index, item in enumerate(raw):
            try:
                items.append(_coerce(item, item_kind))
            except ValueError as exc:
                raise ValueError(f"item {index}: {exc}") from None
        return tuple(items)
    # A schema field whose type the TOML mapping does not cover is a bug here, not bad config.
    raise TypeError(f"no TOML form for field type {kind!r}")


def _describe(raw: object) -> str:
    """A TOML value as the operator wrote it, for "expected X, got Y" messages."""
    if isinstance(raw, bool):
        return f"a boolean ({str(raw).lower()})"
    if isinstance(raw, int):
        return f"an integer ({raw})"
    if isinstance(raw, float):
        return f"a float ({raw})"
    if isinstance(raw, str):
        return f'a string ("{raw}")' if len(raw) <= 60 else "a long string"
    if isinstance(raw, list):
        return "an array"
    if isinstance(raw, dict):
        return "a table"
    return "a date/time"


def _suggest(key: str, known: Iterable[str]) -> str:
    close = difflib.get_close_matches(key, list(known), n=1)
    return f' (did you mean "{close[0]}"?)' if close else ""
