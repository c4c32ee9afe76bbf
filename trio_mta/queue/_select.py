"""Which queue entries a ``trio-mta queue`` action applies to: ids, ``ALL`` or filters.

The same selection runs in the daemon (through the control socket) and on a stopped spool, so it
travels as the plain JSON arguments of a request (``from_args``). Filters combine with AND; ids
given with filters must also match them. ``--from``/``--to`` take an address (case-insensitive)
or ``@domain``; ``--domain`` is a recipient domain still pending; ``--older-than`` counts from
the arrival. An empty selection is refused rather than read as "everything" (postsuper's ``ALL``
must be said).
"""

from __future__ import annotations

import re
from collections.abc import Iterable, Mapping
from typing import Any

import attrs

from ._records import Envelope

ALL = "ALL"
_UNITS = {"s": 1, "m": 60, "h": 3600, "d": 86400, "w": 7 * 86400}
_DURATION = re.compile(r"^\s*(\d+(?:\.\d+)?)\s*([smhdw]?)\s*$")


def parse_duration(text: str) -> float:
    """``90``, ``90s``, ``15m``, ``4h``, ``2d``, ``1w`` -> seconds.

    Raises:
        ValueError: not such a duration.
    """
    match = _DURATION.match(text.lower())
    if match is None:
        raise ValueError(f"bad duration {text!r} (e.g. 90s, 15m, 4h, 2d)")
    return float(match.group(1)) * _UNITS[match.group(2) or "s"]


def _address_match(pattern: str, address: str | None) -> bool:
    address = (address or "").lower()
    pattern = pattern.lower()
    if pattern.startswith("@"):
        return address.rpartition("@")[2] == pattern[1:]
    return address == pattern


@attrs.frozen
class Selection:
    ids: tuple[str, ...] = ()
    all: bool = False
    domain: str | None = None
    sender: str | None = None  # "" selects the null sender <>
    recipient: str | None = None
    older_than: float | None = None  # seconds since arrival

    @property
    def filtered(self) -> bool:
        return any(
            f is not None for f in (self.domain, self.sender, self.recipient, self.older_than)
        )

    @property
    def empty(self) -> bool:
        return not self.ids and not self.all and not self.filtered

    def check(self) -> None:
        """Raises ValueError: nothing was selected (an action on it would be a mistake)."""
        if self.empty:
            raise ValueError(
                "select messages: queue ids, ALL, or --domain/--from/--to/--older-than"
            )

    def matches(self, env: Envelope, now: float) -> bool:
        if self.ids and env.id not in self.ids:
            return False
        if self.domain is not None:
            domain = self.domain.lower().lstrip("@")
            if not any(r.domain == domain for r in env.pending):
                return False
        if self.sender is not None:
            if self.sender in ("", "<>"):
                if env.sender is not None:
                    return False
            elif not _address_match(self.sender, env.sender):
                return False
        if self.recipient is not None and not any(
            _address_match(self.recipient, r.address) for r in env.pending
        ):
            return False
        return self.older_than is None or now - env.created >= self.older_than

    def pick(self, envelopes: Iterable[Envelope], now: float) -> list[Envelope]:
        return [env for env in envelopes if self.matches(env, now)]

    @classmethod
    def from_args(cls, args: Mapping[str, Any]) -> Selection:
        """From a control request's arguments (``id`` is one of ``ids``).

        Raises:
            ValueError: an argument of the wrong type.
        """
        ids = list(args.get("ids") or [])
        if args.get("id") is not None:
            ids.append(args["id"])
        if not all(isinstance(i, str) for i in ids):
            raise ValueError("ids must be strings")
        if ALL in ids:
            ids.remove(ALL)
            everything = True
        else:
            everything = bool(args.get("all", False))
        for key in ("domain", "sender", "recipient"):
            if args.get(key) is not None and not isinstance(args[key], str):
                raise ValueError(f"{key} must be a string")
        older = args.get("older_than")
        if older is not None:
            older = parse_duration(older) if isinstance(older, str) else float(older)
        return cls(
            ids=tuple(ids),
            all=everything,
            domain=args.get("domain"),
            sender=args.get("sender"),
            recipient=args.get("recipient"),
            older_than=older,
        )
