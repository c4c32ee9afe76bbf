"""The process sandbox with real worker processes and real time."""

from __future__ import annotations

import os
from collections.abc import Callable
from pathlib import Path

import pytest
import trio

from trio_mta.config import PluginsConfig
from trio_mta.hooks import (
    CONT,
    ERROR_RESULT,
    TIMEOUT_RESULT,
    Action,
    HookRunner,
    Message,
    PluginSet,
    ProcessSandbox,
    Result,
    load_plugins,
    open_sandbox,
)
from trio_mta.protocol import Address, RcptParams

from ._support import Calls, new_conn, one_hook, write_plugin

QUICK = """
class Plugin(Base):
    sandbox = "process"

    async def hook_helo(self, conn, name):
        await trio.sleep(0)
        return ok(str(os.getpid()))
"""


def boxed(body: str, *, timeout: float = 10) -> str:
    """A sandboxed plugin whose (sync) ``hook_data`` runs ``body``."""
    return one_hook("data", body, sync=True, head=f"sandbox = 'process'\ntimeout = {timeout}")


def alive(pid: int) -> bool:
    try:
        os.kill(pid, 0)
    except ProcessLookupError:
        return False
    return True


async def eventually(predicate: Callable[[], bool], seconds: float = 5.0) -> None:
    with trio.fail_after(seconds):
        while not predicate():  # noqa: ASYNC110  # polls another process: there is no Event
            await trio.sleep(0.02)


def pid_of(result: tuple[Result, str | None]) -> int:
    assert result[0].action is Action.OK, result
    assert result[0].message is not None
    return int(result[0].message[0])


def load(plugin_dir: Path, *names: str) -> PluginSet:
    return load_plugins(list(names), directories=[plugin_dir])


@pytest.mark.parametrize("body", ["while True:\n    pass", "time.sleep(3600)"])
async def test_a_runaway_hook_is_killed_at_its_deadline_and_replaced(
    plugin_dir: Path, body: str
) -> None:
    write_plugin(plugin_dir, "runaway", boxed(body, timeout=0.5))
    write_plugin(plugin_dir, "quick", QUICK)
    calls = Calls()
    async with open_sandbox(workers=2, memory_mb=512, cpu_seconds=30) as sandbox:
        before = sandbox.worker_pids()
        runner = HookRunner(load(plugin_dir, "runaway", "quick"), sandbox=sandbox, observe=calls)
        start = trio.current_time()
        done: dict[str, tuple[tuple[Result, str | None], float]] = {}

        async def call(name: str, hook: str, *args: object) -> None:
            result = await runner.run(hook, new_conn(), *args)
            done[name] = result, trio.current_time() - start

        async with trio.open_nursery() as nursery:
            nursery.start_soon(call, "runaway", "data")
            await trio.sleep(0.1)  # the runaway has its worker: the quick call gets the other
            nursery.start_soon(call, "quick", "helo", "client.example")

        assert done["runaway"][0] == (TIMEOUT_RESULT, "runaway")
        assert 0.5 <= done["runaway"][1] < 1.2
        assert [c.timed_out for c in calls.seen if c.plugin == "runaway"] == [True]
        assert done["quick"][1] < 0.5  # finished while the runaway held the other worker
        spared = pid_of(done["quick"][0])
        [victim] = set(before) - {spared}
        await eventually(lambda: not alive(victim))
        await eventually(lambda: len(sandbox.worker_pids()) == 2)
        [fresh] = set(sandbox.worker_pids()) - set(before)
        assert alive(fresh)
        assert pid_of(await runner.run("helo", new_conn(), "x")) in {spared, fresh}


async def test_waiting_for_a_free_worker_counts_against_the_deadline(plugin_dir: Path) -> None:
    write_plugin(plugin_dir, "slow", boxed("time.sleep(0.6)\nreturn ok('slow')", timeout=5))
    write_plugin(plugin_dir, "quick", QUICK.replace("sandbox = ", "timeout = 0.2\n    sandbox = "))
    async with open_sandbox(workers=1, max_workers=1, memory_mb=512, cpu_seconds=30) as sandbox:
        [pid] = sandbox.worker_pids()
        runner = HookRunner(load(plugin_dir, "slow", "quick"), sandbox=sandbox)
        done: dict[str, tuple[Result, float]] = {}

        async def call(hook: str, *args: object) -> None:
            start = trio.current_time()
            result, _ = await runner.run(hook, new_conn(), *args)
            done[hook] = result, trio.current_time() - start

        async with trio.open_nursery() as nursery:
            nursery.start_soon(call, "data")
            await trio.sleep(0.1)
            nursery.start_soon(call, "helo", "x")
        assert done["helo"][0] == TIMEOUT_RESULT
        assert 0.2 <= done["helo"][1] < 0.4
        assert done["data"][0].message == ("slow",)  # its worker was not touched
        assert sandbox.worker_pids() == [pid]


