"""The limit plugin's rates through the daemon (``app.run``) over real loopback sockets, with
smtplib as the client: a client over its connection rate is turned away with 421 before any
banner while an exempt address is not; a client over its recipient rate gets 450 4.7.1 for
the recipient past it and the rest of the message is delivered."""

from __future__ import annotations

import smtplib
from collections.abc import Mapping
from email.message import EmailMessage
from pathlib import Path

import pytest
import trio

from tests.helpers.maildir import messages_in
from tests.integration_envelope.kit import OUTSIDE, envelope_config
from tests.integration_plugins.kit import Running, running_app
from trio_mta.config import Config

CAP = 20  # seconds, real time
ORDER = ("limit", "rcpt_to_host_list", "queue_maildir")


def rates_config(var_dir: Path, limit: Mapping[str, object]) -> Config:
    # 127.0.0.1 stays exempt (as loopback is by default); OUTSIDE is the counted client.
    return envelope_config(
        var_dir, ORDER, {"limit": {"rate_exempt": ["127.0.0.1/32"], **limit}}, {}
    )


def message(tag: str) -> EmailMessage:
    msg = EmailMessage()
    msg["From"] = "alice@sender.test"
    msg["Subject"] = tag
    msg.set_content(f"body of {tag}\n")
    return msg


def send(
    mta: Running, source: str, recipients: list[str], tag: str
) -> dict[str, tuple[int, bytes]]:
    with smtplib.SMTP(mta.host, mta.port, source_address=(source, 0), timeout=CAP) as smtp:
        return smtp.send_message(message(tag), to_addrs=recipients)


async def test_a_client_over_its_connection_rate_is_refused_before_the_banner(
    tmp_path: Path,
) -> None:
    var = tmp_path / "var"
    with trio.fail_after(CAP):
        async with running_app(rates_config(var, {"max_connection_rate": 2})) as mta:
            for n in range(2):
                refused = await trio.to_thread.run_sync(
                    send, mta, OUTSIDE, ["user@example.test"], f"counted-{n}"
                )
                assert refused == {}
            with pytest.raises(smtplib.SMTPConnectError) as info:
                await trio.to_thread.run_sync(send, mta, OUTSIDE, ["user@example.test"], "third")
            assert info.value.smtp_code == 421
            error: object = info.value.smtp_error  # bytes at run time, typed str
            assert isinstance(error, bytes)
            assert error.startswith(b"4.7.0 Too many connections from your")
            for n in range(4):  # the exempt address is never counted
                refused = await trio.to_thread.run_sync(
                    send, mta, "127.0.0.1", ["user@example.test"], f"exempt-{n}"
                )
                assert refused == {}
    assert len(messages_in(var, "example.test", "user")) == 6


async def test_the_recipient_past_the_rate_is_deferred_and_the_rest_delivered(
    tmp_path: Path,
) -> None:
    var = tmp_path / "var"
    recipients = [f"user{n}@example.test" for n in range(4)]
    with trio.fail_after(CAP):
        async with running_app(rates_config(var, {"max_recipient_rate": 3})) as mta:
            refused = await trio.to_thread.run_sync(send, mta, OUTSIDE, recipients, "four")
            assert list(refused) == ["user3@example.test"]
            code, text = refused["user3@example.test"]
            assert code == 450
            assert text.startswith(b"4.7.1 Too many recipients from your address, try again in")
            # A new connection from the same address shares the spent allowance.
            with pytest.raises(smtplib.SMTPRecipientsRefused):
                await trio.to_thread.run_sync(send, mta, OUTSIDE, ["user0@example.test"], "next")
    for n in range(3):
        assert len(messages_in(var, "example.test", f"user{n}")) == 1
    assert messages_in(var, "example.test", "user3") == []
