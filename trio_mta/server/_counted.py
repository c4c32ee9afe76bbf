"""Every reply the server sends, counted by the SMTP stage it answers and its exact code.

The driver sends all of its replies through ``ServerConnection.send`` (the banner, refusals at
connect, each command's answer, AUTH challenges, timeouts and shutdown 421s). This subclass
remembers the command event it handed out last and counts each reply against it on the way out:
one dictionary addition per reply, bus watched or not, feeding ``/metrics``.

Stages are a fixed, small set (label values must stay bounded): ``connect`` for what is sent
before any command (banner, connect refusal, early talker), ``session`` for what is sent with no
command owed later (timeouts, shutdown, too many errors), and otherwise the command's own stage.
"""

from __future__ import annotations

from ..events import Counters
from ..protocol import (
    NEED_DATA,
    Auth,
    AuthResponse,
    BdatCommand,
    DataChunk,
    DataCommand,
    EndOfChunk,
    EndOfData,
    Event,
    Expn,
    Helo,
    Help,
    MailFrom,
    NeedData,
    Noop,
    ProtocolLimits,
    Quit,
    RcptTo,
    Rejected,
    Reply,
    Rset,
    ServerConnection,
    StartTLS,
    Unrecognized,
    Vrfy,
)

STAGES: dict[type[object], str] = {
    Helo: "helo",
    MailFrom: "mail",
    RcptTo: "rcpt",
    DataCommand: "data",
    EndOfData: "data",
    BdatCommand: "bdat",
    EndOfChunk: "bdat",
    Rset: "rset",
    Noop: "noop",
    Quit: "quit",
    Vrfy: "vrfy",
    Expn: "expn",
    Help: "help",
    StartTLS: "starttls",
    Auth: "auth",
    AuthResponse: "auth",
    Unrecognized: "unknown",
}
# A command the protocol layer refused itself names its verb: the same stages, bounded.
_VERBS = {
    "HELO": "helo", "EHLO": "helo", "MAIL": "mail", "RCPT": "rcpt", "DATA": "data",
    "BDAT": "bdat", "RSET": "rset", "NOOP": "noop", "QUIT": "quit", "VRFY": "vrfy",
    "EXPN": "expn", "HELP": "help", "STARTTLS": "starttls", "AUTH": "auth",
}  # fmt: skip


def stage_of(event: object) -> str:
    if type(event) is Rejected:
        return _VERBS.get(event.command.upper(), "unknown")
    return STAGES.get(type(event), "unknown")


class CountedConnection(ServerConnection):
    """A ``ServerConnection`` that counts its replies in ``counters`` (by stage and code)."""

    __slots__ = ("_counters", "_sent", "_stage")

    def __init__(
        self, counters: Counters, limits: ProtocolLimits | None = None, *, tls: bool = False
    ) -> None:
        super().__init__(limits, tls=tls)
        self._counters = counters
        self._stage = "connect"
        self._sent = False

    def next_event(self) -> Event | NeedData:
        ev = super().next_event()
        if ev is not NEED_DATA and type(ev) is not DataChunk and self.owes_reply:
            self._stage = stage_of(ev)
        return ev

    def send(self, reply: Reply) -> bytes:
        stage = self._stage if self.owes_reply else "session" if self._sent else "connect"
        self._sent = True
        self._counters.reply(stage, reply.code)
        return super().send(reply)
