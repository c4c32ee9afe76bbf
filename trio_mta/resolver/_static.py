"""A resolver answering from dictionaries, for tests: no sockets, no clock."""

from __future__ import annotations

from collections.abc import Iterable, Mapping

import trio

from ._types import MX, DNSError, NXDomain, normalize_name


def _norm(table: Mapping[str, Iterable[str]] | None) -> dict[str, list[str]]:
    return {normalize_name(k): list(v) for k, v in (table or {}).items()}


class StaticResolver:
    """Records by name; a name that appears in no table is NXDOMAIN, one in ``fail`` a
    temporary failure. Each lookup is counted in ``queries`` as ``(type, name)``."""

    def __init__(
        self,
        *,
        mx: Mapping[str, Iterable[tuple[int, str]]] | None = None,
        a: Mapping[str, Iterable[str]] | None = None,
        aaaa: Mapping[str, Iterable[str]] | None = None,
        txt: Mapping[str, Iterable[str]] | None = None,
        ptr: Mapping[str, Iterable[str]] | None = None,
        fail: Iterable[str] = (),
    ) -> None:
        self.mx_table = {
            normalize_name(k): [MX(p, normalize_name(e)) for p, e in v]
            for k, v in (mx or {}).items()
        }
        self.tables = {"A": _norm(a), "AAAA": _norm(aaaa), "TXT": _norm(txt), "PTR": _norm(ptr)}
        self.fail = {normalize_name(n) for n in fail}
        self.queries: list[tuple[str, str]] = []

    def _exists(self, name: str) -> bool:
        return name in self.mx_table or any(name in t for t in self.tables.values())

    async def _lookup(self, kind: str, name: str) -> str:
        await trio.lowlevel.checkpoint()
        name = normalize_name(name)
        self.queries.append((kind, name))
        if name in self.fail:
            raise DNSError(f"{kind} {name}: SERVFAIL (static)")
        if not self._exists(name):
            raise NXDomain(f"{kind} {name}: no such name")
        return name

    async def mx(self, name: str) -> list[MX]:
        key = await self._lookup("MX", name)
        return sorted(self.mx_table.get(key, []))

    async def a(self, name: str) -> list[str]:
        return list(self.tables["A"].get(await self._lookup("A", name), []))

    async def aaaa(self, name: str) -> list[str]:
        return list(self.tables["AAAA"].get(await self._lookup("AAAA", name), []))

    async def txt(self, name: str) -> list[str]:
        return list(self.tables["TXT"].get(await self._lookup("TXT", name), []))

    async def ptr(self, address: str) -> list[str]:
        return list(self.tables["PTR"].get(await self._lookup("PTR", address), []))
