"""Loading plugins by name and building the per-hook tables.

Plugins are loaded from files, never by ``import plugins.x``: the user's plugin directories are
searched first, then the built-in directory. Each load executes the file afresh under a unique
module name, which is what makes a SIGHUP reload re-import changed code while connections in
flight keep the module objects they started with.
"""

from __future__ import annotations

import dis
import functools
import importlib.util
import inspect
import itertools
import logging
import sys
from collections.abc import Callable, Mapping, Sequence
from pathlib import Path

import attrs
import trio

from ._plugin import HOOK_PREFIX, HookOptions, Plugin, PluginEnv
from ._result import Action, Result
from ._spec import HOOKS

log = logging.getLogger("trio_mta.plugins")

_generation = itertools.count(1)

_ACTIONS = {a.value: a for a in Action}
RUNNER_KEYS = frozenset(
    {"timeout", "on_timeout", "on_error", "sandbox", "priority", "breaker", "hooks"}
)


class PluginLoadError(Exception):
    """A plugin could not be found, imported or configured. The message names it."""


@attrs.frozen
class HookEntry:
    plugin: Plugin
    hook: str
    fn: Callable[..., object]
    timeout: float
    on_timeout: Result
    on_error: Result
    priority: int
    order: int
    sandbox: bool
    is_async: bool
    # False when the call provably finishes in one step (a coroutine with no await in its
    # code, run in-process): such calls need no deadline and no cancel scope.
    may_block: bool = True
    # The circuit breaker (hooks._health); ``breaker = false`` in the plugin's config.
    breaker: bool = True


@attrs.frozen(slots=False)  # slots=False: cached_property needs an instance __dict__
class PluginSet:
    """One generation of loaded plugins: what a connection runs with from start to end."""

    plugins: tuple[Plugin, ...]
    table: Mapping[str, tuple[HookEntry, ...]]
    generation: int
    sources: Mapping[str, Path] = attrs.field(factory=dict)
    # Each plugin's startup() and shutdown() must finish within this ([plugins]
    # lifecycle_timeout): a hung one is cancelled, so a start or reload cannot hang forever.
    lifecycle_timeout: float = 30.0

    @functools.cached_property
    def blocking(self) -> Mapping[str, bool]:
        """Per hook: whether some entry may block (then its chain needs a cancel scope)."""
        return {hook: any(e.may_block for e in entries) for hook, entries in self.table.items()}

    def entries(self, hook: str) -> tuple[HookEntry, ...]:
        return self.table.get(hook, ())

    async def startup(self) -> None:
        """Each plugin's ``startup()``, in order, each under ``lifecycle_timeout``.

        Raises:
            PluginLoadError: a plugin's start-up failed or did not finish in time (the message
                names it and why).
        """
        limit = self.lifecycle_timeout
        for plugin in self.plugins:
            try:
                with trio.move_on_after(limit) as scope:
                    await plugin.startup()
            except Exception as exc:
                raise PluginLoadError(f"plugin {plugin.name!r} failed to start: {exc}") from exc
            if scope.cancelled_caught:
                raise PluginLoadError(
                    f"plugin {plugin.name!r} failed to start: startup() did not finish within "
                    f"{limit:g}s ([plugins] lifecycle_timeout)"
                )

    async def shutdown(self) -> None:
        """Each plugin's ``shutdown()``, each under ``lifecycle_timeout`` (a hung one is
        cancelled and logged, and the others still get theirs)."""
        limit = self.lifecycle_timeout
        for plugin in self.plugins:
            try:
                with trio.move_on_after(limit) as scope:
                    await plugin.shutdown()
            except Exception:
                log.exception("plugin %s failed to shut down", plugin.name)
                continue
            if scope.cancelled_caught:
                log.error(
                    "plugin %s: shutdown() did not finish within %gs ([plugins] "
                    "lifecycle_timeout); cancelled",
                    plugin.name,
                    limit,
                )


# Opcodes through which a coroutine can give control back to the event loop.
_SUSPENDING = frozenset(
    {"GET_AWAITABLE", "GET_AITER", "GET_ANEXT", "BEFORE_ASYNC_WITH", "YIELD_VALUE", "SEND"}
)


def can_suspend(fn: Callable[..., object]) -> bool:
    """Whether the coroutine function's own code contains a suspension point (an ``await``,
    ``async for`` or ``async with``). Without one it cannot block, whatever it calls."""
    code = getattr(inspect.unwrap(getattr(fn, "__func__", fn)), "__code__", None)
    if code is None:
        return True
    return any(ins.opname in _SUSPENDING for ins in dis.get_instructions(code))