async def test_a_memory_hog_fails_quickly(plugin_dir: Path) -> None:
    write_plugin(plugin_dir, "hog", boxed("b = []\nwhile True:\n    b.append(bytearray(10**7))"))
    write_plugin(plugin_dir, "quick", QUICK)
    calls = Calls()
    async with open_sandbox(workers=1, memory_mb=200, cpu_seconds=30) as sandbox:
        runner = HookRunner(load(plugin_dir, "hog", "quick"), sandbox=sandbox, observe=calls)
        start = trio.current_time()
        assert await runner.run("data", new_conn()) == (ERROR_RESULT, "hog")
        assert trio.current_time() - start < 3
        [call] = calls.seen
        assert not call.timed_out
        assert "MemoryError" in str(call.error)
        pid_of(await runner.run("helo", new_conn(), "x"))  # the pool still serves


async def test_a_crash_is_an_error_and_the_worker_is_replaced(plugin_dir: Path) -> None:
    write_plugin(plugin_dir, "crash", boxed("os._exit(3)"))
    write_plugin(plugin_dir, "quick", QUICK)
    calls = Calls()
    async with open_sandbox(workers=1, memory_mb=512, cpu_seconds=30) as sandbox:
        [old] = sandbox.worker_pids()
        runner = HookRunner(load(plugin_dir, "crash", "quick"), sandbox=sandbox, observe=calls)
        assert await runner.run("data", new_conn()) == (ERROR_RESULT, "crash")
        assert "exited with status 3" in str(calls.seen[0].error)
        new = pid_of(await runner.run("helo", new_conn(), "x"))
        assert new != old
        assert not alive(old)


async def test_the_cpu_limit_ends_a_spinning_worker(plugin_dir: Path) -> None:
    # The budget is 1-2 s of CPU (whole seconds, counted from what the worker used so far);
    # the deadline is far enough that only the CPU limit can end the call.
    write_plugin(plugin_dir, "spin", boxed("while True:\n    pass", timeout=30))
    calls = Calls()
    async with open_sandbox(workers=1, memory_mb=512, cpu_seconds=1) as sandbox:
        runner = HookRunner(load(plugin_dir, "spin"), sandbox=sandbox, observe=calls)
        assert await runner.run("data", new_conn()) == (ERROR_RESULT, "spin")
        [call] = calls.seen
        assert "killed by SIGXCPU" in str(call.error)
        assert not call.timed_out


EDITS = """
def hook_rcpt(self, conn, rcpt, params):
    txn = conn.transaction
    assert isinstance(rcpt, Address) and isinstance(txn.message, hooks.Message)
    assert "opaque" not in conn.notes
    conn.notes["seen"] = {"rcpt": str(rcpt), "notify": list(params.notify), "helo": conn.helo}
    del conn.notes["dropped"]
    conn.relaying = True
    txn.notes["subject"] = txn.message.headers["Subject"]
    txn.notes["message"] = txn.message.as_bytes().decode()
    txn.notes["envelope"] = [str(txn.sender)] + [str(a) for a, _ in txn.recipients]
    txn.notes["list"].append(3)
    txn.add_header("X-Sandboxed", "yes")
    txn.remove_header("X-Spam-Flag")
    return ok("checked")

def hook_capabilities(self, conn, caps):
    caps.append("XSANDBOX")
"""


