"""``MaildirStore`` called directly (as the batch-process child calls it): where files land,
hard links for several recipients, per-delivery failures, the group commit's syncs, and the
directory names made from domains and local parts."""

from __future__ import annotations

import os
from pathlib import Path

import pytest

from trio_mta.storage import maildir, write_file
from trio_mta.storage.maildir import MaildirDelivery, MaildirStore, mailbox_dirname

MESSAGE = b"Subject: hi\r\n\r\nbody\r\n.\r\n\x00\xff"
STORED = b"Subject: hi\n\nbody\n.\n\x00\xff"  # Maildir files have LF line endings


def files(root: Path, pattern: str) -> list[Path]:
    return sorted(p for p in root.glob(pattern) if p.is_file())


class Syncs:
    """Stands in for the sync primitives, keeping each call in order."""

    def __init__(self, *, have_syncfs: bool = True) -> None:
        self.have_syncfs = have_syncfs
        self.calls: list[tuple[str, Path]] = []

    def syncfs(self, path: Path) -> bool:
        self.calls.append(("syncfs", path))
        return self.have_syncfs

    def fsync_path(self, path: Path, *, directory: bool = False) -> None:
        self.calls.append(("fsync-dir" if directory else "fsync", path))


@pytest.fixture
def syncs(monkeypatch: pytest.MonkeyPatch) -> Syncs:
    recorder = Syncs()
    monkeypatch.setattr(maildir, "syncfs", recorder.syncfs)
    monkeypatch.setattr(maildir, "fsync_path", recorder.fsync_path)
    return recorder


def test_one_mailbox_gets_the_file_in_new_and_tmp_is_left_empty(tmp_path: Path) -> None:
    store = MaildirStore(tmp_path, "mx.example/x:1")  # the real syncs
    [path] = store.deliver(MaildirDelivery("Q1", (("example.test", "bob"),)), MESSAGE)
    box = tmp_path / "example.test" / "bob"
    assert path.parent == box / "new"
    assert path.read_bytes() == STORED
    assert files(tmp_path, "*/*/*/*") == [path]  # nothing in tmp/ or cur/
    assert sorted(p.name for p in box.iterdir()) == ["cur", "new", "tmp"]
    # Unique name: time, pid, the message id, the host name made path-safe.
    assert f"P{os.getpid()}QQ1." in path.name
    assert path.name.endswith(".mx.example_x_1")
    assert path.stat().st_nlink == 1  # renamed, not linked


def test_several_mailboxes_share_one_file_by_hard_links(tmp_path: Path) -> None:
    store = MaildirStore(tmp_path, "mx", fsync=False)
    boxes = (("example.test", "bob"), ("example.test", "carol"), ("other.test", "dave"))
    paths = store.deliver(MaildirDelivery("Q2", boxes), MESSAGE)
    assert [p.parent for p in paths] == [tmp_path / d / lp / "new" for d, lp in boxes]
    assert len({p.name for p in paths}) == 1
    stats = [p.stat() for p in paths]
    assert len({(s.st_dev, s.st_ino) for s in stats}) == 1  # one file, three names
    assert all(s.st_nlink == 3 for s in stats)  # ...and no fourth left in tmp/
    assert all(p.read_bytes() == STORED for p in paths)
    assert files(tmp_path, "*/*/tmp/*") == []


def test_each_copy_gets_return_path_and_its_own_delivered_to(tmp_path: Path) -> None:
    store = MaildirStore(tmp_path, "mx", fsync=False)
    boxes = (("example.test", "bob"), ("example.test", "carol"), ("Example.TEST", "Bob"))
    rcpts = ("bob@example.test", '"carol"@example.test', "Bob@Example.TEST")
    delivery = MaildirDelivery("Q4", boxes, "alice@example.org", rcpts)
    bob, carol = store.deliver(delivery, MESSAGE)  # Bob is bob's mailbox: one copy
    assert bob.read_bytes() == (
        b"Return-Path: <alice@example.org>\nDelivered-To: bob@example.test\n" + STORED
    )
    assert carol.read_bytes() == (
        b'Return-Path: <alice@example.org>\nDelivered-To: "carol"@example.test\n' + STORED
    )
    assert bob.stat().st_ino != carol.stat().st_ino  # not links: the contents differ
    assert files(tmp_path, "*/*/tmp/*") == []
    [bounce] = store.deliver(MaildirDelivery("Q5", boxes[:1], "", rcpts[:1]), b"x\r\n")
    assert bounce.read_bytes() == b"Return-Path: <>\nDelivered-To: bob@example.test\nx\n"


