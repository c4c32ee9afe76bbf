"""A plugin that raises on ``data_post``: the configured ``on_error`` decides, and by default
that fails closed (451 4.3.0, nothing delivered); a message on another connection at the same
time is delivered either way."""

from __future__ import annotations

import logging
from pathlib import Path

import pytest
import trio

from tests.helpers.maildir import bodies_in

from .kit import Journal, app_config, message, running_app, write_plugin

CAP = 10  # seconds, real time

BOOM = """
class Plugin(Base):
    async def hook_data_post(self, conn):
        txn = conn.transaction
        if any(a.local_part == "boom" for a, _ in txn.recipients):
            note(self, "raising", txn=txn.id)
            raise RuntimeError("boom in data_post")
        return CONT
"""


@pytest.mark.parametrize(
    ("settings", "code", "enhanced"),
    [({}, 451, "4.3.0"), ({"on_error": "cont"}, 250, "2.0.0")],
    ids=["default-fails-closed", "on_error-cont"],
)
async def test_an_exception_in_data_post_gets_the_on_error_result(
    tmp_path: Path,
    plugin_dir: Path,
    journal: Journal,
    caplog: pytest.LogCaptureFixture,
    settings: dict[str, object],
    code: int,
    enhanced: str,
) -> None:
    write_plugin(plugin_dir, "boom", BOOM)
    var_dir = tmp_path / "var"
    config = app_config(
        var_dir,
        plugin_dir,
        ["rcpt_to_host_list", "boom", "queue_maildir"],
        {"boom": {"journal": str(journal.path), **settings}},
    )
    with trio.fail_after(CAP), caplog.at_level(logging.ERROR, "trio_mta.plugins"):
        async with running_app(config) as mta:
            failing, fine = await mta.greeted(), await mta.greeted()
            # Both transactions are open at once; the failing one ends first.
            for client, rcpt in ((failing, "boom@example.test"), (fine, "ok@example.test")):
                await client.command("MAIL FROM:<a@example.org>", 250)
                await client.command(f"RCPT TO:<{rcpt}>", 250)
                await client.command("DATA", 354)
                await client.send(message(rcpt))
            await failing.send(b".\r\n")
            answer = await failing.expect(code, enhanced)
            await fine.send(b".\r\n")
            await fine.expect(250, "2.0.0")
            # The session that saw the error still works.
            again = await failing.transaction("a@example.org", ["ok@example.test"], message("2"))
            assert again.code == 250, again

    assert len(journal.entries("raising")) == 1
    if code == 451:
        assert answer.text == "4.3.0 Temporary failure, please try again later"
        assert bodies_in(var_dir, "example.test", "boom") == []
    else:
        assert bodies_in(var_dir, "example.test", "boom") == [message("boom@example.test")]
    assert bodies_in(var_dir, "example.test", "ok") == sorted(
        [message("ok@example.test"), message("2")]
    )
    [failure] = [r for r in caplog.records if "failed on data_post" in r.getMessage()]
    assert "plugin boom" in failure.getMessage()
    assert failure.exc_info is not None
    assert "boom in data_post" in str(failure.exc_info[1])
