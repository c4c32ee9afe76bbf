"""Submission out of the box: a daemon from the shipped conf/ authenticates a user that
`trio-mta passwd` added after it started, on the submission (STARTTLS) and smtps ports; a
configuration where nobody could authenticate is warned about at start-up and by `check`."""

from __future__ import annotations

import smtplib
from pathlib import Path

import trio

from .confdaemon import CAP, ConfDaemon, shipped_conf, start, stop, unverified
from .confdaemon import daemons as daemons  # the fixture
from .conftest import daemon_command, write_conf

MESSAGE = b"From: alice@example.test\r\nTo: bob@example.test\r\nSubject: hi\r\n\r\nhello\r\n"


def _submit(port: int, implicit: bool, password: str) -> None:
    ctx = unverified()
    smtp: smtplib.SMTP
    if implicit:
        smtp = smtplib.SMTP_SSL("127.0.0.1", port, timeout=10, context=ctx)
    else:
        smtp = smtplib.SMTP("127.0.0.1", port, timeout=10)
        smtp.starttls(context=ctx)
    with smtp:
        smtp.ehlo()
        assert "PLAIN" in smtp.esmtp_features.get("auth", "")
        smtp.login("alice@example.test", password)
        refused = smtp.sendmail("alice@example.test", ["bob@example.test"], MESSAGE)
        assert refused == {}


def _refused_login(port: int) -> int:
    with smtplib.SMTP("127.0.0.1", port, timeout=10) as smtp:
        smtp.starttls(context=unverified())
        try:
            smtp.login("alice@example.test", "wrong")
        except smtplib.SMTPAuthenticationError as exc:
            return exc.smtp_code
    return 0


async def test_shipped_conf_authenticates_a_user_made_with_passwd(
    daemons: list[ConfDaemon], tmp_path: Path
) -> None:
    conf = shipped_conf(tmp_path / "conf")
    assert not (conf / "auth_users").exists()  # no user yet: the daemon still starts
    var = tmp_path / "var"
    daemon = await start(daemons, conf, var, tmp_path / "daemon.log")
    assert "requires AUTH" not in daemon.log_text()
    with trio.fail_after(CAP):
        assert await trio.to_thread.run_sync(_refused_login, daemon.addresses["submission"]) == 535
        added = await trio.run_process(
            daemon_command("passwd", "--config", str(conf), "alice@example.test"),
            stdin=b"s3cret-alice\n",
            capture_stdout=True,
        )
        assert b"added to" in added.stdout
        assert (conf / "auth_users").stat().st_mode & 0o777 == 0o600
        # No reload: the plugin notices the new file.
        for name, implicit in (("submission", False), ("smtps", True)):
            port = daemon.addresses[name]
            await trio.to_thread.run_sync(_submit, port, implicit, "s3cret-alice")
    await stop(daemon)
    delivered = list((var / "maildir" / "example.test" / "bob" / "new").iterdir())
    assert len(delivered) == 2


NO_AUTH = """
[[listener]]
name = "submission"
listen = "127.0.0.1:0"
kind = "submission"

[admin]
enabled = false
"""


async def test_a_submission_port_nobody_can_use_is_warned_about(
    daemons: list[ConfDaemon], tmp_path: Path
) -> None:
    conf = write_conf(tmp_path / "conf", NO_AUTH)
    daemon = await start(daemons, conf, tmp_path / "var", tmp_path / "daemon.log")
    warnings = [line for line in daemon.log_text().splitlines() if "requires AUTH" in line]
    assert len(warnings) == 1
    assert "WARNING" in warnings[0]
    assert "'submission'" in warnings[0]
    assert "no auth plugin is loaded" in warnings[0]
    await stop(daemon)
    with trio.fail_after(CAP):
        checked = await trio.run_process(
            daemon_command("check", "--config", str(conf)),
            capture_stdout=True,
            capture_stderr=True,
        )
    assert checked.stdout.decode().startswith("configuration OK")
    [line] = checked.stderr.decode().splitlines()
    assert line.startswith("warning: listener 'submission'")
    assert "every MAIL there gets 530" in line