def builtin_plugin_dir() -> Path:
    here = Path(__file__).resolve().parent.parent  # .../trio_mta
    for candidate in (here.parent / "plugins", here / "builtin_plugins"):
        if candidate.is_dir():
            return candidate
    return here.parent / "plugins"


def find_plugin(name: str, directories: Sequence[Path]) -> Path:
    if not name.isidentifier():
        raise PluginLoadError(f"plugin {name!r}: not a valid plugin name")
    for directory in (*directories, builtin_plugin_dir()):
        path = directory / f"{name}.py"
        if path.is_file():
            return path
    searched = ", ".join(str(d) for d in (*directories, builtin_plugin_dir()))
    raise PluginLoadError(f"plugin {name!r}: no {name}.py in {searched}")


# The built-in plugins' package, whichever directory holds them: in a wheel
# trio_mta/builtin_plugins, in a source tree the repository's plugins/ (registered under this
# name, never as the top-level ``plugins``, which is the operator's to use). Built-in plugins
# share helper modules through it (``from ._rate import RateTable``).
BUILTIN_PACKAGE = "trio_mta.builtin_plugins"


def _builtin_package() -> str:
    if BUILTIN_PACKAGE not in sys.modules:
        directory = builtin_plugin_dir()
        spec = importlib.util.spec_from_file_location(
            BUILTIN_PACKAGE, directory / "__init__.py", submodule_search_locations=[str(directory)]
        )
        if spec is None or spec.loader is None:
            raise PluginLoadError(f"the built-in plugins cannot be loaded from {directory}")
        package = importlib.util.module_from_spec(spec)
        sys.modules[BUILTIN_PACKAGE] = package
        spec.loader.exec_module(package)
    return BUILTIN_PACKAGE


def import_plugin_module(name: str, path: Path, generation: int) -> type[Plugin]:
    module_name = f"trio_mta_plugin_{name}_g{generation}"
    if path.parent.resolve() == builtin_plugin_dir().resolve():
        # A module of the built-in package, so that its relative imports resolve.
        module_name = f"{_builtin_package()}.{name}_g{generation}"
    spec = importlib.util.spec_from_file_location(module_name, path)
    if spec is None or spec.loader is None:
        raise PluginLoadError(f"plugin {name!r}: cannot load {path}")
    module = importlib.util.module_from_spec(spec)
    sys.modules[module_name] = module
    try:
        spec.loader.exec_module(module)
    except Exception as exc:
        del sys.modules[module_name]
        raise PluginLoadError(f"plugin {name!r}: import failed: {exc!r}") from exc
    cls = getattr(module, "Plugin", None)
    if not (isinstance(cls, type) and issubclass(cls, Plugin)):
        raise PluginLoadError(f"plugin {name!r}: {path} has no Plugin class")
    return cls


def _action_result(value: object, where: str) -> Result:
    if isinstance(value, str) and value.lower() in _ACTIONS:
        return Result(_ACTIONS[value.lower()])
    raise PluginLoadError(f"{where}: must be one of {', '.join(_ACTIONS)}")


def _options_from_config(
    table: Mapping[str, object], where: str, *, strict: bool = True
) -> HookOptions:
    # A plugin's own table also holds the plugin's settings (``host_list``…); a
    # ``[hooks.<name>]`` table holds only the runner's keys.
    unknown = set(table) - RUNNER_KEYS
    if strict and unknown:
        raise PluginLoadError(f"{where}: unknown keys {sorted(unknown)}")
    timeout = table.get("timeout")
    if timeout is not None and (
        isinstance(timeout, bool) or not isinstance(timeout, int | float) or timeout <= 0
    ):
        raise PluginLoadError(f"{where}.timeout: must be a positive number of seconds")
    sandbox = table.get("sandbox")
    if sandbox not in (None, "process", "none"):
        raise PluginLoadError(f'{where}.sandbox: must be "process" or "none"')
    priority = table.get("priority")
    if priority is not None and (isinstance(priority, bool) or not isinstance(priority, int)):
        raise PluginLoadError(f"{where}.priority: must be an integer")
    breaker = table.get("breaker")
    if breaker is not None and not isinstance(breaker, bool):
        raise PluginLoadError(f"{where}.breaker: must be true or false")
    on_timeout = table.get("on_timeout")
    on_error = table.get("on_error")
    return HookOptions(
        priority=priority,
        timeout=float(timeout) if timeout is not None else None,
        sandbox=sandbox if isinstance(sandbox, str) else None,
        on_timeout=_action_result(on_timeout, f"{where}.on_timeout") if on_timeout else None,
        on_error=_action_result(on_error, f"{where}.on_error") if on_error else None,
        breaker=breaker,
    )


