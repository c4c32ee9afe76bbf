"""The hook runner: order, verdicts, the deny meta-hook, isolation and deadlines (in-process)."""

from __future__ import annotations

import threading
from collections.abc import Mapping
from pathlib import Path

import pytest
import trio
import trio.testing

from trio_mta.hooks import (
    CONT,
    ERROR_RESULT,
    TIMEOUT_RESULT,
    Action,
    HookRunner,
    PluginSet,
    Result,
    load_plugins,
)

from ._support import Calls, new_conn, one_hook, write_plugin

RECORD = """
class Plugin(Base):
    async def hook_helo(self, conn, name):
        conn.notes.setdefault("order", []).append(self.name)
"""


def load(
    plugin_dir: Path,
    names: list[str],
    configs: Mapping[str, Mapping[str, object]] | None = None,
) -> PluginSet:
    return load_plugins(names, directories=[plugin_dir], configs=configs)


async def test_plugins_run_by_priority_then_configured_order(plugin_dir: Path) -> None:
    write_plugin(plugin_dir, "a", RECORD)
    write_plugin(plugin_dir, "b", RECORD)
    write_plugin(
        plugin_dir,
        "c",
        RECORD.replace("class Plugin(Base):", "class Plugin(Base):\n    priority = -1"),
    )
    write_plugin(plugin_dir, "d", RECORD)
    runner = HookRunner(load(plugin_dir, ["a", "b", "c", "d"], {"a": {"priority": 1}}))
    conn = new_conn()
    assert await runner.run("helo", conn, "client.example") == (CONT, None)
    assert conn.notes["order"] == ["c", "b", "d", "a"]


@pytest.mark.parametrize(
    ("verdict", "action"),
    [("OK", Action.OK), ("deny('no')", Action.DENY), ("denysoft()", Action.DENYSOFT)],
)
async def test_the_first_verdict_other_than_cont_ends_the_chain(
    plugin_dir: Path, verdict: str, action: Action
) -> None:
    write_plugin(
        plugin_dir,
        "first",
        one_hook("helo", "return CONT"),
    )
    write_plugin(
        plugin_dir,
        "second",
        one_hook("helo", f"return {verdict}"),
    )
    write_plugin(plugin_dir, "third", RECORD)
    conn = new_conn()
    result, plugin = await HookRunner(load(plugin_dir, ["first", "second", "third"])).run(
        "helo", conn, "x"
    )
    assert (result.action, plugin) == (action, "second")
    assert "order" not in conn.notes


@pytest.mark.parametrize("override", [True, False])
async def test_the_deny_meta_hook_may_override_a_denial(plugin_dir: Path, override: bool) -> None:
    write_plugin(
        plugin_dir,
        "refuser",
        one_hook("mail", "return deny('go away')"),
    )
    write_plugin(
        plugin_dir,
        "judge",
        """
        class Plugin(Base):
            async def hook_deny(self, conn, denial):
                conn.notes["denial"] = denial
                return OK if self.config["override"] else CONT
        """,
    )
    write_plugin(
        plugin_dir,
        "accepter",
        one_hook("mail", "return ok('fine')"),
    )
    plugins = load(plugin_dir, ["refuser", "judge", "accepter"], {"judge": {"override": override}})
    conn = new_conn()
    result, plugin = await HookRunner(plugins).run("mail", conn, None, None)
    denial = conn.notes["denial"]
    assert (denial.hook, denial.plugin, denial.result.action) == ("mail", "refuser", Action.DENY)  # type: ignore[attr-defined]
    if override:
        assert (result.action, result.message, plugin) == (Action.OK, ("fine",), "accepter")
    else:
        assert (result.action, result.message, plugin) == (Action.DENY, ("go away",), "refuser")


async def test_skip_plugins_leaves_a_plugin_out_of_the_transaction(plugin_dir: Path) -> None:
    write_plugin(
        plugin_dir,
        "refuser",
        one_hook("data", "return deny()"),
    )
    write_plugin(
        plugin_dir,
        "accepter",
        one_hook("data", "return OK"),
    )
    runner = HookRunner(load(plugin_dir, ["refuser", "accepter"]))
    conn = new_conn(with_txn=True)
    assert (await runner.run("data", conn))[1] == "refuser"
    assert conn.transaction is not None
    conn.transaction.skip_plugins.add("refuser")
    assert await runner.run("data", conn) == (Result(Action.OK), "accepter")


