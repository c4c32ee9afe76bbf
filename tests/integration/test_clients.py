"""Real clients against a real listener: Python's smtplib, swaks, Postfix's smtp-source.

Every accepted message must be in ``var/maildir/<domain>/<local>/new/`` byte for byte, after our
Received: header.
"""

from __future__ import annotations

import logging
import re
import shutil
import smtplib
from pathlib import Path

import pytest
import trio

from tests.conftest import REPO
from tests.helpers.maildir import (
    all_messages,
    as_received,
    bodies_in,
    messages_in,
    raw_messages_in,
    split_received,
)

from .conftest import RunningMTA

CAP = 20  # seconds, real time

SMTP_SOURCE = REPO / "scripts" / "smtp-source"
SMTP_SOURCE_BIN = REPO / ".tools" / "postfix" / "usr" / "sbin" / "smtp-source"
SWAKS = shutil.which("swaks")

needs_swaks = pytest.mark.skipif(SWAKS is None, reason="swaks is not installed")
needs_smtp_source = pytest.mark.skipif(
    not SMTP_SOURCE_BIN.exists(), reason="smtp-source missing: run scripts/get-postfix-tools"
)

MESSAGES = [
    b"Subject: one\r\n\r\nplain body\r\n",
    b"Subject: two\r\n\r\n.\r\n..\r\n.leading dot\r\n",
    b"Subject: three\r\nContent-Type: text/plain; charset=utf-8\r\n\r\n\xc3\xa9t\xc3\xa9\r\n",
    b"Subject: four\r\n\r\n" + b"x" * 998 + b"\r\n" + b"y" * 70000 + b"\r\n" * 0,
]


def _smtplib_session(
    host: str, port: int, sends: list[tuple[str, list[str], bytes]]
) -> list[dict[str, tuple[int, bytes]]]:
    results = []
    with smtplib.SMTP(host, port, local_hostname="client.example", timeout=10) as smtp:
        smtp.ehlo()
        assert smtp.has_extn("pipelining")
        assert smtp.has_extn("8bitmime")
        for sender, rcpts, msg in sends:
            results.append(smtp.sendmail(sender, rcpts, msg))
    return results


async def test_smtplib_messages_are_stored_byte_exact(mta: RunningMTA) -> None:
    bodies = [m for m in MESSAGES if not m.startswith(b"Subject: four")]
    with trio.fail_after(CAP):
        results = await trio.to_thread.run_sync(
            _smtplib_session,
            mta.host,
            mta.port,
            [("a@example.org", ["u@example.test"], body) for body in bodies],
        )
    assert results == [{}] * len(bodies)
    assert bodies_in(mta.var_dir, "example.test", "u") == sorted(bodies)


async def test_smtplib_mixed_recipients_only_local_ones_get_it(mta: RunningMTA) -> None:
    body = MESSAGES[0]
    with trio.fail_after(CAP):
        [refused] = await trio.to_thread.run_sync(
            _smtplib_session,
            mta.host,
            mta.port,
            [("a@example.org", ["u@example.test", "v@elsewhere.example", "W@LocalHost"], body)],
        )
    assert refused == {"v@elsewhere.example": (550, b"5.7.1 Relaying denied")}
    assert bodies_in(mta.var_dir, "example.test", "u") == [body]
    assert bodies_in(mta.var_dir, "localhost", "w") == [body]
    assert len(all_messages(mta.var_dir)) == 2
    # Two recipients: the Received header names neither (it would disclose the other).
    header, _ = split_received(messages_in(mta.var_dir, "localhost", "w")[0])
    assert b"\tfor <" not in header


async def test_a_refused_recipient_is_logged_like_postfix_and_its_transaction_says_so(
    mta: RunningMTA, caplog: pytest.LogCaptureFixture
) -> None:
    # Issue #16 hazard 5: this refusal used to leave only "rcpts= outcome=aborted reply='quit'".
    caplog.set_level(logging.INFO)

    def attempt() -> None:
        with smtplib.SMTP(mta.host, mta.port, local_hostname="client.example") as smtp:
            smtp.ehlo()
            assert smtp.mail("a@example.org")[0] == 250
            assert smtp.rcpt("v@elsewhere.example")[0] == 550

    with trio.fail_after(CAP):
        await trio.to_thread.run_sync(attempt)
    rejects = [r.getMessage() for r in caplog.records if r.name == "trio_mta.reject"]
    ends = [r.getMessage() for r in caplog.records if r.name == "trio_mta.transaction"]
    [reject] = rejects
    assert re.fullmatch(
        r"[0-9a-f]+: reject: RCPT from \[127\.0\.0\.1\]: 550 5\.7\.1 Relaying denied; "
        r"from=<a@example\.org> to=<v@elsewhere\.example> helo=<client\.example> "
        r"plugin=core conn=\S+",
        reject,
    ), reject
    [end] = ends
    assert "rcpts= refused=<v@elsewhere.example>" in end
    assert "outcome=refused reply='every recipient refused: 550 5.7.1 Relaying denied'" in end