async def test_edits_made_in_the_worker_appear_in_the_parent(plugin_dir: Path) -> None:
    source = "class Plugin(Base):\n    sandbox = 'process'\n"
    write_plugin(plugin_dir, "editor", source + "\n".join("    " + x for x in EDITS.splitlines()))
    opaque = object()
    conn = new_conn(with_txn=True)
    conn.helo = "client.example"
    conn.notes.update({"kept": 1, "dropped": 2, "opaque": opaque})
    txn = conn.transaction
    assert txn is not None
    bob = Address("bob", "example.test")
    txn.recipients.append((bob, RcptParams(notify=("NEVER",))))
    txn.notes["list"] = [1, 2]
    txn.message = Message()
    message = b"Subject: hi\r\nX-Spam-Flag: YES\r\n\r\nbody\r\n"
    txn.message.write(message)
    async with open_sandbox(workers=1, memory_mb=512, cpu_seconds=30) as sandbox:
        runner = HookRunner(load(plugin_dir, "editor"), sandbox=sandbox)
        result = await runner.run("rcpt", conn, bob, RcptParams(notify=("SUCCESS", "FAILURE")))
        caps: list[str] = ["PIPELINING"]
        await runner.run_all("capabilities", conn, caps)
        pids = sandbox.worker_pids()
    assert result == (Result(Action.OK, "checked"), "editor")
    assert conn.notes == {
        "kept": 1,
        "opaque": opaque,
        "seen": {
            "rcpt": "bob@example.test",
            "notify": ["SUCCESS", "FAILURE"],
            "helo": "client.example",
        },
    }
    assert conn.relaying
    assert txn.notes == {
        "list": [1, 2, 3],
        "subject": "hi",
        "message": message.decode(),
        "envelope": ["alice@example.org", "bob@example.test"],
    }
    assert txn.message_bytes() == b"X-Sandboxed: yes\r\nSubject: hi\r\n\r\nbody\r\n"
    assert caps == ["PIPELINING", "XSANDBOX"]
    assert pids
    assert not any(alive(pid) for pid in pids)  # the sandbox's exit killed them


STATEFUL = """
class Plugin(Base):
    sandbox = "process"

    async def startup(self):
        self.calls = 0

    async def hook_helo(self, conn, name):
        await trio.sleep(0)
        self.calls += 1
        return ok(f"{os.getpid()} {self.calls}")

    def hook_data(self, conn):
        conn.notes["before the error"] = True
        raise LookupError("no such thing")

    def hook_mail(self, conn, sender, params):
        conn.notes["bad"] = {1, 2}
"""


async def test_errors_in_the_worker_keep_the_worker_and_its_plugin_state(plugin_dir: Path) -> None:
    write_plugin(plugin_dir, "stateful", STATEFUL)
    calls = Calls()
    async with open_sandbox(workers=1, spares=0, memory_mb=512, cpu_seconds=30) as sandbox:
        [pid] = sandbox.worker_pids()
        runner = HookRunner(load(plugin_dir, "stateful"), sandbox=sandbox, observe=calls)
        conn = new_conn()
        assert (await runner.run("helo", conn, "x"))[0].message == (f"{pid} 1",)
        assert await runner.run("data", conn) == (ERROR_RESULT, "stateful")
        assert conn.notes == {"before the error": True}  # edits before the error still land
        assert "LookupError: no such thing" in str(calls.seen[-1].error)
        assert await runner.run("mail", conn, None, None) == (ERROR_RESULT, "stateful")
        assert "not JSON" in str(calls.seen[-1].error)
        assert (await runner.run("helo", conn, "x"))[0].message == (f"{pid} 2",)
        assert sandbox.worker_pids() == [pid]
    assert await runner.run("helo", conn, "x") == (ERROR_RESULT, "stateful")  # not running


async def test_a_plugin_that_returns_nothing_continues(plugin_dir: Path) -> None:
    write_plugin(plugin_dir, "silent", boxed("conn.notes['ran'] = True"))
    async with open_sandbox(workers=1, memory_mb=512, cpu_seconds=30) as sandbox:
        conn = new_conn()
        assert await HookRunner(load(plugin_dir, "silent"), sandbox=sandbox).run("data", conn) == (
            CONT,
            None,
        )
        assert conn.notes == {"ran": True}


def test_the_pool_is_sized_from_the_plugins_config() -> None:
    config = PluginsConfig(
        sandbox_workers=3, sandbox_workers_max=5, sandbox_memory_mb=256, sandbox_cpu_seconds=7
    )
    sandbox = ProcessSandbox.from_config(config)
    assert (sandbox.size, sandbox.max_workers) == (3, 5)
    assert (sandbox.memory_mb, sandbox.cpu_seconds) == (256, 7)
    assert sandbox.worker_pids() == []  # nothing runs before serve()
