"""What a reload changes: every setting that differs between two configurations, sorted into
what SIGHUP applies and what needs a restart, so that no change is silently ignored.

Settings are named as an operator writes them: ``[limits] max_connections``, ``[[listener]]
'submission'``, ``[[route]] '*'``, ``plugins/greylist.toml``.
"""

from __future__ import annotations

from collections.abc import Collection, Sequence

import attrs

from ._schema import Config, ListenerConfig

# Applied by a SIGHUP (app._reload): the plugin set and its settings, the certificates, the level.
RELOADABLE = frozenset(
    {
        "plugins.order",
        "plugins.directories",
        "plugins.timeout",
        "plugins.lifecycle_timeout",
        "tls.cert",
        "tls.key",
        "tls.cert_dir",
        "tls.min_version",
        "tls.ciphers",
        "tls.generate_self_signed",
        "log.level",
    }
)
_NOT_SETTINGS = frozenset({"config_dir"})


@attrs.frozen
class ConfigChanges:
    applied: tuple[str, ...] = ()  # a reload puts these in force
    restart: tuple[str, ...] = ()  # these differ from the running daemon until it restarts

    @property
    def empty(self) -> bool:
        return not self.applied and not self.restart


def _listener_names(items: Sequence[ListenerConfig]) -> dict[str, ListenerConfig]:
    return {item.name: item for item in items}


def _named_changes(kind: str, old: dict[str, object], new: dict[str, object]) -> list[str]:
    names = sorted(set(old) | set(new))
    return [f"[[{kind}]] {name!r}" for name in names if old.get(name) != new.get(name)]


def _section_changes(section: str, old: object, new: object) -> list[str]:
    if not attrs.has(type(old)):
        return [] if old == new else [f"[{section}]"]
    return [
        f"{section}.{name}"
        for name in attrs.fields_dict(type(old))  # type: ignore[arg-type]  # attrs.has above
        if getattr(old, name) != getattr(new, name)
    ]


def _label(key: str) -> str:
    section, _, name = key.partition(".")
    return f"[{section}] {name}" if name else key


def compare_configs(old: Config, new: Config, *, pinned: Collection[str] = ()) -> ConfigChanges:
    """The settings in which ``new`` differs from ``old``.

    ``pinned``: fields given on the command line (``"listeners"``, ``"server.var_dir"``): the
    file's value does not matter while the command line's is in force.
    """
    applied: list[str] = []
    restart: list[str] = []
    for field in attrs.fields(Config):
        name = field.name
        if name in _NOT_SETTINGS or name in pinned:
            continue
        before, after = getattr(old, name), getattr(new, name)
        if before == after:
            continue
        if name == "listeners":
            restart += _named_changes(
                "listener", dict(_listener_names(before)), dict(_listener_names(after))
            )
        elif name == "routes":
            restart += _named_changes(
                "route", {r.domain: r for r in before}, {r.domain: r for r in after}
            )
        elif name == "plugin_configs":
            names = sorted(set(before) | set(after))
            applied += [f"plugins/{n}.toml" for n in names if before.get(n) != after.get(n)]
        else:
            for key in _section_changes(name, before, after):
                if key in pinned:
                    continue
                (applied if key in RELOADABLE else restart).append(_label(key))
    if old.tls.enabled != new.tls.enabled:  # certificates reload; TLS on/off does not
        applied = [key for key in applied if not key.startswith("[tls]")]
        restart.append("[tls] (TLS turned on or off)")
    return ConfigChanges(tuple(applied), tuple(restart))
