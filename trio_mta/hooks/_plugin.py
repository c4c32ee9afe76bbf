"""The base class of every plugin, built-in or the operator's.

A plugin is a module with a ``Plugin`` class (subclassing this one) whose methods named
``hook_<hook>`` are registered for that hook::

    from trio_mta.hooks import Plugin, deny, CONT

    class Plugin(Plugin):
        async def hook_mail(self, conn, sender, params):
            if sender is not None and sender.domain_lower == "spam.example":
                return deny("No thanks")
            return CONT

A hook method returns a ``Result`` (or None, meaning CONT). ``@hook(...)`` on a method sets
per-hook options; class attributes set the plugin's defaults; the plugin's config file
(``timeout``, ``on_timeout``, ``on_error``, ``sandbox``, ``priority``, ``breaker`` and
``[hooks.<name>]`` tables with the same keys) overrides both.
"""

from __future__ import annotations

import logging
from collections.abc import Callable, Mapping
from pathlib import Path
from typing import TypeVar

import attrs

from ..resolver import Resolver
from ._result import ERROR_RESULT, TIMEOUT_RESULT, Result

F = TypeVar("F", bound=Callable[..., object])

HOOK_PREFIX = "hook_"


@attrs.frozen
class HookOptions:
    priority: int | None = None
    timeout: float | None = None
    sandbox: str | None = None
    on_timeout: Result | None = None
    on_error: Result | None = None
    breaker: bool | None = None


def hook(
    *,
    priority: int | None = None,
    timeout: float | None = None,
    sandbox: str | None = None,
    on_timeout: Result | None = None,
    on_error: Result | None = None,
    breaker: bool | None = None,
) -> Callable[[F], F]:
    """Per-hook options for a ``hook_<name>`` method."""
    options = HookOptions(priority, timeout, sandbox, on_timeout, on_error, breaker)

    def mark(fn: F) -> F:
        fn.__trio_mta_hook__ = options  # type: ignore[attr-defined]  # a marker attribute
        return fn

    return mark


@attrs.frozen
class PluginEnv:
    """What the server tells every plugin about where it runs."""

    hostname: str = "localhost"
    var_dir: Path = Path("var")
    local_domains: tuple[str, ...] = ("localhost",)
    config_dir: Path | None = None
    # The server's DNS resolver ([resolver] nameservers); None: a plugin that needs DNS makes
    # its own (hooks.DNSResolver() reads /etc/resolv.conf).
    resolver: Resolver | None = attrs.field(default=None, eq=False)


class Plugin:
    """Subclass as ``class Plugin(trio_mta.hooks.Plugin)`` in a plugin module."""

    timeout: float | None = None  # None: the [plugins] timeout from the main config
    on_timeout: Result = TIMEOUT_RESULT
    on_error: Result = ERROR_RESULT
    sandbox: str | None = None  # "process" to run every hook in a worker process
    priority: int = 0  # lower runs earlier; ties keep the configured order
    breaker: bool = True  # False: no circuit breaker (``breaker = false`` in its config)
    # SASL mechanisms this plugin's hook_auth can verify. CRAM-MD5 needs the plaintext secret
    # (or an equivalent); the server offers a mechanism only if every auth plugin lists it.
    auth_mechanisms: frozenset[str] = frozenset({"PLAIN", "LOGIN"})

    def __init__(
        self,
        name: str,
        config: Mapping[str, object],
        env: PluginEnv,
        log: logging.Logger,
        *,
        timeout: float | None = None,
    ) -> None:
        if timeout is not None:
            self.timeout = timeout  # the plugin-level deadline in force, for setup() to see
        self.name = name
        self.config = config
        self.env = env
        self.log = log
        self.setup()

    def setup(self) -> None:
        """Synchronous set-up from ``self.config``; raise ``ValueError`` for a bad config."""

    async def startup(self) -> None:
        """Asynchronous initialisation; finishes before the listeners accept."""

    async def shutdown(self) -> None:
        """Release resources; called on reload (for the old set) and at exit."""
