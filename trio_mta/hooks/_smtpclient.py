"""A small async SMTP/LMTP client: trio streams around the sans-I/O ``ClientConnection``.

Theory of operation: ``open_smtp_client`` connects, reads the greeting, says EHLO (LHLO for LMTP;
HELO when EHLO gets a 5xx), upgrades with STARTTLS per policy (RFC 3207) and says EHLO again,
then authenticates (RFC 4954, PLAIN or LOGIN). Session failures raise ``SMTPClientError``;
refusals inside a transaction are data, returned in a ``SendResult``.

``send_message`` sends MAIL and every RCPT in one write when the server offers PIPELINING
(RFC 2920), then reads their replies in order. DATA goes on its own, after those replies, so a
caller can abandon the transaction when a recipient is refused (``require_all_recipients``):
once a server has said 354 the only way to not deliver is to hang up. The message is
dot-stuffed while it streams (a dot is doubled at the start of every line, a line starting
after any LF, so a bare LF cannot smuggle an end of data past a lenient server) and written in
writes of about 64 KiB. LMTP (RFC 2033 §4.2) answers the final dot once per accepted recipient.

Invariants: a reply is only read after the command that asks for it was written; after
``send_message`` returns the session is ready for the next one (RSET if a transaction was left
open); a 421 reply ends the session (the remaining replies count as that 421); no method takes
a timeout, callers wrap in ``trio.fail_after``; credentials never appear in exceptions.
"""

from __future__ import annotations

import base64
import enum
import functools
import ssl
from collections.abc import AsyncIterator, Iterable, Iterator, Sequence
from contextlib import asynccontextmanager, suppress

import attrs
import trio

from ..protocol import Address, Capabilities, ClientConnection, Reply, ReplySyntaxError, parse_ehlo

_IO_SIZE = 65536  # bytes per read, and per write of message data
_Envelope = tuple[Reply, tuple[Reply, ...]]  # MAIL's reply, each RCPT's


class StartTLS(enum.StrEnum):
    NEVER = "never"
    OPPORTUNISTIC = "opportunistic"  # when offered; unverified unless a context is given
    REQUIRED = "required"  # refuse to go on in the clear; verified unless a context is given


class SMTPClientError(Exception):
    """The session failed (connection, TLS, protocol, a refused greeting/EHLO/AUTH/RSET…)."""

    def __init__(self, message: str, reply: Reply | None = None) -> None:
        super().__init__(f"{message}: {reply}" if reply is not None else message)
        self.reply = reply

    @property
    def is_permanent(self) -> bool:
        return self.reply is not None and self.reply.is_permanent


class SMTPConnectError(SMTPClientError):
    """No connection was made (refused, unreachable, name not found)."""


class _HandshakeFailed(SMTPClientError):
    pass


def _fill(replies: list[Reply], count: int) -> tuple[Reply, ...]:
    """Pad with the last reply (a 421: the server hung up) to ``count`` replies."""
    return tuple(replies + [replies[-1]] * (count - len(replies)))


@attrs.frozen
class SendResult:
    """What the server said to one transaction."""

    recipients: tuple[Address, ...]
    mail: Reply
    rcpt: tuple[Reply, ...]  # one per recipient, in order; () if MAIL was refused unpipelined
    data: Reply | None  # DATA's refusal, or (SMTP) the reply to the final dot; else None
    lmtp: tuple[Reply, ...] = ()  # LMTP: after the final dot, one per accepted recipient
    sent: bool = False  # the message went out and the final dot was answered

    @property
    def accepted(self) -> tuple[Address, ...]:
        return tuple(a for a, r in zip(self.recipients, self.rcpt, strict=False) if r.is_positive)

    def outcomes(self) -> tuple[tuple[Address, Reply | None], ...]:
        """The last word on each recipient: its refusal, or the reply after the data.

        None: accepted, but the message was not sent (the transaction was abandoned)."""
        if not self.mail.is_positive:
            return tuple((a, self.mail) for a in self.recipients)
        final = iter(self.lmtp) if self.lmtp else None
        return tuple(
            (a, r if not r.is_positive else next(final) if final else self.data)
            for a, r in zip(self.recipients, self.rcpt, strict=True)
        )

    @property
    def delivered(self) -> bool:
        """Every recipient accepted and the message taken (for each, under LMTP)."""
        return self.sent and all(r is not None and r.is_positive for _, r in self.outcomes())


