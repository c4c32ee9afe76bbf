"""The spool on disk: atomic entries, group commit, recovery."""

from __future__ import annotations

import os
from pathlib import Path

import attrs
import trio

from trio_mta.queue import Envelope, Recipient, Spool
from trio_mta.queue._records import dumps


def envelope(id: str) -> Envelope:
    return Envelope(id, "a@sender.test", (Recipient("b@dest.test"),), 1.0, 1.0)


async def test_store_writes_both_files_into_the_queue_and_leaves_tmp_empty(tmp_path: Path) -> None:
    spool = Spool(tmp_path, fsync=True)
    spool.create()
    stored = await spool.store(envelope("m1"), [b"Subject: x\r\n", b"\r\nbody\r\n"])
    await spool.aclose()
    assert stored.size == 20
    assert spool.message_path("m1").read_bytes() == b"Subject: x\r\n\r\nbody\r\n"
    assert spool.read("m1") == stored
    assert list(spool.tmp.iterdir()) == []


async def test_concurrent_stores_share_syncs(tmp_path: Path) -> None:
    spool = Spool(tmp_path, fsync=True)
    spool.create()
    async with trio.open_nursery() as nursery:
        for n in range(200):
            nursery.start_soon(spool.store, envelope(f"m{n}"), [b"x" * 4096])
    await spool.aclose()
    assert spool.writer.jobs == 200
    assert spool.writer.batches < 200  # group commit: batches gathered while one was on disk
    assert len(spool.ids()) == 200


async def test_update_replaces_and_remove_deletes(tmp_path: Path) -> None:
    spool = Spool(tmp_path, fsync=False)
    spool.create()
    stored = await spool.store(envelope("m1"), [b"x\r\n"])
    await spool.update(attrs.evolve(stored, attempts=3))
    assert spool.read("m1").attempts == 3
    await spool.remove("m1")
    await spool.aclose()
    assert spool.ids() == []
    assert not spool.message_path("m1").exists()


def test_recovery_sets_aside_what_it_cannot_read_and_drops_what_was_never_acked(
    tmp_path: Path,
) -> None:
    spool = Spool(tmp_path)
    spool.create()
    (spool.tmp / "half-written.msg").write_bytes(b"x")
    for id in ("good", "nomsg", "badjson", "wrongid"):
        if id != "nomsg":
            spool.message_path(id).write_bytes(b"Subject: x\r\n\r\n")
    spool.envelope_path("good").write_bytes(dumps(envelope("good")))
    spool.envelope_path("nomsg").write_bytes(dumps(envelope("nomsg")))
    spool.envelope_path("badjson").write_bytes(b'{"format": 1, "id": ')
    spool.envelope_path("wrongid").write_bytes(dumps(envelope("other")))
    spool.message_path("orphan").write_bytes(b"never acknowledged")
    envelopes, corrupt = spool.recover()
    assert [e.id for e in envelopes] == ["good"]
    assert sorted(name for name, _ in corrupt) == ["badjson", "nomsg", "wrongid"]
    assert sorted(p.name for p in spool.corrupt.iterdir()) == [
        "badjson.env", "badjson.msg", "nomsg.env", "wrongid.env", "wrongid.msg",
    ]  # fmt: skip
    assert sorted(os.listdir(spool.queue)) == ["good.env", "good.msg"]
    assert list(spool.tmp.iterdir()) == []
