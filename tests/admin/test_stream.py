"""/events over a real websocket: the exact sequence of a scripted session, replay, filters,
plugin detail only on demand, and a watcher that never reads."""

from __future__ import annotations

import json
import time
from collections.abc import Iterator
from pathlib import Path

import pytest
import trio
import trio_websocket

from tests.helpers.smtp import LineClient
from trio_mta.events import EventBus

from .kit import (
    MESSAGE,
    WATCHER_PROCESS,
    Event,
    admin_config,
    eventually,
    running,
    stalled_watcher,
    types,
    watching,
)

CAP = 20  # seconds, per test


@pytest.fixture(autouse=True, params=[True, False], ids=["watcher-process", "in-daemon"])
def where_watchers_are_served(request: pytest.FixtureRequest) -> Iterator[None]:
    """Every test here runs with watchers in the watcher process and in the daemon itself."""
    WATCHER_PROCESS["on"] = request.param
    yield
    WATCHER_PROCESS["on"] = True


def fields(event: Event, *names: str) -> tuple[object, ...]:
    return (event["type"], *(event.get(name) for name in names))


async def test_a_watcher_sees_the_exact_event_sequence_of_a_scripted_session(
    tmp_path: Path,
) -> None:
    with trio.fail_after(CAP):
        async with running(admin_config(tmp_path / "var")) as d, watching(d.url()) as w:
            client = LineClient(await trio.open_tcp_stream(d.smtp.host, d.smtp.port))
            await client.expect(220)
            await client.command("EHLO client.example", 250)
            await client.command("MAIL FROM:<alice@example.org>", 250)
            await client.command("RCPT TO:<bob@example.test>", 250)
            await client.command("RCPT TO:<eve@elsewhere.example>", 550, "5.7.1")
            await client.command("DATA", 354)
            await client.send(MESSAGE + b".\r\n")
            queued = await client.expect(250)
            await client.command("QUIT", 221)
            events = await w.until("connection.close")
    assert [
        fields(e, "plugin", "hook", "result", "recipient", "code", "outcome", "reason")
        for e in events
    ] == [
        ("connection.open", None, None, None, None, None, None, None),
        ("transaction.helo", None, None, None, None, 250, None, None),
        ("transaction.mail", None, None, None, None, 250, None, None),
        ("plugin.call", "rcpt_to_host_list", "rcpt", "ok", None, None, None, None),
        ("transaction.rcpt", None, None, None, "bob@example.test", 250, None, None),
        ("plugin.call", "rcpt_to_host_list", "rcpt", "cont", None, None, None, None),
        ("transaction.rcpt", None, None, None, "eve@elsewhere.example", 550, None, None),
        ("transaction.refused", "core", None, None, "eve@elsewhere.example", 550, None, None),
        ("plugin.call", "queue_discard", "queue", "ok", None, None, None, None),
        ("transaction.end", None, None, None, None, 250, "accepted", None),
        ("connection.close", None, None, None, None, None, None, "quit"),
    ]
    conn = events[0]["conn"]
    assert all(e["conn"] == conn and e["ip"] == "127.0.0.1" for e in events)
    txn = events[2]["txn"]
    assert txn is not None
    assert all(e["txn"] == txn for e in events[2:-1])
    assert events[0]["txn"] is None
    assert events[-1]["txn"] is None
    seqs = [int(str(e["seq"])) for e in events]
    # Contiguous, but for the once-a-second samples (server.stats) the kit set aside.
    sampled = [int(str(e["seq"])) for e in w.skipped if seqs[0] < int(str(e["seq"])) < seqs[-1]]
    assert sorted(seqs + sampled) == list(range(seqs[0], seqs[0] + len(events) + len(sampled)))
    assert seqs == sorted(seqs)
    end = events[-2]
    assert end["queue_id"] == txn
    assert str(txn) in queued.text
    assert end["sender"] == "alice@example.org"
    assert end["recipients"] == ["bob@example.test"]
    assert end["refused"] == ["eve@elsewhere.example"]
    refusal = events[7]
    assert (refusal["stage"], refusal["sender"], refusal["reply"]) == (
        "rcpt",
        "alice@example.org",
        "5.7.1 Relaying denied",
    )
    assert end["size"] == len(MESSAGE)
    assert end["helo"] == "client.example"
    assert events[1]["reply"] == "localhost Hello client.example [127.0.0.1]"
    assert events[6]["reply"] == "5.7.1 Relaying denied"
    assert all(e["v"] == 1 and abs(float(str(e["ts"])) - time.time()) < 60 for e in events)


async def test_a_late_watcher_replays_the_last_transactions(tmp_path: Path) -> None:
    with trio.fail_after(CAP):
        async with running(admin_config(tmp_path / "var", replay=2)) as d:
            for n in range(3):  # nobody watching: only transaction.end is kept
                await d.send(f"s{n}@example.org")
            async with watching(d.url("replay=50")) as w:
                assert w.hello is not None
                assert w.hello["replay"] == 2
                events = await w.until("transaction.end", 2)
                async with watching(d.url()) as none:
                    assert none.hello is not None
                    assert none.hello["replay"] == 0
    assert [(e["type"], e["sender"]) for e in events] == [
        ("transaction.end", "s1@example.org"),
        ("transaction.end", "s2@example.org"),
    ]


