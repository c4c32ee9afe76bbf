from __future__ import annotations

import pytest

from tests.plugins.plugin_kit import (
    begin,
    config_error,
    connection,
    load,
    message,
    runner,
    shipped_config,
    state,
    verdict,
)
from trio_mta import hooks
from trio_mta.protocol import Reply

GOOD = (
    b"Received: from a by b; Mon, 1 Jan 2024 00:00:00 +0000\r\n"
    b"From: Alice <alice@example.org>\r\n"
    b"To: bob@example.test\r\n"
    b"Date: Mon, 1 Jan 2024 00:00:00 +0000\r\n"
    b"Subject: hello\r\n"
    b"\r\n"
    b"Body with a line that looks like a header:\r\n"
    b"From: not a header\r\n"
)


def conn_with(data: bytes, *, chunk: int = 0) -> hooks.Connection:
    conn = connection()
    begin(conn).message = message(data, chunk=chunk)
    return conn


async def check(
    data: bytes, config: dict[str, object] | None = None, *, chunk: int = 0
) -> tuple[hooks.Result, Reply | None]:
    return await verdict(runner("headers", config), "data_post", conn_with(data, chunk=chunk))


def malformed(code: int, enhanced: str, text: str) -> Reply:
    return Reply(code, enhanced, (text,))


@pytest.mark.parametrize("chunk", [0, 1, 5])
async def test_a_good_message_passes(chunk: int) -> None:
    # Headers in any chunking; a From: in the body is not a second From header.
    assert await check(GOOD, chunk=chunk) == (hooks.CONT, None)


@pytest.mark.parametrize("name", ["From", "Date"])
async def test_missing_required_header_is_refused(name: str) -> None:
    data = GOOD.replace(f"{name}:".encode(), b"X-Was:", 1)
    result, reply = await check(data)
    assert result.action is hooks.Action.DENY
    assert reply == malformed(550, "5.6.0", f"Missing required header {name}")


async def test_empty_required_header_counts_as_missing() -> None:
    data = GOOD.replace(b"Date: Mon, 1 Jan 2024 00:00:00 +0000", b"Date:   ")
    assert (await check(data))[1] == malformed(550, "5.6.0", "Missing required header Date")


async def test_header_names_are_case_insensitive() -> None:
    data = GOOD.replace(b"From:", b"FROM:").replace(b"Date:", b"date:")
    assert (await check(data))[0] is hooks.CONT


async def test_required_headers_are_configurable() -> None:
    data = GOOD.replace(b"Date:", b"X-Date:")
    assert (await check(data, {"required": ["From", "Subject"]}))[0] is hooks.CONT
    missing = GOOD.replace(b"Subject:", b"X-Subject:")
    assert (await check(missing, {"required": ["Subject"]}))[1] == malformed(
        550, "5.6.0", "Missing required header Subject"
    )


async def test_a_message_without_a_header_section_lacks_from() -> None:
    assert (await check(b"\r\njust a body\r\n"))[1] == malformed(
        550, "5.6.0", "Missing required header From"
    )


async def test_a_message_that_is_all_header_is_checked_whole() -> None:
    # No blank line, no body (RFC 5322 allows it): every header is still seen.
    data = b"From: a@example.org\r\nDate: Mon, 1 Jan 2024 00:00:00 +0000\r\n"
    assert (await check(data, chunk=3))[0] is hooks.CONT
    assert (await check(b"From: a@example.org\r\n"))[1] == malformed(
        550, "5.6.0", "Missing required header Date"
    )


@pytest.mark.parametrize(
    "name",
    [
        "Date",
        "From",
        "Sender",
        "Reply-To",
        "To",
        "Cc",
        "Bcc",
        "Message-ID",
        "In-Reply-To",
        "References",
        "Subject",
    ],
)
async def test_duplicate_singular_header_is_refused(name: str) -> None:
    data = GOOD.replace(
        b"\r\n\r\n", f"\r\n{name.upper()}: again\r\n{name}: more\r\n\r\n".encode(), 1
    )
    count = 3 if name in ("From", "To", "Date", "Subject") else 2  # GOOD has those once
    result, reply = await check(data)
    assert result.action is hooks.Action.DENY
    assert reply == malformed(550, "5.6.0", f"Duplicate header {name} ({count} times)")


