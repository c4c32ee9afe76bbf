"""Accept and drop every message (for benchmarks, tests, and traps).

Config: ``only_with_note`` (default false): when true, discard only transactions whose notes
have ``discard`` set by another plugin, and give no opinion otherwise (Haraka's queue/discard).
"""

from __future__ import annotations

from trio_mta import hooks


class Plugin(hooks.Plugin):
    def setup(self) -> None:
        only = self.config.get("only_with_note", False)
        if not isinstance(only, bool):
            raise ValueError("only_with_note must be true or false")
        self.only_with_note = only

    async def hook_queue(self, conn: hooks.Connection) -> hooks.Result:
        txn = conn.transaction
        assert txn is not None
        if self.only_with_note and not txn.notes.get("discard"):
            return hooks.CONT
        return hooks.ok(f"Message accepted as {txn.id}")

    async def hook_queue_outbound(self, conn: hooks.Connection) -> hooks.Result:
        return await self.hook_queue(conn)