def _stuffed(chunks: Iterable[bytes]) -> Iterator[bytes]:
    """RFC 5321 §4.5.2 transparency across chunk boundaries, in writes of about 64 KiB."""
    buf = bytearray()
    line_start, tail = True, b""
    for chunk in chunks:
        if line_start and chunk.startswith(b"."):
            buf += b"."
        buf += chunk.replace(b"\n.", b"\n..")
        if chunk:
            line_start, tail = chunk.endswith(b"\n"), (tail + chunk)[-2:]
        if len(buf) >= _IO_SIZE:
            yield bytes(buf)
            buf.clear()
    buf += b".\r\n" if tail in (b"", b"\r\n") else b"\r\n.\r\n"
    yield bytes(buf)


class SMTPClient:
    """One session. Made by ``open_smtp_client``; use ``send_message``, ``rset``, ``quit``."""

    def __init__(self, stream: trio.abc.Stream, *, lmtp: bool) -> None:
        self._stream = stream
        self._conn = ClientConnection()
        self.lmtp = lmtp
        self.capabilities = Capabilities()
        self.greeting: Reply | None = None
        self.extended = False  # EHLO/LHLO worked (not the HELO fallback)
        self.tls = self.authenticated = False
        self._closing = False  # 421 seen or QUIT sent: nothing more may be said

    async def _send(self, data: bytes) -> None:
        if self._closing:
            raise SMTPClientError("the session is over")
        try:
            await self._stream.send_all(data)
        except (trio.BrokenResourceError, trio.ClosedResourceError, OSError) as exc:
            self._closing = True
            raise SMTPClientError(f"connection lost while sending: {exc!r}") from exc

    async def _reply(self) -> Reply:
        while True:
            try:
                reply = self._conn.next_reply()
            except ReplySyntaxError as exc:
                self._closing = True
                raise SMTPClientError(f"protocol error: {exc}") from exc
            if isinstance(reply, Reply):
                if reply.code == 421:
                    self._closing = True
                return reply
            if self._conn.closed:
                self._closing = True
                raise SMTPClientError("connection closed by the server")
            try:
                data = await self._stream.receive_some(_IO_SIZE)
            except (trio.BrokenResourceError, trio.ClosedResourceError, OSError) as exc:
                self._closing = True
                raise SMTPClientError(f"connection lost while reading: {exc!r}") from exc
            self._conn.receive_data(bytes(data))

    async def _replies(self, count: int) -> tuple[Reply, ...]:
        got: list[Reply] = []
        while len(got) < count:
            got.append(await self._reply())
            if got[-1].code == 421:
                break
        return _fill(got, count) if got else ()

    async def command(self, line: str) -> Reply:
        """Send one command line, return its reply (for NOOP, VRFY and the like)."""
        await self._send(self._conn.command(line))
        return await self._reply()

    async def _hello(self, name: str) -> None:
        reply = await self.command(f"{'LHLO' if self.lmtp else 'EHLO'} {name}")
        if reply.is_positive:
            self.capabilities = parse_ehlo(reply)
            self.extended = True
            self._conn.enhanced_codes = "ENHANCEDSTATUSCODES" in self.capabilities
            return
        if self.lmtp or not reply.is_permanent or reply.code == 421:
            raise SMTPClientError(f"{'LHLO' if self.lmtp else 'EHLO'} refused", reply)
        reply = await self.command(f"HELO {name}")
        if not reply.is_positive:
            raise SMTPClientError("HELO refused", reply)
        self.capabilities = Capabilities()
        self.extended = False

    async def _starttls(self, context: ssl.SSLContext, server_hostname: str, name: str) -> bool:
        reply = await self.command("STARTTLS")
        if reply.code != 220:
            if reply.code == 421:
                raise SMTPClientError("STARTTLS refused", reply)
            return False
        try:
            injected = isinstance(self._conn.next_reply(), Reply)
        except ReplySyntaxError:
            injected = True
        if injected:  # RFC 3207 §5: bytes after the 220 could be a command injection
            raise SMTPClientError("server sent data after its STARTTLS reply")
        stream = trio.SSLStream(self._stream, context, server_hostname=server_hostname)
        self._closing = True  # until the handshake is done
        await _handshake(stream)
        self._closing = False
        self._stream = stream
        self._conn = ClientConnection()  # discards anything read before the handshake
        self.tls = True
        await self._hello(name)
        return True

    async def _auth(self, user: str, password: str) -> None:
        mechanisms = self.capabilities.auth_mechanisms()
        b64 = base64.b64encode
        if "PLAIN" in mechanisms:
            token = b64(f"\0{user}\0{password}".encode()).decode("ascii")
            reply = await self.command(f"AUTH PLAIN {token}")
        elif "LOGIN" in mechanisms:
            reply = await self.command("AUTH LOGIN")
            for secret in (user, password):
                if reply.code != 334:
                    break
                reply = await self.command(b64(secret.encode()).decode("ascii"))
        else:
            raise SMTPClientError(f"server offers no AUTH PLAIN or LOGIN ({mechanisms or 'none'})")
        if reply.code != 235:
            if reply.code == 334:  # a challenge we can't answer: cancel the exchange
                reply = await self.command("*")
            raise SMTPClientError("authentication failed", reply)
        self.authenticated = True

    async def send_message(
        self,
        sender: Address | None,
        recipients: Sequence[Address],
        chunks: Iterable[bytes],
        *,
        mail_params: str = "",
        rcpt_params: Sequence[str] | None = None,
        size: int | None = None,
        require_all_recipients: bool = False,
    ) -> SendResult:
        """One transaction. ``size`` (if known) is checked against the server's SIZE and sent
        as SIZE=; ``require_all_recipients`` abandons the transaction (RSET, no data) when any
        RCPT is refused. Raises SMTPClientError if the session broke (fate unknown)."""
        rcpts = tuple(recipients)
        params = list(rcpt_params) if rcpt_params is not None else [""] * len(rcpts)
        if not rcpts or len(params) != len(rcpts):
            raise ValueError("need recipients, and one rcpt_params entry for each")
        if size is not None and "SIZE" in self.capabilities:
            limit = self.capabilities.size_limit()
            if limit is not None and size > limit:
                text = f"Message size {size} exceeds the server's limit of {limit}"
                return SendResult(rcpts, Reply(552, "5.3.4", text), (), None)
            mail_params = f"{mail_params} SIZE={size}".strip()
        rcpt_cmds = [self._conn.rcpt(r, p) for r, p in zip(rcpts, params, strict=True)]
        mail, replies = await self._envelope(self._conn.mail(sender, mail_params), rcpt_cmds)
        accepted = sum(r.is_positive for r in replies)
        wanted = len(rcpts) if require_all_recipients else 1
        if not mail.is_positive or accepted < wanted or self._closing:
            return await self._abandon(SendResult(rcpts, mail, replies, None))
        await self._send(b"DATA\r\n")
        start = await self._reply()
        if start.code != 354:
            return await self._abandon(SendResult(rcpts, mail, replies, start))
        for block in _stuffed(chunks):
            await self._send(block)
        if self.lmtp:
            final = await self._replies(accepted)
            return SendResult(rcpts, mail, replies, None, final, sent=True)
        return SendResult(rcpts, mail, replies, await self._reply(), sent=True)

    async def _envelope(self, mail_cmd: bytes, rcpt_cmds: list[bytes]) -> _Envelope:
        if "PIPELINING" in self.capabilities:
            await self._send(mail_cmd + b"".join(rcpt_cmds))
            got = await self._replies(1 + len(rcpt_cmds))
            return got[0], got[1:]
        await self._send(mail_cmd)
        mail = await self._reply()
        if not mail.is_positive:
            return mail, ()
        replies: list[Reply] = []
        for cmd in rcpt_cmds:
            await self._send(cmd)
            replies.append(await self._reply())
            if self._closing:
                break
        return mail, _fill(replies, len(rcpt_cmds))

    async def _abandon(self, result: SendResult) -> SendResult:
        """Leave the session ready for the next transaction; a failed RSET ends it."""
        if result.mail.is_positive and not self._closing:
            with suppress(SMTPClientError):  # a failed RSET has already ended the session
                await self.rset()
        return result

    async def rset(self) -> None:
        reply = await self.command("RSET")
        if not reply.is_positive:
            self._closing = True
            raise SMTPClientError("RSET refused", reply)

    async def quit(self) -> None:
        """Say QUIT and close; errors on the way out are ignored."""
        if not self._closing:
            with suppress(SMTPClientError):
                await self.command("QUIT")
        self._closing = True
        await self.aclose()

    async def aclose(self) -> None:
        self._closing = True
        await trio.aclose_forcefully(self._stream)

    async def _setup(
        self, helo: str, policy: StartTLS, context: ssl.SSLContext, sni: str, auth_tls: bool
    ) -> None:
        self.greeting = await self._reply()
        if self.greeting.code != 220:
            raise SMTPClientError("greeting refused", self.greeting)
        await self._hello(helo)
        if not self.tls and policy is not StartTLS.NEVER:
            started = "STARTTLS" in self.capabilities and await self._starttls(context, sni, helo)
            if not started and policy is StartTLS.REQUIRED:
                raise SMTPClientError("TLS is required, but the server did not start it")
        if auth_tls and not self.tls:
            raise SMTPClientError("refusing to send credentials over a plain-text session")