async def test_smtplib_relay_only_is_refused(mta: RunningMTA) -> None:
    def attempt() -> smtplib.SMTPRecipientsRefused | None:
        try:
            _smtplib_session(
                mta.host, mta.port, [("a@example.org", ["v@elsewhere.example"], MESSAGES[0])]
            )
        except smtplib.SMTPRecipientsRefused as exc:
            return exc
        return None

    with trio.fail_after(CAP):
        exc = await trio.to_thread.run_sync(attempt)
    assert exc is not None
    assert exc.recipients == {"v@elsewhere.example": (550, b"5.7.1 Relaying denied")}
    assert all_messages(mta.var_dir) == []


async def test_smtplib_message_too_long_line_is_refused(mta: RunningMTA) -> None:
    def attempt() -> smtplib.SMTPDataError | None:
        try:
            _smtplib_session(
                mta.host, mta.port, [("a@example.org", ["u@example.test"], MESSAGES[3])]
            )
        except smtplib.SMTPDataError as exc:
            return exc
        return None

    with trio.fail_after(CAP):
        exc = await trio.to_thread.run_sync(attempt)
    assert exc is not None
    assert exc.smtp_code == 554
    assert exc.smtp_error == b"5.6.0 Message contains a line longer than allowed"
    assert all_messages(mta.var_dir) == []


async def test_smtplib_998_octet_line_starting_with_a_dot_is_stored(mta: RunningMTA) -> None:
    # smtplib dot-stuffs as Postfix's smtp(8) does: the line goes out as 999 octets + CRLF,
    # which RFC 5321 §4.5.3.1.6 allows (the stuffing dot is not part of the text).
    body = b"Subject: ruler\r\n\r\n." + b"-" * 997 + b"\r\nend\r\n"
    with trio.fail_after(CAP):
        results = await trio.to_thread.run_sync(
            _smtplib_session, mta.host, mta.port, [("a@example.org", ["u@example.test"], body)]
        )
    assert results == [{}]
    assert bodies_in(mta.var_dir, "example.test", "u") == [body]


async def test_final_delivery_writes_return_path_delivered_to_and_lf(mta: RunningMTA) -> None:
    # RFC 5321 §4.4: the final delivery records the envelope sender; like Postfix's local(8)
    # it names the mailbox, and the Maildir file has LF endings (what mail readers expect).
    body = MESSAGES[1]
    with trio.fail_after(CAP):
        results = await trio.to_thread.run_sync(
            _smtplib_session,
            mta.host,
            mta.port,
            [
                ("a@example.org", ["u@example.test", "W@LocalHost"], body),
                ("", ["postmaster"], MESSAGES[0]),
            ],
        )
    assert results == [{}, {}]
    [u] = raw_messages_in(mta.var_dir, "example.test", "u")
    [w] = raw_messages_in(mta.var_dir, "localhost", "w")
    [pm] = raw_messages_in(mta.var_dir, "localhost", "postmaster")
    assert u.startswith(b"Return-Path: <a@example.org>\nDelivered-To: u@example.test\nReceived: ")
    assert w.startswith(b"Return-Path: <a@example.org>\nDelivered-To: W@LocalHost\nReceived: ")
    assert pm.startswith(b"Return-Path: <>\nDelivered-To: postmaster@localhost\nReceived: ")
    for stored in (u, w, pm):
        assert b"\r" not in stored
        assert stored.count(b"Return-Path:") == 1
    assert u.endswith(b"\n\n.\n..\n.leading dot\n")
    assert split_received(as_received(u))[1] == body


async def _swaks(mta: RunningMTA, data_file: Path, rcpt: str, *extra: str) -> str:
    assert SWAKS is not None
    result = await trio.run_process(
        [
            SWAKS,
            "--server", mta.host,
            "--port", str(mta.port),
            "--helo", "swaks.example",
            "--from", "sender@example.org",
            "--to", rcpt,
            "--data", f"@{data_file}",
            *extra,
        ],
        capture_stdout=True,
        capture_stderr=True,
        check=False,
    )  # fmt: skip
    transcript = result.stdout.decode("utf-8", "replace")
    assert result.returncode == 0, transcript + result.stderr.decode("utf-8", "replace")
    return transcript


