"""Deliver local mail into Maildir folders: ``<maildir>/<domain>/<local-part>/new/``.

Durability (``hooks.MaildirStore``): each mailbox's copy is written under its ``tmp/``,
synced, renamed into ``new/`` (atomic: readers see the whole file or nothing), the ``new/``
entries are synced so they survive a crash, and only then is OK returned, i.e. the client's
250 is sent. Each copy starts with ``Return-Path: <sender>`` and ``Delivered-To: <mailbox>``
(RFC 5321 §4.4; as Postfix's local delivery writes them) and has LF line endings.

The disk work runs in a child process (``hooks.BatchProcess``) doing group commit: every
message that arrives while a batch is on disk joins the next batch, and a batch costs two
``syncfs`` calls whatever its size (per-file ``fsync`` where ``syncfs`` is missing). A process,
not a thread: a writer thread trades the GIL with the busy event loop at every system call and
under load stored a fraction of what the disk allows. If the child dies, the messages in flight
get a temporary failure (451) and the next message starts a new child.

Config: ``maildir`` (default ``<var_dir>/maildir``), ``fsync`` (default true),
``postmaster_domain`` (where ``<postmaster>`` goes; default the first local domain).
"""

from __future__ import annotations

from pathlib import Path

from trio_mta import hooks


class Plugin(hooks.Plugin):
    def setup(self) -> None:
        root = self.config.get("maildir", str(self.env.var_dir / "maildir"))
        fsync = self.config.get("fsync", True)
        postmaster = self.config.get(
            "postmaster_domain",
            self.env.local_domains[0] if self.env.local_domains else "localhost",
        )
        if not isinstance(root, str):
            raise ValueError("maildir must be a path")
        if not isinstance(fsync, bool):
            raise ValueError("fsync must be true or false")
        if not isinstance(postmaster, str):
            raise ValueError("postmaster_domain must be a domain name")
        unknown = set(self.config) - {"maildir", "fsync", "postmaster_domain"}
        if unknown:
            raise ValueError(f"unknown keys {sorted(unknown)}")
        self.postmaster_domain = postmaster.lower()
        self.writer: hooks.BatchProcess[hooks.MaildirDelivery, list[Path]] = hooks.BatchProcess(
            hooks.MaildirStore, Path(root), self.env.hostname, fsync=fsync, name="queue_maildir"
        )

    async def startup(self) -> None:
        # The writer's child starts with the daemon, not with the first message (~50 ms).
        await self.writer.start()

    async def shutdown(self) -> None:
        await self.writer.aclose()

    async def hook_queue(self, conn: hooks.Connection) -> hooks.Result:
        txn = conn.transaction
        assert txn is not None
        boxes = tuple(
            (a.domain_lower or self.postmaster_domain, a.unquoted_local_part)
            for a, _ in txn.recipients
        )
        # The final delivery records the envelope (RFC 5321 §4.4): Return-Path for replies
        # and bounces, Delivered-To naming the mailbox (<postmaster> with its domain).
        delivered_to = tuple(
            str(a) if a.domain else f"{a.local_part}@{self.postmaster_domain}"
            for a, _ in txn.recipients
        )
        sender = "" if txn.sender is None else str(txn.sender)
        delivery = hooks.MaildirDelivery(txn.id, boxes, sender, delivered_to)
        await self.writer.submit(delivery, list(txn.iter_message()))
        return hooks.ok(f"Message queued as {txn.id}")
