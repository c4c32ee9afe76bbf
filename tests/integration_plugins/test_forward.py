"""Forwarding through the daemon: ``[plugins] order = ["rcpt_to_host_list",
"queue_smtp_forward"]`` read from a configuration directory (``conf/plugins/*.toml``), smtplib
clients in threads, aiosmtpd and Postfix's smtp-sink downstream. Our 250 means the downstream
said 250; its refusals reach our client with its codes; no downstream means try later."""

from __future__ import annotations

import email.utils
import smtplib
import time
from collections.abc import Callable
from functools import partial
from pathlib import Path

import attrs
import trio

from tests.helpers.maildir import split_received
from tests.smtpclient.peers import HOST, Recorder, aiosmtpd_server, smtp_sink, unused_port
from trio_mta.config import Config, ListenerConfig, load_config

from .kit import running_app

CAP = 20  # seconds, real time
# Dots at line starts (smtplib stuffs them, we unstuff), a lone dot, 8-bit text.
BODY = b"\r\n.leading dot\r\n..two dots\r\n.\r\nnot the end\r\ncaf\xc3\xa9\r\n"


def message(tag: str) -> bytes:
    return f"From: a@example.org\r\nSubject: {tag}\r\n".encode() + BODY


@attrs.frozen
class Sent:
    code: int
    text: str
    txn: str | None  # our transaction id, from "Message queued as <id> (forwarded: ...)"


def send(port: int, rcpt: str, data: bytes) -> Sent:
    """One transaction with smtplib; the reply to the data, whatever it is."""
    with smtplib.SMTP(HOST, port, local_hostname="client.example", timeout=10) as smtp:
        smtp.ehlo()
        code, _ = smtp.mail("a@example.org", ["BODY=8BITMIME"])
        assert code == 250
        code, _ = smtp.rcpt(rcpt)
        assert code == 250
        raw: bytes | str
        try:
            code, raw = smtp.data(data)
        except smtplib.SMTPDataError as exc:
            code, raw = exc.smtp_code, exc.smtp_error
        text = raw.decode() if isinstance(raw, bytes) else raw
        txn = text.split("queued as ", 1)[1].split(" ", 1)[0] if code == 250 else None
        return Sent(code, text, txn)


def write_conf(directory: Path, forward_toml: str) -> Config:
    (directory / "plugins").mkdir(parents=True)
    (directory / "trio-mta.toml").write_text(
        '[plugins]\norder = ["rcpt_to_host_list", "queue_smtp_forward"]\n'
    )
    (directory / "plugins" / "queue_smtp_forward.toml").write_text(forward_toml)
    (directory / "plugins" / "rcpt_to_host_list.toml").write_text(
        'host_list_regex = [".*\\\\.test"]\n'
    )
    config = load_config(directory)
    assert config.plugins.order == ("rcpt_to_host_list", "queue_smtp_forward")
    listeners = (ListenerConfig(name="mx", host=HOST, port=0),)
    server = attrs.evolve(config.server, var_dir=directory.parent / "var")
    return attrs.evolve(config, listeners=listeners, server=server)


async def in_threads(*calls: Callable[[], Sent]) -> list[Sent]:
    """Run every call at once, each in its own thread; their results in order."""
    results: list[Sent | None] = [None] * len(calls)

    async def one(index: int) -> None:
        results[index] = await trio.to_thread.run_sync(calls[index])

    async with trio.open_nursery() as nursery:
        for index in range(len(calls)):
            nursery.start_soon(one, index)
    return [r for r in results if r is not None]


def expected_received(sent: Sent, rcpt: str, received: bytes) -> bytes:
    """Our trace header, byte for byte, with the date it carries (checked to be now)."""
    date = received.rsplit(b"; ", 1)[1][:-2].decode()
    assert abs(email.utils.parsedate_to_datetime(date).timestamp() - time.time()) < 60
    return (
        f"Received: from client.example ([127.0.0.1])\r\n"
        f"\tby localhost (trio-mta) with ESMTP id {sent.txn}\r\n"
        f"\tfor <{rcpt}>; {date}\r\n"
    ).encode()


