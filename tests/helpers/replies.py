"""The exact reply lines the engine itself sends (the protocol layer's own replies are in
``trio_mta.protocol.replies``). Hostname is the default ``localhost``."""

from __future__ import annotations

HOST = "localhost"


def timeout(phase: str) -> bytes:
    return f"421 4.4.2 {HOST} Timeout ({phase}), closing\r\n".encode()


SHUTDOWN = f"421 4.3.2 {HOST} Service shutting down\r\n".encode()
TOO_MANY_ERRORS = f"421 4.7.0 {HOST} Too many errors\r\n".encode()
EARLY_TALKER = f"554 5.5.0 {HOST} Protocol error: talked first\r\n".encode()
TOO_MANY_CONNECTIONS = b"421 4.7.0 Too many connections, try again later\r\n"
RELAY_DENIED = b"550 5.7.1 Relaying denied\r\n"
UNRECOGNIZED = b"500 5.5.1 Command unrecognized\r\n"
LINE_TOO_LONG = b"500 5.5.2 Line too long\r\n"