def test_a_delivery_failing_at_one_mailbox_leaves_no_copy_anywhere(
    tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    store = MaildirStore(tmp_path, "mx", fsync=False)
    real_rename = os.rename
    renamed: list[str] = []

    def rename_fails_the_second_time(src: str | Path, dst: str | Path) -> None:
        if renamed:
            raise OSError(28, "No space left on device")
        renamed.append(str(dst))
        real_rename(src, dst)

    monkeypatch.setattr(os, "rename", rename_fails_the_second_time)
    boxes = (("example.test", "first"), ("example.test", "second"))
    rcpts = ("first@example.test", "second@example.test")
    [failed] = store([(MaildirDelivery("Q6", boxes, "a@b.example", rcpts), b"m")])
    assert isinstance(failed, OSError)
    assert len(renamed) == 1  # the first copy was placed...
    # ...and taken back: the client is told 451 and sends it again, and a copy kept in
    # "first" would be a duplicate.
    assert files(tmp_path, "*/*/*/*") == []


def test_delivered_to_must_match_the_mailboxes(tmp_path: Path) -> None:
    store = MaildirStore(tmp_path, "mx", fsync=False)
    boxes = (("example.test", "a"), ("example.test", "b"))
    with pytest.raises(ValueError, match="one recipient per mailbox"):
        store.deliver(MaildirDelivery("Q7", boxes, "", ("a@example.test",)), b"m")


def test_a_mailbox_named_twice_in_other_case_gets_one_copy(tmp_path: Path) -> None:
    store = MaildirStore(tmp_path, "mx", fsync=False)
    boxes = (("Example.TEST", "Bob"), ("example.test", "bob"))
    [path] = store.deliver(MaildirDelivery("Q3", boxes), MESSAGE)
    assert path.parent == tmp_path / "example.test" / "bob" / "new"
    assert files(tmp_path, "*/*/*/*") == [path]


def test_a_batch_answers_each_delivery_in_order_and_an_empty_one_is_a_value_error(
    tmp_path: Path, syncs: Syncs
) -> None:
    store = MaildirStore(tmp_path, "mx")
    batch = [
        (MaildirDelivery("A", (("example.test", "a"),)), b"message A"),
        (MaildirDelivery("none", ()), b"nowhere to go"),
        (MaildirDelivery("B", (("example.test", "b"), ("example.test", "c"))), b"message B"),
    ]
    first, empty, second = store(batch)
    assert isinstance(empty, ValueError)
    assert "at least one mailbox" in str(empty)
    assert isinstance(first, list)
    assert isinstance(second, list)
    assert [p.read_bytes() for p in first] == [b"message A"]
    assert [p.read_bytes() for p in second] == [b"message B"] * 2
    assert files(tmp_path, "*/*/tmp/*") == []
    # The group commit: one sync for the data, one for the names, whatever the batch size.
    assert syncs.calls == [("syncfs", tmp_path), ("syncfs", tmp_path)]
    with pytest.raises(ValueError, match="at least one mailbox"):
        store.deliver(MaildirDelivery("none", ()), b"x")


def test_a_delivery_that_cannot_be_written_fails_alone(tmp_path: Path) -> None:
    store = MaildirStore(tmp_path, "mx", fsync=False)
    (tmp_path / "example.test").mkdir()
    (tmp_path / "example.test" / "blocked").write_text("a file where a mailbox should be")
    ok, failed = store(
        [
            (MaildirDelivery("A", (("example.test", "fine"),)), b"A"),
            (MaildirDelivery("B", (("example.test", "blocked"),)), b"B"),
        ]
    )
    assert isinstance(failed, OSError)
    assert isinstance(ok, list)
    assert [p.read_bytes() for p in ok] == [b"A"]
    assert files(tmp_path, "*/*/*/*") == ok


def test_without_fsync_nothing_is_synced(tmp_path: Path, syncs: Syncs) -> None:
    store = MaildirStore(tmp_path, "mx", fsync=False)
    results = store(
        [(MaildirDelivery(f"Q{i}", (("example.test", f"u{i}"),)), b"m") for i in range(3)]
    )
    assert all(isinstance(r, list) and len(r) == 1 for r in results)
    assert syncs.calls == []


def test_without_syncfs_each_file_and_each_new_directory_is_fsynced(
    tmp_path: Path, syncs: Syncs
) -> None:
    syncs.have_syncfs = False
    store = MaildirStore(tmp_path, "mx")
    boxes = (("example.test", "a"), ("example.test", "b"))
    first, second = store(
        [(MaildirDelivery("Q1", boxes), b"one"), (MaildirDelivery("Q2", boxes[:1]), b"two")]
    )
    assert isinstance(first, list)
    assert isinstance(second, list)
    [a1, b1], [a2] = first, second
    tmp = tmp_path / "example.test" / "a" / "tmp"
    new_a, new_b = a1.parent, b1.parent
    assert syncs.calls[0] == ("syncfs", tmp_path)
    # Each file's data before its names are made, then every new/ directory touched, once.
    assert syncs.calls[1:3] == [("fsync", tmp / a1.name), ("fsync", tmp / a2.name)]
    assert syncs.calls[3] == ("syncfs", tmp_path)
    assert sorted(syncs.calls[4:]) == [("fsync-dir", new_a), ("fsync-dir", new_b)]
    assert a2.parent == new_a


def test_a_failed_data_sync_fails_the_batch_and_leaves_nothing_behind(
    tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    def failing_syncfs(path: Path) -> bool:
        raise OSError(5, "Input/output error")

    monkeypatch.setattr(maildir, "syncfs", failing_syncfs)
    store = MaildirStore(tmp_path, "mx")
    results = store([(MaildirDelivery(f"Q{i}", (("example.test", "a"),)), b"m") for i in range(2)])
    assert [type(r) for r in results] == [OSError, OSError]
    assert files(tmp_path, "*/*/*/*") == []  # not in new/ (never acknowledged), not in tmp/


@pytest.mark.parametrize(
    ("name", "dirname"),
    [
        ("bob", "bob"),
        ("Bob.Smith+tag=x_y-z", "bob.smith+tag=x_y-z"),  # case-folded, the safe set kept
        ("..", "%2E."),  # a leading dot is escaped: never "." or ".."
        (".", "%2E"),
        (".hidden", "%2Ehidden"),
        ("a..b", "a..b"),  # dots inside are harmless
        ("a/b", "a%2Fb"),
        ("/", "%2F"),
        ("../../etc", "%2E.%2F..%2Fetc"),
        ("a%2Fb", "a%252fb"),  # "%" is escaped too (after case-folding): no collisions
        ("José", "jos%C3%A9"),  # UTF-8, byte by byte
        ("ÄBC", "%C3%A4bc"),  # case-folded before escaping
        ('"quoted local"', "%22quoted%20local%22"),
        ("", "%00"),  # never the directory itself
    ],
)
def test_mailbox_dirname_escapes_what_is_not_safe(name: str, dirname: str) -> None:
    assert mailbox_dirname(name) == dirname


def test_distinct_names_get_distinct_directories() -> None:
    names = ["a/b", "a%2Fb", "a%2fb", "..", "%2E.", ".", "", "%00", "é", "%C3%A9", "Ab", "aB"]
    dirnames = [mailbox_dirname(n) for n in names]
    # Only case differences may share a directory ("Ab", "aB"; "a%2Fb", "a%2fb").
    assert len(set(dirnames)) == len({n.lower() for n in names})


def test_hostile_names_stay_inside_the_root(tmp_path: Path) -> None:
    store = MaildirStore(tmp_path, "mx", fsync=False)
    [path] = store.deliver(MaildirDelivery("Q", (("..", "../../escape"),)), b"m")
    assert path.resolve().is_relative_to(tmp_path.resolve())
    assert path.parent.parent == tmp_path / "%2E." / "%2E.%2F..%2Fescape"


@pytest.mark.parametrize("written", [0, 1, 5, 11, 12])
def test_write_file_finishes_what_a_short_writev_left(
    tmp_path: Path, monkeypatch: pytest.MonkeyPatch, written: int
) -> None:
    real_write = os.write

    def short_writev(fd: int, buffers: list[bytes]) -> int:
        return real_write(fd, b"".join(buffers)[:written]) if written else 0

    monkeypatch.setattr(os, "writev", short_writev)
    path = tmp_path / "f"
    assert write_file(path, (b"Head: x\n", b"", b"body")) == 12
    assert path.read_bytes() == b"Head: x\nbody"
