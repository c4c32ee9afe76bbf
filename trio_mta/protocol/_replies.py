"""SMTP replies (RFC 5321 §4.2) with enhanced status codes (RFC 3463), and the catalogue of
replies the protocol layer produces by itself.

A reply is data: the driver and the plugins build them, ``to_bytes`` renders them. Multi-line
replies use ``250-`` continuation lines; the enhanced code is repeated on every line, as
RFC 2034 §4 asks.
"""

from __future__ import annotations

import attrs


def _lines(value: str | tuple[str, ...]) -> tuple[str, ...]:
    if isinstance(value, str):
        return (value,)
    return value


@attrs.frozen
class Reply:
    """One SMTP reply: a three-digit code, an optional enhanced code, one or more text lines."""

    code: int
    enhanced: str | None
    text: tuple[str, ...] = attrs.field(converter=_lines)

    def __attrs_post_init__(self) -> None:
        if not 200 <= self.code <= 599:
            raise ValueError(f"reply code out of range: {self.code}")
        for line in self.text:
            if "\r" in line or "\n" in line:
                raise ValueError("reply text must not contain CR or LF")

    @property
    def is_positive(self) -> bool:
        return self.code < 400

    @property
    def is_transient(self) -> bool:
        return 400 <= self.code < 500

    @property
    def is_permanent(self) -> bool:
        return self.code >= 500

    def to_bytes(self) -> bytes:
        prefix = f"{self.code} {self.enhanced} " if self.enhanced else f"{self.code} "
        text = self.text or ("",)
        if len(text) == 1:
            return (prefix + text[0] + "\r\n").encode("utf-8")
        cont = prefix.replace(" ", "-", 1)
        out = [cont + line for line in text[:-1]]
        out.append(prefix + text[-1])
        return ("\r\n".join(out) + "\r\n").encode("utf-8")

    def __str__(self) -> str:
        head = f"{self.code} {self.enhanced}" if self.enhanced else str(self.code)
        return f"{head} {' / '.join(self.text)}"


def reply(code: int, enhanced: str | None, *text: str) -> Reply:
    return Reply(code, enhanced, text)


# The replies the protocol layer emits on its own (syntax, sequence, limits). The driver and the
# plugins may build others; tests compare against these.
OK = reply(250, "2.0.0", "OK")
SENDER_OK = reply(250, "2.1.0", "Sender OK")
RECIPIENT_OK = reply(250, "2.1.5", "Recipient OK")
START_DATA = reply(354, None, "End data with <CR><LF>.<CR><LF>")
RESET_OK = reply(250, "2.0.0", "Reset OK")
NOOP_OK = reply(250, "2.0.0", "OK")
BYE = reply(221, "2.0.0", "Bye")
VRFY_CANNOT = reply(252, "2.5.0", "Cannot VRFY user, but will accept message and attempt delivery")
EXPN_DISABLED = reply(502, "5.5.1", "EXPN not available")
HELP = reply(214, "2.0.0", "See RFC 5321: HELO EHLO MAIL RCPT DATA BDAT RSET NOOP QUIT VRFY HELP")
READY_TLS = reply(220, "2.0.0", "Ready to start TLS")

LINE_TOO_LONG = reply(500, "5.5.2", "Line too long")
UNRECOGNIZED = reply(500, "5.5.1", "Command unrecognized")
SYNTAX_HELO = reply(501, "5.5.4", "Syntax: HELO/EHLO hostname")
SYNTAX_MAIL = reply(501, "5.5.4", "Syntax: MAIL FROM:<address> [parameters]")
SYNTAX_RCPT = reply(501, "5.5.4", "Syntax: RCPT TO:<address> [parameters]")
SYNTAX_BDAT = reply(501, "5.5.4", "Syntax: BDAT size [LAST]")
SYNTAX_NO_ARGS = reply(501, "5.5.4", "Syntax error: no arguments allowed")
BAD_ENCODING = reply(501, "5.5.2", "Syntax error: invalid UTF-8 in command")
BAD_BASE64 = reply(501, "5.5.2", "Invalid base64 data")
AUTH_CANCELLED = reply(501, "5.0.0", "Authentication cancelled")
NEED_HELO = reply(503, "5.5.1", "Error: send HELO/EHLO first")
NESTED_MAIL = reply(503, "5.5.1", "Error: nested MAIL command")
NEED_MAIL = reply(503, "5.5.1", "Error: need MAIL command")
NEED_RCPT = reply(503, "5.5.1", "Error: need RCPT command")
BAD_SEQUENCE = reply(503, "5.5.1", "Error: bad sequence of commands")
DATA_AFTER_BDAT = reply(503, "5.5.1", "Error: DATA not allowed after BDAT")
BDAT_EXPECTED = reply(503, "5.5.1", "Error: BDAT expected to complete the transaction")
ALREADY_TLS = reply(503, "5.5.1", "Error: TLS already active")
ALREADY_AUTH = reply(503, "5.5.1", "Error: already authenticated")
AUTH_IN_TRANSACTION = reply(503, "5.5.1", "Error: AUTH not permitted during a mail transaction")
UNKNOWN_PARAM = reply(555, "5.5.4", "Unsupported MAIL/RCPT parameter")
BAD_PARAM = reply(501, "5.5.4", "Invalid parameter value")
# XVERP (Postfix's extension): all 555 5.5.4, as for a parameter we do not take, so that a
# client knows to send the message without it. Postfix answers 501 to bad delimiters and 503
# to a null sender; one code is simpler for list software to handle.
XVERP_MALFORMED = reply(555, "5.5.4", "XVERP needs two delimiter characters from -=+")
XVERP_NULL_SENDER = reply(555, "5.5.4", "XVERP requires a non-null sender")
XVERP_NOT_ALLOWED = reply(555, "5.5.4", "Unsupported parameter XVERP (clients that may relay only)")
NEED_SMTPUTF8 = reply(553, "5.6.7", "Non-ASCII address requires the SMTPUTF8 parameter")
BAD_ADDRESS = reply(553, "5.1.3", "Invalid address syntax")
BAD_SENDER = reply(553, "5.1.7", "Invalid sender address syntax")
TOO_MANY_RECIPIENTS = reply(452, "4.5.3", "Too many recipients")
MESSAGE_TOO_BIG = reply(552, "5.3.4", "Message size exceeds fixed maximum message size")
BARE_LINE_ENDING = reply(
    554, "5.6.0", "Message contains bare CR or LF (RFC 5321 section 2.3.8); use CRLF line endings"
)
TEXT_LINE_TOO_LONG = reply(554, "5.6.0", "Message contains a line longer than allowed")
