"""Sans-I/O SMTP, server side: bytes in, events out; replies in, bytes out.

Theory of operation
-------------------
``receive_data`` appends to one buffer; ``next_event`` parses *one* event from its front, or says
``NEED_DATA``. A command event owes exactly one reply, given with ``send``, and ``next_event``
refuses to parse further until it is given: the reply decides the state (a MAIL answered 250
opens the transaction, one answered 550 doesn't), so the parser must never run ahead of the
replies. Pipelined commands (RFC 2920) simply wait in the buffer.

Invariants:
* Only ``<CRLF>.<CRLF>`` ends DATA (RFC 5321 §4.1.1.4). A bare CR or LF never ends it; by
  default it makes the whole message refused once the real end arrives (SMTP smuggling
  defence), or it is normalised to CRLF if the policy says so.
* The data buffer is always cut at a CRLF, so the unread part starts at a line start and a
  terminator is always found whole, whatever the packet boundaries were. (The one exception,
  the kept tail of an over-long line being dropped, is never a ".": see _drop_long_line.)
* Events and replies don't depend on the packet boundaries: which of several message problems
  is reported goes by rank, not by which was seen first.
* An over-long command line is swallowed up to its LF and answered 500 5.5.2; the session stays
  in sync. AUTH lines get the larger RFC 4954 limit.
* A BDAT chunk (RFC 3030) is always read to its announced end, even when refused, so the
  stream stays in sync.
* After STARTTLS is answered 220, any bytes already buffered are plaintext the client must not
  have sent; ``start_tls`` hands them back to be logged and dropped, never parsed
  (CVE-2011-0411 family).
"""

from __future__ import annotations

import re
from collections.abc import Callable

from . import _replies as R
from ._address import AddressError, parse_mail_params, parse_path, parse_rcpt_params
from ._events import (
    NEED_DATA,
    Auth,
    AuthResponse,
    BdatCommand,
    ConnectionClosed,
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
    Quit,
    RcptTo,
    Rejected,
    Rset,
    StartTLS,
    Unrecognized,
    Vrfy,
)
from ._replies import Reply
from ._state import IN_TRANSACTION, BareLineEndingPolicy, ProtocolLimits, State


class LocalProtocolError(Exception):
    """The driver used the API out of order (a bug in our code, not the client's)."""


_ANY_LINE_END = re.compile(rb"\r\n|\r|\n")


_TERMINATOR = b"\r\n.\r\n"
# Message problems, most decisive first (see _note_problem).
_PROBLEM_RANK = (R.TEXT_LINE_TOO_LONG, R.BARE_LINE_ENDING, R.MESSAGE_TOO_BIG)