def _pick(*values: object) -> object:
    return next((v for v in values if v is not None), None)


def load_plugins(
    names: Sequence[str],
    *,
    directories: Sequence[Path] = (),
    configs: Mapping[str, Mapping[str, object]] | None = None,
    default_timeout: float = 30.0,
    env: PluginEnv | None = None,
    lifecycle_timeout: float = 30.0,
) -> PluginSet:
    """Import, configure and register ``names`` in order.

    Raises:
        PluginLoadError: for the first plugin that is missing, fails to import or to configure.
    """
    configs = configs or {}
    env = env or PluginEnv()
    generation = next(_generation)
    plugins: list[Plugin] = []
    sources: dict[str, Path] = {}
    entries: dict[str, list[HookEntry]] = {}
    order = itertools.count()
    if len(set(names)) != len(names):
        raise PluginLoadError("a plugin is listed twice in [plugins] order")
    for name in names:
        path = find_plugin(name, directories)
        cls = import_plugin_module(name, path, generation)
        config = dict(configs.get(name, {}))
        plugin_opts = _options_from_config(config, f"plugin {name}", strict=False)
        hook_tables = config.get("hooks", {})
        if not isinstance(hook_tables, Mapping):
            raise PluginLoadError(f"plugin {name}.hooks: must be a table")
        try:
            # The runner's keys are the runner's: the plugin sees only its own settings.
            own = {k: v for k, v in config.items() if k not in RUNNER_KEYS}
            plugin = cls(
                name,
                own,
                env,
                logging.getLogger(f"trio_mta.plugin.{name}"),
                timeout=plugin_opts.timeout or cls.timeout or default_timeout,
            )
        except Exception as exc:
            raise PluginLoadError(f"plugin {name!r}: configuration refused: {exc}") from exc
        plugins.append(plugin)
        sources[name] = path
        for attr in dir(cls):
            if not attr.startswith(HOOK_PREFIX):
                continue
            hook_name = attr[len(HOOK_PREFIX) :]
            if hook_name not in HOOKS:
                raise PluginLoadError(f"plugin {name!r}: {attr}: no such hook {hook_name!r}")
            fn = getattr(plugin, attr)
            marked: HookOptions = getattr(fn, "__trio_mta_hook__", HookOptions())
            per_hook = hook_tables.get(hook_name, {})
            if not isinstance(per_hook, Mapping):
                raise PluginLoadError(f"plugin {name}.hooks.{hook_name}: must be a table")
            hook_opts = _options_from_config(per_hook, f"plugin {name}.hooks.{hook_name}")
            timeout = _pick(hook_opts.timeout, marked.timeout, plugin_opts.timeout, cls.timeout)
            sandbox = _pick(hook_opts.sandbox, marked.sandbox, plugin_opts.sandbox, cls.sandbox)
            priority = _pick(
                hook_opts.priority, marked.priority, plugin_opts.priority, cls.priority
            )
            is_async = inspect.iscoroutinefunction(fn)
            breaker = _pick(hook_opts.breaker, marked.breaker, plugin_opts.breaker, cls.breaker)
            entry = HookEntry(
                plugin=plugin,
                hook=hook_name,
                fn=fn,
                timeout=float(timeout) if isinstance(timeout, int | float) else default_timeout,
                on_timeout=_pick(  # type: ignore[arg-type]  # always a Result: class default
                    hook_opts.on_timeout, marked.on_timeout, plugin_opts.on_timeout, cls.on_timeout
                ),
                on_error=_pick(  # type: ignore[arg-type]  # always a Result: class default
                    hook_opts.on_error, marked.on_error, plugin_opts.on_error, cls.on_error
                ),
                priority=priority if isinstance(priority, int) else 0,
                order=next(order),
                sandbox=sandbox == "process",
                is_async=is_async,
                may_block=sandbox == "process" or not is_async or can_suspend(fn),
                breaker=breaker is not False,
            )
            if not is_async and not entry.sandbox:
                log.info("plugin %s: %s is synchronous: it runs in a worker thread", name, attr)
            entries.setdefault(hook_name, []).append(entry)
    table = {
        hook_name: tuple(sorted(items, key=lambda e: (e.priority, e.order)))
        for hook_name, items in entries.items()
    }
    return PluginSet(tuple(plugins), table, generation, sources, lifecycle_timeout)