async def test_repeatable_headers_may_repeat() -> None:
    data = GOOD.replace(b"\r\n\r\n", b"\r\nComments: one\r\nKeywords: a\r\nKeywords: b\r\n\r\n", 1)
    assert (await check(data))[0] is hooks.CONT


async def test_singular_list_is_configurable() -> None:
    twice = GOOD.replace(b"Subject: hello", b"Subject: a\r\nSubject: b\r\nX-Id: 1\r\nX-Id: 2")
    assert (await check(twice, {"singular": []}))[0] is hooks.CONT
    assert (await check(twice, {"singular": ["x-id"]}))[1] == malformed(
        550, "5.6.0", "Duplicate header x-id (2 times)"
    )


# ----------------------------------------------------------------------------- hops


def hops(count: int) -> bytes:
    return b"Received: from x by y; Mon, 1 Jan 2024 00:00:00 +0000\r\n" * (count - 1) + GOOD


async def test_one_hundred_hops_pass() -> None:
    assert (await check(hops(100)))[0] is hooks.CONT


async def test_too_many_hops_is_a_loop() -> None:
    result, reply = await check(hops(101))
    assert result.action is hooks.Action.DENY
    assert reply == malformed(554, "5.4.6", "Too many hops (101 Received headers): mail loop?")


async def test_hop_limit_is_configurable() -> None:
    assert (await check(hops(3), {"max_received": 2}))[1] is not None
    assert (await check(hops(3), {"max_received": 3}))[1] is None
    assert (await check(hops(500), {"max_received": 0}))[1] is None


async def test_loops_are_refused_even_in_note_mode() -> None:
    conn = conn_with(hops(3).replace(b"Date:", b"X-Date:"))
    result, reply = await verdict(
        runner("headers", {"max_received": 2, "action": "note"}), "data_post", conn
    )
    assert result.action is hooks.Action.DENY
    assert reply == malformed(554, "5.4.6", "Too many hops (3 Received headers): mail loop?")
    assert conn.transaction is not None
    assert "headers.problems" not in conn.transaction.notes


# ----------------------------------------------------------------------------- action


async def test_note_mode_accepts_and_lists_every_problem() -> None:
    data = GOOD.replace(b"Date:", b"X-Date:").replace(
        b"Subject: hello", b"Subject: a\r\nSubject: b"
    )
    conn = conn_with(data)
    result, _ = await verdict(runner("headers", {"action": "note"}), "data_post", conn)
    assert result is hooks.CONT
    assert conn.transaction is not None
    assert conn.transaction.notes["headers.problems"] == [
        "Duplicate header Subject (2 times)",
        "Missing required header Date",
    ]


async def test_note_mode_leaves_no_note_on_a_good_message() -> None:
    conn = conn_with(GOOD)
    await verdict(runner("headers", {"action": "note"}), "data_post", conn)
    assert conn.transaction is not None
    assert "headers.problems" not in conn.transaction.notes


async def test_reject_mode_names_the_first_problem() -> None:
    data = GOOD.replace(b"Date:", b"X-Date:").replace(
        b"Subject: hello", b"Subject: a\r\nSubject: b"
    )
    assert (await check(data))[1] == malformed(550, "5.6.0", "Duplicate header Subject (2 times)")


# ----------------------------------------------------------------------------- config


def test_shipped_config_shows_the_defaults() -> None:
    shipped = load("headers", shipped_config("headers")).plugins[0]
    assert state(shipped) == state(load("headers").plugins[0])


@pytest.mark.parametrize(
    ("config", "expected"),
    [
        ({"required": "From"}, "required: must be a list of header names"),
        ({"required": ["From:"]}, "required: 'From:' is not a header name"),
        ({"required": ["Reply To"]}, "required: 'Reply To' is not a header name"),
        ({"singular": [""]}, "singular: '' is not a header name"),
        ({"singular": [3]}, "singular: must be a list of header names"),
        ({"max_received": -1}, "max_received: must be a whole number"),
        ({"max_received": True}, "max_received: must be a whole number"),
        ({"max_received": "100"}, "max_received: must be a whole number"),
        ({"action": "drop"}, 'action: must be "reject" or "note"'),
        ({"requried": ["From"]}, "unknown keys ['requried']"),
    ],
)
def test_config_errors(config: dict[str, object], expected: str) -> None:
    assert expected in config_error("headers", config)