@pytest.mark.parametrize(
    ("config", "expected"), [({}, ERROR_RESULT), ({"on_error": "deny"}, Result(Action.DENY))]
)
async def test_an_exception_gives_the_on_error_result(
    plugin_dir: Path, config: dict[str, object], expected: Result
) -> None:
    write_plugin(
        plugin_dir,
        "broken",
        one_hook("data", "raise RuntimeError('kaput')"),
    )
    write_plugin(
        plugin_dir,
        "after",
        one_hook("data", "return OK"),
    )
    calls = Calls()
    runner = HookRunner(load(plugin_dir, ["broken", "after"], {"broken": config}), observe=calls)
    assert await runner.run("data", new_conn()) == (expected, "broken")
    assert [c.plugin for c in calls.seen] == ["broken"]
    assert "kaput" in str(calls.seen[0].error)


async def test_a_non_result_return_is_an_error(plugin_dir: Path) -> None:
    write_plugin(
        plugin_dir,
        "odd",
        one_hook("data", "return 42"),
    )
    calls = Calls()
    runner = HookRunner(load(plugin_dir, ["odd"]), observe=calls)
    assert await runner.run("data", new_conn()) == (ERROR_RESULT, "odd")
    assert calls.seen[0].error == "returned int, not a Result"


HANG = """
class Plugin(Base):
    timeout = 10

    async def hook_mail(self, conn, sender, params):
        try:
            await trio.sleep_forever()
        finally:
            conn.notes["mail finally at"] = trio.current_time()

    async def hook_helo(self, conn, name):
        try:
            await trio.sleep_forever()
        finally:
            conn.notes["helo finally at"] = trio.current_time()
"""


async def test_a_hung_hook_is_cancelled_exactly_at_its_deadline(
    plugin_dir: Path, autojump_clock: trio.testing.MockClock
) -> None:
    write_plugin(plugin_dir, "hang", HANG)
    calls = Calls()
    runner = HookRunner(load(plugin_dir, ["hang"], {"hang": {"timeout": 7}}), observe=calls)
    conn = new_conn()
    start = trio.current_time()
    assert await runner.run("mail", conn, None, None) == (TIMEOUT_RESULT, "hang")
    assert trio.current_time() - start == 7
    assert conn.notes["mail finally at"] == start + 7  # cancelled, not abandoned
    assert calls.seen[0].timed_out


async def test_a_per_hook_timeout_overrides_the_plugin_timeout(
    plugin_dir: Path, autojump_clock: trio.testing.MockClock
) -> None:
    write_plugin(plugin_dir, "hang", HANG)
    config = {"timeout": 5, "on_timeout": "deny", "hooks": {"mail": {"timeout": 2}}}
    runner = HookRunner(load(plugin_dir, ["hang"], {"hang": config}))
    conn = new_conn()
    start = trio.current_time()
    assert await runner.run("mail", conn, None, None) == (Result(Action.DENY), "hang")
    assert await runner.run("helo", conn, "x") == (Result(Action.DENY), "hang")
    assert conn.notes["mail finally at"] == start + 2
    assert conn.notes["helo finally at"] == start + 2 + 5


async def test_a_cancel_from_outside_is_not_a_timeout(
    plugin_dir: Path, autojump_clock: trio.testing.MockClock
) -> None:
    write_plugin(plugin_dir, "hang", HANG)
    calls = Calls()
    runner = HookRunner(load(plugin_dir, ["hang"]), observe=calls)
    conn = new_conn()
    with trio.move_on_after(3) as scope:
        await runner.run("mail", conn, None, None)
    assert scope.cancelled_caught
    assert "mail finally at" in conn.notes
    assert calls.seen == []


async def test_a_sync_hook_runs_in_a_worker_thread(plugin_dir: Path) -> None:
    write_plugin(
        plugin_dir,
        "blocking",
        """
        class Plugin(Base):
            def hook_data(self, conn):
                conn.notes["thread"] = threading.get_ident()
                return OK
        """,
    )
    conn = new_conn()
    assert await HookRunner(load(plugin_dir, ["blocking"])).run("data", conn) == (
        Result(Action.OK),
        "blocking",
    )
    assert conn.notes["thread"] != threading.get_ident()


async def test_run_all_runs_every_plugin_and_ignores_results(plugin_dir: Path) -> None:
    body = """
    class Plugin(Base):
        async def hook_disconnect(self, conn):
            conn.notes.setdefault("seen", []).append(self.name)
            return deny()
    """
    write_plugin(plugin_dir, "one", body)
    write_plugin(plugin_dir, "two", body)
    conn = new_conn()
    await HookRunner(load(plugin_dir, ["one", "two"])).run_all("disconnect", conn)
    assert conn.notes["seen"] == ["one", "two"]


async def test_a_sandboxed_hook_without_a_sandbox_is_an_error(plugin_dir: Path) -> None:
    write_plugin(
        plugin_dir,
        "boxed",
        one_hook("data", "return OK", sync=True, head="sandbox = 'process'"),
    )
    assert await HookRunner(load(plugin_dir, ["boxed"])).run("data", new_conn()) == (
        ERROR_RESULT,
        "boxed",
    )