async def _handshake(stream: trio.SSLStream[trio.abc.Stream]) -> None:
    try:
        await stream.do_handshake()
    except (trio.BrokenResourceError, OSError) as exc:
        await trio.aclose_forcefully(stream)
        raise _HandshakeFailed(f"TLS handshake failed: {exc!r}") from exc


@functools.lru_cache(maxsize=4)
def _default_context(policy: StartTLS) -> ssl.SSLContext:
    # Built once per policy: loading the CA store takes tens of milliseconds on the event loop.
    context = ssl.create_default_context()
    if policy is StartTLS.OPPORTUNISTIC:  # Postfix's "may": encrypt, don't authenticate
        context.check_hostname = False
        context.verify_mode = ssl.CERT_NONE
    return context


@asynccontextmanager
async def open_smtp_client(
    host: str,
    port: int,
    *,
    helo: str,
    lmtp: bool = False,
    tls: ssl.SSLContext | None = None,
    starttls: StartTLS | str = StartTLS.OPPORTUNISTIC,
    server_hostname: str | None = None,
    auth: tuple[str, str] | None = None,
    auth_require_tls: bool = True,
) -> AsyncIterator[SMTPClient]:
    """A ready session (greeted, EHLO'd, TLS and AUTH done); QUIT on a clean exit.

    ``tls`` is the SSL context for STARTTLS; without one,
    opportunistic TLS does not verify the certificate and required TLS verifies it against the
    system CAs. A failed STARTTLS handshake under "opportunistic" reconnects in plain text, as
    Postfix does. ``auth`` is refused over plain text unless ``auth_require_tls`` is False.

    Raises:
        SMTPConnectError: no connection. SMTPClientError: the session could not be set up.
    """
    policy = StartTLS(starttls)
    sni = server_hostname or host
    while True:
        context = tls or _default_context(policy)
        try:
            stream: trio.abc.Stream = await trio.open_tcp_stream(host, port)
        except OSError as exc:
            raise SMTPConnectError(f"cannot connect to {host}:{port}: {exc}") from exc
        client = SMTPClient(stream, lmtp=lmtp)
        try:
            await client._setup(helo, policy, context, sni, auth is not None and auth_require_tls)
            if auth is not None:
                await client._auth(*auth)
        except _HandshakeFailed:
            await client.aclose()
            if policy is not StartTLS.OPPORTUNISTIC:
                raise
            policy = StartTLS.NEVER
            continue
        except BaseException:
            await client.aclose()
            raise
        break
    try:
        yield client
    except BaseException:
        await client.aclose()
        raise
    await client.quit()