@needs_swaks
@pytest.mark.parametrize("mode", [[], ["--pipeline"]], ids=["plain", "pipeline"])
async def test_swaks_message_is_stored_byte_exact(
    mta: RunningMTA, tmp_path: Path, mode: list[str]
) -> None:
    data = b"Subject: swaks\r\nX-Test: yes\r\n\r\n.dot at start\r\n..two dots\r\nlast line\r\n"
    data_file = tmp_path / "message.eml"
    data_file.write_bytes(data)
    with trio.fail_after(CAP):
        transcript = await _swaks(mta, data_file, "s@example.test", *mode)
    assert "250 2.0.0 Message queued as" in transcript
    # swaks always writes CRLF . CRLF after the data, so the last line it sends is empty.
    assert bodies_in(mta.var_dir, "example.test", "s") == [data + b"\r\n"]
    [stored] = messages_in(mta.var_dir, "example.test", "s")
    assert split_received(stored)[0].startswith(b"Received: from swaks.example ([127.0.0.1])\r\n")
    assert b" with ESMTP id " in split_received(stored)[0]


@needs_swaks
async def test_swaks_relay_is_refused(mta: RunningMTA, tmp_path: Path) -> None:
    data_file = tmp_path / "message.eml"
    data_file.write_bytes(b"Subject: relay\r\n\r\nno\r\n")
    with trio.fail_after(CAP):
        result = await trio.run_process(
            [SWAKS or "swaks", "--server", mta.host, "--port", str(mta.port),
             "--from", "a@example.org", "--to", "v@elsewhere.example", "--data", f"@{data_file}"],
            capture_stdout=True,
            check=False,
        )  # fmt: skip
    assert result.returncode != 0
    assert b"<** 550 5.7.1 Relaying denied" in result.stdout
    assert all_messages(mta.var_dir) == []


# smtp-source writes From/To/Date/Message-Id headers, an empty line, then -l bytes of
# numbered lines ("1XXX...", 80 octets with CRLF), the last line cut short.
_SOURCE_HEADERS = re.compile(
    rb"From: <src@example\.org>\r\nTo: <sink@example\.test>\r\nDate: [^\r\n]+\r\n"
    rb"Message-Id: <[^\r\n]+>\r\n\r\n"
)


def _check_smtp_source_body(client_bytes: bytes, length: int) -> None:
    match = _SOURCE_HEADERS.match(client_bytes)
    assert match is not None, client_bytes[:200]
    body = client_bytes[match.end() :]
    lines = body.split(b"\r\n")
    assert lines[-1] == b""
    assert all(re.fullmatch(rb"[0-9]X{77}", line) for line in lines[:-2]), body[:300]
    assert re.fullmatch(rb"[0-9]?X*", lines[-2]), lines[-2]
    # -l counts the text in 80-octet CRLF lines; a final CRLF ends the last, shorter one.
    assert len(body) == length + 2


async def _smtp_source(mta: RunningMTA, *flags: str) -> None:
    result = await trio.run_process(
        [str(SMTP_SOURCE), *flags, "-f", "src@example.org", "-t", "sink@example.test",
         f"{mta.host}:{mta.port}"],
        capture_stdout=True,
        capture_stderr=True,
        check=False,
    )  # fmt: skip
    assert result.returncode == 0, result.stderr.decode("utf-8", "replace")
    assert result.stderr == b"", result.stderr.decode("utf-8", "replace")


@needs_smtp_source
@pytest.mark.parametrize(
    ("flags", "count"),
    [
        (["-s", "10", "-m", "100", "-l", "4096"], 100),
        (["-s", "4", "-m", "60", "-l", "4096", "-d"], 60),
        (["-c", "-s", "5", "-m", "25", "-l", "100000"], 25),
    ],
    ids=["10-sessions", "reused-connections", "large"],
)
async def test_smtp_source_load_every_message_stored(
    mta: RunningMTA, flags: list[str], count: int
) -> None:
    length = int(flags[flags.index("-l") + 1])
    with trio.fail_after(CAP):
        await _smtp_source(mta, *flags)
    stored = messages_in(mta.var_dir, "example.test", "sink")
    assert len(stored) == count
    assert len(all_messages(mta.var_dir)) == count
    for message in stored:
        header, client_bytes = split_received(message)
        assert header.startswith(b"Received: from ")
        _check_smtp_source_body(client_bytes, length)
    # Every stored message has its own queue id.
    ids = {re.search(rb" id ([0-9a-f]+)", split_received(m)[0]).group(1) for m in stored}  # type: ignore[union-attr]  # every header has an id, checked by split_received's shape
    assert len(ids) == count