async def test_messages_arrive_byte_exact_at_aiosmtpd_and_smtp_sink(tmp_path: Path) -> None:
    recorder = Recorder()
    with trio.fail_after(CAP):
        async with aiosmtpd_server(recorder) as aio_port, smtp_sink() as sink:
            config = write_conf(
                tmp_path / "conf",
                f'host = "{HOST}"\nport = {aio_port}\ntimeout = 5\n'
                f'[domains."sink.test"]\nhost = "{HOST}"\nport = {sink.port}\n',
            )
            async with running_app(config) as mta:
                rcpts = ["bob@aio.test", "carol@aio.test", "dave@sink.test", "erin@sink.test"]
                sent = await in_threads(*(partial(send, mta.port, r, message(r)) for r in rcpts))
            dumps = sink.dumps()

    assert [s.code for s in sent] == [250] * 4, sent
    by_rcpt = dict(zip(rcpts, sent, strict=True))
    assert sorted(r.rcpt_tos for r in recorder.received) == [("bob@aio.test",), ("carol@aio.test",)]
    for got in recorder.received:
        [rcpt] = got.rcpt_tos
        received, rest = split_received(got.content)
        assert rest == message(rcpt)
        assert received == expected_received(by_rcpt[rcpt], rcpt, received)
        assert got.mail_from == "a@example.org"
        assert "BODY=8BITMIME" in got.mail_options
        assert "(forwarded: Ok: queued as DOWNSTREAM1)" in by_rcpt[rcpt].text
    assert sorted(d.rcpt_args for d in dumps) == [("<dave@sink.test>",), ("<erin@sink.test>",)]
    for dump in dumps:
        rcpt = dump.rcpt_args[0][1:-1]
        content = dump.body[:-1].replace(b"\n", b"\r\n")  # smtp-sink's LF dump, and its last LF
        received, rest = split_received(content)
        assert rest == message(rcpt)
        assert received == expected_received(by_rcpt[rcpt], rcpt, received)


async def test_downstream_refusals_and_absence_reach_our_client(tmp_path: Path) -> None:
    refuse_rcpt = Recorder(rcpt={"bob@no-rcpt.test": "550 5.1.1 no such user"})
    refuse_data = Recorder(data="554 5.6.0 content refused")
    accept = Recorder()
    with trio.fail_after(CAP):
        async with (
            aiosmtpd_server(refuse_rcpt) as rcpt_port,
            aiosmtpd_server(refuse_data) as data_port,
            aiosmtpd_server(accept) as ok_port,
        ):
            config = write_conf(
                tmp_path / "conf",
                f'host = "{HOST}"\nport = {ok_port}\ntimeout = 5\n'
                f'[domains."no-rcpt.test"]\nhost = "{HOST}"\nport = {rcpt_port}\n'
                f'[domains."no-data.test"]\nhost = "{HOST}"\nport = {data_port}\n'
                f'[domains."down.test"]\nhost = "{HOST}"\nport = {unused_port()}\n',
            )
            async with running_app(config) as mta:
                rcpts = ["bob@no-rcpt.test", "bob@no-data.test", "bob@down.test", "bob@ok.test"]
                sent = await in_threads(*(partial(send, mta.port, r, message(r)) for r in rcpts))

    assert [(s.code, s.text) for s in sent] == [
        (550, "5.1.1 <bob@no-rcpt.test>: no such user"),
        (554, "5.6.0 content refused"),
        (451, "4.4.1 Downstream server unavailable, try again later"),
        (250, f"2.0.0 Message queued as {sent[3].txn} (forwarded: Ok: queued as DOWNSTREAM1)"),
    ]
    assert refuse_rcpt.received == refuse_data.received == []
    assert "DATA" not in refuse_rcpt.commands  # a refused recipient: the data was never sent
    [got] = accept.received
    assert split_received(got.content)[1] == message("bob@ok.test")
