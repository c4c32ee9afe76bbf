"""The queue's commands on the control socket (``queue.list`` ... ``queue.flush``).

They act on the running service at once: a held entry leaves the scheduler (an attempt already
under way finishes, as in Postfix: cutting it could deliver twice), a released or flushed one is
due now, a deleted one is removed (after its running attempt, if any). Every action takes a
``Selection`` (ids, ``all``, filters) and answers the ids it acted on.
"""

from __future__ import annotations

from typing import TYPE_CHECKING, Any

import attrs
import trio

from ..control import Handler
from ._select import Selection
from ._views import envelope_view, show_view

if TYPE_CHECKING:
    from ._service import QueueService


class QueueCommands:
    def __init__(self, service: QueueService) -> None:
        self.service = service

    def handlers(self) -> dict[str, Handler]:
        return {
            "queue.list": self.list,
            "queue.show": self.show,
            "queue.hold": self.hold,
            "queue.release": self.release,
            "queue.delete": self.delete,
            "queue.flush": self.flush,
        }

    def _select(
        self, args: dict[str, Any], *, default_all: bool = False
    ) -> tuple[list[str], list[str]]:
        """The ids selected, and the ids asked for that are not in the queue."""
        selection = Selection.from_args(args)
        if selection.empty and default_all:
            selection = attrs.evolve(selection, all=True)
        selection.check()
        now = self.service.now()
        picked = [e.id for e in selection.pick(self.service.envelopes.values(), now)]
        missing = [i for i in selection.ids if i not in self.service.envelopes]
        if missing and not picked:
            raise LookupError(f"no message {', '.join(missing)}")
        return picked, missing

    async def list(self, args: dict[str, Any]) -> list[dict[str, Any]]:
        selection = Selection.from_args(args)
        now = self.service.now()
        envelopes = self.service.envelopes.values()
        if not selection.empty:
            envelopes = selection.pick(envelopes, now)  # type: ignore[assignment]
        return [envelope_view(e, now) for e in sorted(envelopes, key=lambda e: e.created)]

    async def show(self, args: dict[str, Any]) -> dict[str, Any]:
        id = args.get("id")
        if not isinstance(id, str):
            raise ValueError('a queue id ("id") is needed')
        env = self.service.envelopes.get(id)
        if env is None:
            raise LookupError(f"no message {id}")
        spool, now, body = self.service.spool, self.service.now(), bool(args.get("body"))
        return await trio.to_thread.run_sync(lambda: show_view(spool, env, now, body=body))

    async def hold(self, args: dict[str, Any]) -> dict[str, Any]:
        picked, missing = self._select(args)
        ids = await self.service.hold_ids(picked, held=True)
        return _answer("held", ids, missing)

    async def release(self, args: dict[str, Any]) -> dict[str, Any]:
        picked, missing = self._select(args)
        ids = await self.service.hold_ids(picked, held=False)
        return _answer("released", ids, missing)

    async def delete(self, args: dict[str, Any]) -> dict[str, Any]:
        picked, missing = self._select(args)
        ids = await self.service.delete_ids(picked)
        return _answer("deleted", ids, missing)

    async def flush(self, args: dict[str, Any]) -> dict[str, Any]:
        picked, missing = self._select(args, default_all=True)
        return _answer("flushed", self.service.flush_ids(picked), missing)


def _answer(action: str, ids: list[str], missing: list[str]) -> dict[str, Any]:
    # "missing" only when some are: the usual answer stays {"action": ..., "ids": [...]}.
    return {"action": action, "ids": ids} | ({"missing": missing} if missing else {})