async def test_filters_by_type_ip_and_domains(tmp_path: Path) -> None:
    config = admin_config(tmp_path / "var")
    with trio.fail_after(CAP):
        async with (
            running(config) as d,
            watching(d.url("type=transaction.end")) as ends,
            watching(d.url("ip=127.0.0.2/32")) as by_ip,
            watching(d.url("sender_domain=Example.ORG")) as by_sender,
            watching(d.url("rcpt_domain=LOCALHOST&type=transaction,plugin")) as by_rcpt,
            watching(d.url()) as everything,
        ):
            await d.send("a@example.org", ("u@example.test",), local_ip="127.0.0.1")
            await d.send("b@example.net", ("v@localhost",), local_ip="127.0.0.2")
            await d.send("c@example.org", ("w@localhost",), local_ip="127.0.0.1")
            await everything.until("connection.close", 3)
            # Each filtered stream has been sent everything it will get by the time the
            # unfiltered one has the last event: the server batches all watchers alike.
            await ends.until("transaction.end", 3)
            await by_ip.until("connection.close", 1)
            await by_sender.until("transaction.end", 2)
            await by_rcpt.until("transaction.end", 2)
    assert types(ends.events) == ["transaction.end"] * 3
    assert {e["ip"] for e in by_ip.events} == {"127.0.0.2"}
    assert types(by_ip.events)[0] == "connection.open"
    assert "connection.close" in types(by_ip.events)
    # Sender domain: the transactions of a@ and c@, from their MAIL on; no connection events.
    assert {e["txn"] for e in by_sender.events} == {
        e["txn"] for e in ends.events if str(e["sender"]).endswith("@example.org")
    }
    assert types(by_sender.events)[:2] == ["transaction.mail", "plugin.call"]
    # Recipient domain, transactions and plugins only: from the matching RCPT on.
    assert (
        types(by_rcpt.events)
        == [
            "transaction.rcpt",
            "plugin.call",
            "transaction.end",
        ]
        * 2
    )
    assert [e["recipient"] for e in by_rcpt.events if "recipient" in e] == [
        "v@localhost",
        "w@localhost",
    ]


async def test_a_bad_filter_is_refused_with_the_reason(tmp_path: Path) -> None:
    with trio.fail_after(CAP):
        async with running(admin_config(tmp_path / "var")) as d:
            with pytest.raises(trio_websocket.ConnectionRejected) as caught:
                async with watching(d.url("ip=not-an-ip")):
                    pass
    assert caught.value.status_code == 400
    assert b"ip='not-an-ip' is not an address or CIDR" in (caught.value.body or b"")


async def test_plugin_calls_are_observed_only_while_a_watcher_wants_them(tmp_path: Path) -> None:
    def state(bus: EventBus) -> tuple[bool, bool]:
        return bus.active, bus.detail

    with trio.fail_after(CAP):
        async with running(admin_config(tmp_path / "var")) as d:
            assert state(d.bus) == (False, False)
            async with watching(d.url("type=transaction.end")):
                assert state(d.bus) == (True, False)
                with d.bus.subscribe(detail=False) as tap:
                    await d.send()
                    assert "plugin.call" not in [type(e).TYPE for _, e in tap.take()]
                async with watching(d.url("type=plugin")) as plugins:
                    assert state(d.bus) == (True, True)
                    await d.send()
                    got = await plugins.until("plugin.call", 2)
                    assert {e["plugin"] for e in got} == {"rcpt_to_host_list", "queue_discard"}
                await eventually(lambda: state(d.bus) == (True, False))
            await eventually(lambda: state(d.bus) == (False, False))


async def test_a_watcher_that_never_reads_does_not_slow_smtp_and_gets_a_gap(
    tmp_path: Path,
) -> None:
    config = admin_config(tmp_path / "var", buffer=16, replay=0)
    rounds = 100
    with trio.fail_after(CAP):
        async with running(config) as d:
            host, port = d.admin
            t0 = trio.current_time()
            for _ in range(rounds):
                await d.send()
            unwatched = trio.current_time() - t0
            async with stalled_watcher(host, port, "/events") as ws:
                t0 = trio.current_time()
                for _ in range(rounds):  # ~1000 events: far more than the buffers hold
                    await d.send()
                watched = trio.current_time() - t0
                # Now read: the first thing after what was buffered is a gap with the count.
                gaps: list[Event] = []
                while not gaps:
                    batch = json.loads(await ws.get_message())
                    gaps = [e for e in batch if e["type"] == "gap"]
                assert int(str(gaps[0]["dropped"])) > 0
                assert "seq" not in gaps[0]
                # The bus counts every loss; this watcher may have had more gaps since.
                lost = int(str(gaps[0]["dropped"]))
                await eventually(lambda: d.bus.dropped >= lost)
    # Publishing never waited for the stalled watcher: watched SMTP kept its pace.
    assert watched < max(3 * unwatched, unwatched + 1.0)