class ServerConnection:
    """The server role of one SMTP connection. Not thread-safe; one driver task owns it."""

    # One per connection, thousands held idle: slots keep each one small.
    __slots__ = (
        "_buf",
        "_chunk_cr",
        "_chunk_last",
        "_chunk_left",
        "_chunk_pending",
        "_chunk_valid",
        "_data_end_pending",
        "_data_problem",
        "_data_size",
        "_eof",
        "_owed",
        "_skipping_line",
        "authenticated",
        "extended",
        "helo",
        "limits",
        "recipient_count",
        "smtputf8",
        "state",
        "tls",
    )

    def __init__(self, limits: ProtocolLimits | None = None, *, tls: bool = False) -> None:
        self.limits = limits or ProtocolLimits()
        self.state = State.CONNECTED
        self.tls = tls
        self.authenticated = False
        self.helo: str | None = None
        self.extended = False
        self.smtputf8 = False
        self.recipient_count = 0
        self._buf = bytearray()
        self._eof = False
        self._owed: Event | None = None
        self._skipping_line = False
        # DATA / BDAT reading
        self._data_size = 0
        self._data_problem: Reply | None = None
        self._chunk_left = 0
        self._chunk_last = False
        self._chunk_valid = False
        # The last BDAT piece ended in CR: its LF may open the next piece (or chunk).
        self._chunk_cr = False
        # A BDAT chunk (even of size 0) owes its end event until it has been emitted.
        self._chunk_pending = False
        self._data_end_pending = False

    # -- input ---------------------------------------------------------------------------------

    def receive_data(self, data: bytes) -> None:
        """Feed bytes from the client; ``b""`` means the client closed its side."""
        if data:
            self._buf += data
        else:
            self._eof = True

    @property
    def buffered(self) -> int:
        return len(self._buf)

    @property
    def owes_reply(self) -> bool:
        return self._owed is not None

    @property
    def in_transaction(self) -> bool:
        return self.state in IN_TRANSACTION

    def next_event(self) -> Event | NeedData:
        """Parse the next event, or return ``NEED_DATA``.

        Raises:
            LocalProtocolError: a reply for the previous command event was not sent yet.
        """
        if self._owed is not None:
            raise LocalProtocolError(f"a reply is owed for {self._owed!r}")
        if self.state is State.CLOSED:
            return ConnectionClosed()
        if self.state is State.TLS_PENDING:
            raise LocalProtocolError("start_tls() must be called after the 220 reply")
        ev: Event | NeedData | None
        if self._chunk_pending or self.state is State.DATA:
            ev = self._read_message()
        else:
            ev = self._read_command()
            if ev is None:  # an out-of-sequence BDAT: its chunk is read and dropped
                ev = self._read_message()
        if ev is NEED_DATA:
            if self._eof:
                self.state = State.CLOSED
                return ConnectionClosed()
            return NEED_DATA
        if not isinstance(ev, DataChunk | BdatCommand | ConnectionClosed):
            self._owed = ev
        return ev

    # -- output --------------------------------------------------------------------------------

    def send(self, reply: Reply) -> bytes:
        """Render ``reply`` and apply its effect on the state. Without an owed command (the
        greeting, or a 421 when the server ends the session) it just renders."""
        ev = self._owed
        self._owed = None
        if reply.code == 421:
            self.state = State.CLOSED
        elif ev is not None:
            self._after_reply(ev, reply)
        return reply.to_bytes()

    def start_tls(self) -> bytes:
        """Enter TLS after the 220 reply. Returns the plaintext the client pipelined behind
        STARTTLS (to be logged and discarded); every earlier SMTP state is forgotten."""
        if self.state is not State.TLS_PENDING:
            raise LocalProtocolError("start_tls() without an accepted STARTTLS")
        injected = bytes(self._buf)
        self._buf.clear()
        self.tls = True
        self._reset_session()
        return injected

    # -- transitions (Rule 1: all of them live here) ---------------------------------------------

    def _after_reply(self, ev: Event, reply: Reply) -> None:
        ok = reply.code < 400
        if isinstance(ev, Helo):
            if reply.code == 250:
                self._clear_transaction()
                self.helo = ev.name
                self.extended = ev.extended
                self.state = State.READY
        elif isinstance(ev, MailFrom):
            if ok:
                self.state = State.MAIL
                self.smtputf8 = ev.params.smtputf8
        elif isinstance(ev, RcptTo):
            if ok:
                self.state = State.RCPT
                self.recipient_count += 1
        elif isinstance(ev, DataCommand):
            if reply.code == 354:
                self.state = State.DATA
                self._data_size = 0
                self._data_problem = None
        elif isinstance(ev, EndOfData):
            if self._chunk_valid or self.state is State.DATA:
                self._clear_transaction()
            self._chunk_valid = False
        elif isinstance(ev, EndOfChunk):
            if self._chunk_valid and not ok:
                self._clear_transaction()
            elif self._chunk_valid:
                self.state = State.BDAT
            self._chunk_valid = False
        elif isinstance(ev, Rset):
            if ok:
                self._clear_transaction()
        elif isinstance(ev, Quit):
            self.state = State.CLOSED
        elif isinstance(ev, StartTLS):
            if reply.code == 220:
                self.state = State.TLS_PENDING
        elif isinstance(ev, Auth | AuthResponse):
            if reply.code == 334:
                self.state = State.AUTH
            else:
                if reply.code == 235:
                    self.authenticated = True
                if self.state is State.AUTH:
                    self.state = State.READY

    def _clear_transaction(self) -> None:
        self.state = State.READY if self.helo is not None else State.CONNECTED
        self.smtputf8 = False
        self.recipient_count = 0
        self._data_size = 0
        self._data_problem = None

    def _reset_session(self) -> None:
        self.helo = None
        self.extended = False
        self.authenticated = False
        self._clear_transaction()

    # -- command lines --------------------------------------------------------------------------

    def _read_command(self) -> Event | NeedData | None:
        buf = self._buf
        nl = buf.find(b"\n")
        if self._skipping_line:
            if nl < 0:
                del buf[:-1]  # keep nothing of the over-long line but a possible CR
                return NEED_DATA
            del buf[: nl + 1]
            self._skipping_line = False
            return Rejected("", R.LINE_TOO_LONG)
        # Most lines are short: the AUTH-aware limit is only worked out for a long one.
        length = nl + 1 if nl >= 0 else len(buf)
        if length > self.limits.command_line and length > self._line_limit():
            if nl < 0:
                self._skipping_line = True
                del buf[:-1]
                return NEED_DATA
            del buf[: nl + 1]
            return Rejected("", R.LINE_TOO_LONG)
        if nl < 0:
            return NEED_DATA
        end = nl - 1 if nl and buf[nl - 1] == 0x0D else nl
        raw = bytes(buf[:end])
        del buf[: nl + 1]
        if b"\r" in raw or b"\x00" in raw:
            return Rejected("", R.reply(500, "5.5.2", "Syntax error: bare CR or NUL in command"))
        try:
            line = raw.decode("utf-8")
        except UnicodeDecodeError:
            return Rejected("", R.BAD_ENCODING)
        if self.state is State.AUTH:
            return AuthResponse(line.strip())
        verb, _, arg = line.partition(" ")
        verb = verb.upper()
        handler = _COMMANDS.get(verb)
        if handler is None:
            return Unrecognized(verb, line)
        return handler(self, verb, arg)

    def _line_limit(self) -> int:
        if self.state is State.AUTH or self._buf[:5].upper() == b"AUTH ":
            return max(self.limits.auth_line, self.limits.command_line)
        return self.limits.command_line

    def _sequence_error(self, verb: str) -> Rejected | None:
        """The 503 for a command that needs a greeting or may not interrupt BDAT."""
        if self.state is State.CONNECTED:
            return Rejected(verb, R.NEED_HELO)
        if self.state is State.BDAT:
            return Rejected(verb, R.BDAT_EXPECTED)
        return None

    def _rset(self, verb: str, arg: str) -> Event:
        return Rejected(verb, R.SYNTAX_NO_ARGS) if arg.strip() else Rset()

    def _quit(self, verb: str, arg: str) -> Event:
        return Rejected(verb, R.SYNTAX_NO_ARGS) if arg.strip() else Quit()

    def _helo(self, verb: str, arg: str) -> Event:
        name = arg.strip()
        if not name or " " in name:
            return Rejected(verb, R.SYNTAX_HELO)
        return Helo(name, verb == "EHLO")

    def _mail(self, verb: str, arg: str) -> Event:
        err = self._sequence_error(verb)
        if err is not None:
            return err
        if self.state is not State.READY:
            return Rejected(verb, R.NESTED_MAIL)
        if arg[:5].upper() != "FROM:":
            return Rejected(verb, R.SYNTAX_MAIL)
        text = arg[5:].lstrip(" ")
        try:
            # SMTPUTF8 must be known before the path is judged, so peek at the parameters.
            utf8 = " SMTPUTF8" in text.upper()
            sender, rest = parse_path(text, utf8=utf8, allow_null=True, allow_postmaster=False)
            params = parse_mail_params(rest.rstrip(" "))
            if utf8 and not params.smtputf8:
                # The peek saw "SMTPUTF8" inside the path itself: judge the path as plain ASCII.
                parse_path(text, utf8=False, allow_null=True, allow_postmaster=False)
        except AddressError as exc:
            reply = exc.reply
            if reply is R.BAD_ADDRESS:
                reply = R.BAD_SENDER
            return Rejected(verb, reply)
        if params.size is not None and params.size > self.limits.max_message_size:
            return Rejected(verb, R.MESSAGE_TOO_BIG)
        if params.verp is not None and sender is None:
            return Rejected(verb, R.XVERP_NULL_SENDER)  # a bounce has no return path to vary
        return MailFrom(sender, params)

    def _rcpt(self, verb: str, arg: str) -> Event:
        err = self._sequence_error(verb)
        if err is not None:
            return err
        if self.state not in (State.MAIL, State.RCPT):
            return Rejected(verb, R.NEED_MAIL)
        if arg[:3].upper() != "TO:":
            return Rejected(verb, R.SYNTAX_RCPT)
        if self.recipient_count >= self.limits.max_recipients:
            return Rejected(verb, R.TOO_MANY_RECIPIENTS)
        text = arg[3:].lstrip(" ")
        try:
            rcpt, rest = parse_path(
                text, utf8=self.smtputf8, allow_null=False, allow_postmaster=True
            )
            assert rcpt is not None
            params = parse_rcpt_params(rest.rstrip(" "))
        except AddressError as exc:
            return Rejected(verb, exc.reply)
        return RcptTo(rcpt, params)

    def _data(self, verb: str, arg: str) -> Event:
        if arg.strip():
            return Rejected(verb, R.SYNTAX_NO_ARGS)
        if self.state is State.BDAT:
            return Rejected(verb, R.DATA_AFTER_BDAT)
        err = self._sequence_error(verb)
        if err is not None:
            return err
        if self.state is State.READY:
            return Rejected(verb, R.NEED_MAIL)
        if self.state is not State.RCPT:
            return Rejected(verb, R.NEED_RCPT)
        return DataCommand()

    def _bdat(self, verb: str, arg: str) -> Event | None:
        words = arg.split()
        if not 1 <= len(words) <= 2 or len(words[0]) > 15:
            return Rejected(verb, R.SYNTAX_BDAT)
        if not (words[0].isascii() and words[0].isdigit()):  # "²".isdigit() is True
            return Rejected(verb, R.SYNTAX_BDAT)
        if len(words) == 2 and words[1].upper() != "LAST":
            return Rejected(verb, R.SYNTAX_BDAT)
        size = int(words[0])
        last = len(words) == 2
        self._chunk_left = size
        self._chunk_last = last
        self._chunk_valid = self.state in (State.RCPT, State.BDAT)
        self._chunk_pending = True
        if self._chunk_valid:
            if self.state is State.RCPT:
                self._data_size = 0
                self._data_problem = None
                self._chunk_cr = False
            self.state = State.BDAT
            return BdatCommand(size, last)
        # Out of sequence: the chunk is still read (and dropped) so the stream stays in sync.
        if self.state is State.CONNECTED:
            self._data_problem = R.NEED_HELO
        elif self.state in (State.READY, State.MAIL):
            self._data_problem = R.NEED_RCPT if self.state is State.MAIL else R.NEED_MAIL
        else:
            self._data_problem = R.BAD_SEQUENCE
        return None

    def _noop(self, verb: str, arg: str) -> Event:
        return Noop()

    def _vrfy(self, verb: str, arg: str) -> Event:
        if not arg.strip():
            return Rejected(verb, R.reply(501, "5.5.4", "Syntax: VRFY address"))
        return Vrfy(arg.strip())

    def _expn(self, verb: str, arg: str) -> Event:
        if not arg.strip():
            return Rejected(verb, R.reply(501, "5.5.4", "Syntax: EXPN list"))
        return Expn(arg.strip())

    def _help(self, verb: str, arg: str) -> Event:
        return Help(arg.strip())

    def _starttls(self, verb: str, arg: str) -> Event:
        if arg.strip():
            return Rejected(verb, R.SYNTAX_NO_ARGS)
        if self.tls:
            return Rejected(verb, R.ALREADY_TLS)
        if self.state in IN_TRANSACTION:
            return Rejected(verb, R.BAD_SEQUENCE)
        return StartTLS()

    def _auth(self, verb: str, arg: str) -> Event:
        words = arg.split()
        if not 1 <= len(words) <= 2:
            return Rejected(
                verb, R.reply(501, "5.5.4", "Syntax: AUTH mechanism [initial-response]")
            )
        if self.state is State.CONNECTED:
            return Rejected(verb, R.NEED_HELO)
        if self.authenticated:
            return Rejected(verb, R.ALREADY_AUTH)
        if self.state in IN_TRANSACTION:
            return Rejected(verb, R.AUTH_IN_TRANSACTION)
        return Auth(words[0].upper(), words[1] if len(words) == 2 else None)

    # -- message content (DATA and BDAT) --------------------------------------------------------

    def _read_message(self) -> Event | NeedData:
        if self.state is State.DATA:
            return self._read_data()
        return self._read_chunk()

    def _read_chunk(self) -> Event | NeedData:
        buf = self._buf
        if self._chunk_left:
            if not buf:
                return NEED_DATA
            take = min(self._chunk_left, len(buf))
            piece = bytes(buf[:take])
            del buf[:take]
            self._chunk_left -= take
            if self._chunk_valid:
                accepted = self._accept_content(self._chunk_line_ends(piece))
                if accepted:
                    return DataChunk(accepted)
            if self._chunk_left:
                return NEED_DATA
        self._chunk_pending = False
        if self._chunk_last and self._chunk_valid and self._chunk_cr:
            self._chunk_cr = False
            if self.limits.bare_line_endings is BareLineEndingPolicy.REJECT:
                self._note_problem(R.BARE_LINE_ENDING)  # the message ended in a bare CR
        problem = self._data_problem
        if not self._chunk_valid:
            self._data_problem = None
        if self._chunk_last:
            return EndOfData(self._data_size, problem)
        return EndOfChunk(self._data_size, problem)

    def _chunk_line_ends(self, piece: bytes) -> bytes:
        """Apply the bare-line-ending policy to BDAT content as to DATA's: without BINARYMIME
        a chunk is still CRLF text (RFC 3030 §3), and a bare LF stored here would reach the
        next hop's DATA stream, where a lax server may read it as a line end (SMTP smuggling).
        A CRLF may be split between pieces or chunks, hence ``_chunk_cr``."""
        carried = self._chunk_cr
        if self.limits.bare_line_endings is BareLineEndingPolicy.NORMALIZE:
            if carried and piece.startswith(b"\n"):
                piece = piece[1:]  # the CR before it was already sent on as CRLF
            self._chunk_cr = piece.endswith(b"\r")
            if b"\r" in piece or b"\n" in piece:
                piece = _ANY_LINE_END.sub(b"\r\n", piece)
            return piece
        text = b"\r" + piece if carried else piece
        self._chunk_cr = text.endswith(b"\r")
        if self._chunk_cr:
            text = text[:-1]
        crlf = text.count(b"\r\n")
        if text.count(b"\n") != crlf or text.count(b"\r") != crlf:
            self._note_problem(R.BARE_LINE_ENDING)
        return piece

    def _accept_content(self, piece: bytes) -> bytes:
        """Count ``piece`` against the size limit; return what should reach the driver."""
        self._data_size += len(piece)
        if self._data_problem is not None:
            return b""
        if self._data_size > self.limits.max_message_size:
            self._data_problem = R.MESSAGE_TOO_BIG
            return b""
        return piece

    def _read_data(self) -> Event | NeedData:
        buf = self._buf
        if self._data_end_pending:
            self._data_end_pending = False
            return EndOfData(self._data_size, self._data_problem)
        if buf.startswith(b".\r\n"):
            end = 0
        else:
            found = buf.find(_TERMINATOR)
            end = found + 2 if found >= 0 else -1
        if end >= 0:
            portion = bytes(buf[:end])
            del buf[: end + 3]
            chunk = self._clean(portion) if portion else b""
            if chunk:
                self._data_end_pending = True  # the end event comes at the next call
                return DataChunk(chunk)
            return EndOfData(self._data_size, self._data_problem)
        cut = buf.rfind(b"\r\n")
        if cut < 0:
            if len(buf) > self.limits.text_line:
                self._drop_long_line()
            return NEED_DATA
        portion = bytes(buf[: cut + 2])
        del buf[: cut + 2]
        if len(buf) > self.limits.text_line:
            self._drop_long_line()
        chunk = self._clean(portion)
        return DataChunk(chunk) if chunk else self._read_data()

    def _drop_long_line(self) -> None:
        """Refuse the message and forget the buffered part of an over-long line. A final CR is
        kept (it may begin the line's CRLF); anything else becomes one filler octet, so that
        the next bytes are still read as mid-line: a kept "." would look like a line start,
        and ".\r\n" after it would end DATA."""
        self._note_problem(R.TEXT_LINE_TOO_LONG)
        self._buf[:] = b"\r" if self._buf.endswith(b"\r") else b"-"

    def _note_problem(self, reply: Reply) -> None:
        # By rank, not by arrival: which problem is seen first depends on where the packets
        # were cut (an over-long line is dropped unread; bare line endings stop the counting).
        current = self._data_problem
        if current is None or _PROBLEM_RANK.index(reply) < _PROBLEM_RANK.index(current):
            self._data_problem = reply

    def _clean(self, portion: bytes) -> bytes:
        """Check and dot-unstuff whole lines (``portion`` ends with CRLF, starts a line)."""
        limit = self.limits.text_line - 2
        if len(portion) > limit and _longest_line(portion) > limit:
            self._note_problem(R.TEXT_LINE_TOO_LONG)
        crlf = portion.count(b"\r\n")
        if portion.count(b"\n") != crlf or portion.count(b"\r") != crlf:
            if self.limits.bare_line_endings is BareLineEndingPolicy.REJECT:
                self._note_problem(R.BARE_LINE_ENDING)
                return b""
            normalise = True
        else:
            normalise = False
        if b"\r\n." in portion or portion.startswith(b"."):
            portion = (b"\r\n" + portion).replace(b"\r\n.", b"\r\n")[2:]
        if normalise:
            portion = _ANY_LINE_END.sub(b"\r\n", portion)
        return self._accept_content(portion)


def _longest_line(portion: bytes) -> int:
    """The longest line of ``portion`` as its sender wrote it: a leading dot is transparency
    stuffing and not part of the text (RFC 5321 §4.5.3.1.6), so a 998-octet line that starts
    with a dot may arrive as 999 octets plus CRLF."""
    return max(len(line) - line.startswith(b".") for line in portion.split(b"\r\n"))


# One table for the class, not one per connection (it is a per-connection cost otherwise).
_COMMANDS: dict[str, Callable[[ServerConnection, str, str], Event | None]] = {
    "HELO": ServerConnection._helo,
    "EHLO": ServerConnection._helo,
    "MAIL": ServerConnection._mail,
    "RCPT": ServerConnection._rcpt,
    "DATA": ServerConnection._data,
    "BDAT": ServerConnection._bdat,
    "RSET": ServerConnection._rset,
    "NOOP": ServerConnection._noop,
    "QUIT": ServerConnection._quit,
    "VRFY": ServerConnection._vrfy,
    "EXPN": ServerConnection._expn,
    "HELP": ServerConnection._help,
    "STARTTLS": ServerConnection._starttls,
    "AUTH": ServerConnection._auth,
}
