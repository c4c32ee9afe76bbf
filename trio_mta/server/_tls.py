"""TLS for the inbound server: contexts, SNI, the first-run self-signed certificate, handshakes.

Theory of operation
-------------------
One ``ssl.SSLContext`` per certificate, all with the same settings (``[tls] min_version`` and
``ciphers``, no compression, no renegotiation). The default context carries an ``sni_callback``
that, during the handshake, moves the connection to the context of the name the client asked for:
the exact name first, then a wildcard one label up (``*.example.com`` covers ``a.example.com``
but neither ``a.b.example.com`` nor ``example.com``, RFC 6125 §6.4.3); otherwise it stays on the
default certificate.

``TlsProvider.context`` is read once per handshake. A reload builds a whole new set and swaps that
one reference: new handshakes use the new certificates, live connections keep the ``SSLObject``
(and so the certificate) they were made with, and a set that fails to build leaves the running
one in place.

Without ``[tls] cert``, and with ``generate_self_signed`` on, the default certificate is a
self-signed one for ``server.hostname`` under ``<var_dir>/tls/``, made once (ECDSA P-256, ten
years) and reused by later runs; it is made again only if it is missing, broken or expiring.

STARTTLS (RFC 3207) and implicit TLS (RFC 8314) both end in :func:`handshake`, which wraps the
connection's transport, whichever it is, in ``trio.SSLStream``.
"""

from __future__ import annotations

import datetime
import logging
import os
import ssl
from collections.abc import Callable, Mapping
from pathlib import Path

import trio
from cryptography import x509
from cryptography.hazmat.primitives import hashes, serialization
from cryptography.hazmat.primitives.asymmetric import ec
from cryptography.x509.oid import ExtendedKeyUsageOID, NameOID

from ..config import CertFiles, Config, TlsConfig, TlsVersion, certificate_files, pair_problem
from ..protocol import ServerConnection
from ._session import Session
from ._transport import SocketTransport, StreamTransport, Transport

log = logging.getLogger("trio_mta.tls")

_VERSIONS = {
    TlsVersion.TLSv1_2: ssl.TLSVersion.TLSv1_2,
    TlsVersion.TLSv1_3: ssl.TLSVersion.TLSv1_3,
}
SELF_SIGNED_DAYS = 3650
_RENEW_BEFORE = datetime.timedelta(days=30)


class TlsSetupError(Exception):
    """The certificates cannot be loaded or generated; the message names file and key."""


class TlsHandshakeError(Exception):
    """The client's handshake failed (bad record, no shared cipher or version, hung up…)."""


# -- contexts and SNI ------------------------------------------------------------------------


def _context(tls: TlsConfig, files: CertFiles) -> ssl.SSLContext:
    ctx = ssl.SSLContext(ssl.PROTOCOL_TLS_SERVER)
    ctx.minimum_version = _VERSIONS[tls.min_version]
    ctx.options |= ssl.OP_NO_COMPRESSION | ssl.OP_NO_RENEGOTIATION
    ctx.options |= ssl.OP_CIPHER_SERVER_PREFERENCE
    if tls.ciphers:
        ctx.set_ciphers(tls.ciphers)
    ctx.load_cert_chain(files.cert, files.key)
    return ctx


def choose_context(
    by_name: Mapping[str, ssl.SSLContext], server_name: str
) -> ssl.SSLContext | None:
    """The context for ``server_name``: exact name, then a one-level wildcard, else None."""
    name = server_name.lower().rstrip(".")
    chosen = by_name.get(name)
    if chosen is None and "." in name:
        chosen = by_name.get("*." + name.split(".", 1)[1])
    return chosen


_SniCallback = Callable[[ssl.SSLObject, str | None, ssl.SSLContext], None]


def _sni_callback(by_name: Mapping[str, ssl.SSLContext]) -> _SniCallback:
    def on_server_name(obj: ssl.SSLObject, server_name: str | None, _ctx: ssl.SSLContext) -> None:
        if server_name:
            chosen = choose_context(by_name, server_name)
            if chosen is not None:
                obj.context = chosen

    return on_server_name


def _checked(files: CertFiles, key: str | None = None) -> CertFiles:
    problem = pair_problem(files)
    if problem is not None:
        raise TlsSetupError(f"{key or 'tls.' + problem[0]}: {problem[1]}")
    return files


def build_context(config: Config) -> ssl.SSLContext:
    """The default context (with the SNI contexts behind its callback) for ``config``.

    Raises:
        TlsSetupError: a certificate does not load, or the self-signed one cannot be made.
    """
    tls = config.tls
    try:
        files = certificate_files(tls, config.config_dir)
    except OSError as exc:
        raise TlsSetupError(f"tls.cert_dir: {exc}") from exc
    if files.default is not None:
        default = _checked(files.default)
    elif tls.generate_self_signed:
        default = self_signed(config.server.hostname, config.server.var_dir / "tls")
    else:
        raise TlsSetupError("tls: no certificate (set tls.cert, or generate_self_signed = true)")
    try:
        ctx = _context(tls, default)
        by_name = {
            name: _context(tls, _checked(pair, "tls.cert_dir")) for name, pair in files.sni.items()
        }
    except (ssl.SSLError, OSError) as exc:
        raise TlsSetupError(f"tls: {exc}") from exc
    if by_name:
        ctx.sni_callback = _sni_callback(by_name)
    log.info(
        "tls: default certificate %s; SNI names: %s",
        default.cert,
        ", ".join(sorted(by_name)) or "none",
    )
    return ctx


class TlsProvider:
    """The certificates in service: ``context`` is what the next handshake uses."""

    def __init__(self, context: ssl.SSLContext) -> None:
        self.context = context

    @classmethod
    def from_config(cls, config: Config) -> TlsProvider | None:
        """None when TLS is off (no certificate and no self-signed one allowed).

        Raises:
            TlsSetupError: TLS is on, but its certificates cannot be loaded or made.
        """
        if not config.tls.enabled:
            return None
        return cls(build_context(config))

    def reload(self, config: Config) -> bool:
        """Re-read every certificate for ``config``; on any problem keep the running ones."""
        if not config.tls.enabled:
            log.error("tls reload refused: turning TLS off needs a restart; keeping certificates")
            return False
        try:
            context = build_context(config)
        except TlsSetupError as exc:
            log.error("tls reload refused, keeping the running certificates: %s", exc)
            return False
        self.context = context
        log.info("tls reload: new certificates in service for new connections")
        return True


# -- the self-signed first-run certificate ----------------------------------------------------


def self_signed(hostname: str, directory: Path) -> CertFiles:
    """``<directory>/selfsigned-<hostname>.pem`` and ``.key``, made now unless still usable.

    Raises:
        TlsSetupError: the directory or the files cannot be written.
    """
    files = CertFiles(
        directory / f"selfsigned-{hostname}.pem", directory / f"selfsigned-{hostname}.key"
    )
    if _still_usable(files):
        return files
    try:
        directory.mkdir(parents=True, exist_ok=True, mode=0o700)
        cert, key = _make_self_signed(hostname)
        assert files.key is not None
        _write_atomically(files.key, key, 0o600)
        _write_atomically(files.cert, cert, 0o644)
    except OSError as exc:
        raise TlsSetupError(f"tls.generate_self_signed: cannot write {directory}: {exc}") from exc
    log.warning(
        "tls: generated a self-signed certificate for %s at %s (key %s); clients cannot verify"
        " it: set [tls] cert and key for real use",
        hostname,
        files.cert,
        files.key,
    )
    return files


def _still_usable(files: CertFiles) -> bool:
    if pair_problem(files) is not None:
        return False
    try:
        cert = x509.load_pem_x509_certificate(files.cert.read_bytes())
    except (OSError, ValueError):
        return False
    now = datetime.datetime.now(datetime.UTC)
    return cert.not_valid_after_utc - _RENEW_BEFORE > now


def _make_self_signed(hostname: str) -> tuple[bytes, bytes]:
    key = ec.generate_private_key(ec.SECP256R1())
    name = x509.Name([x509.NameAttribute(NameOID.COMMON_NAME, hostname)])
    now = datetime.datetime.now(datetime.UTC)
    cert = (
        x509.CertificateBuilder()
        .subject_name(name)
        .issuer_name(name)
        .public_key(key.public_key())
        .serial_number(x509.random_serial_number())
        .not_valid_before(now - datetime.timedelta(hours=1))
        .not_valid_after(now + datetime.timedelta(days=SELF_SIGNED_DAYS))
        .add_extension(x509.SubjectAlternativeName([x509.DNSName(hostname)]), critical=False)
        .add_extension(x509.BasicConstraints(ca=False, path_length=None), critical=True)
        .add_extension(x509.ExtendedKeyUsage([ExtendedKeyUsageOID.SERVER_AUTH]), critical=False)
        .sign(key, hashes.SHA256())
    )
    key_pem = key.private_bytes(
        serialization.Encoding.PEM,
        serialization.PrivateFormat.PKCS8,
        serialization.NoEncryption(),
    )
    return cert.public_bytes(serialization.Encoding.PEM), key_pem


def _write_atomically(path: Path, data: bytes, mode: int) -> None:
    tmp = path.with_name(f".{path.name}.{os.getpid()}.tmp")
    fd = os.open(tmp, os.O_WRONLY | os.O_CREAT | os.O_TRUNC, mode)
    try:
        with os.fdopen(fd, "wb") as f:
            f.write(data)
            f.flush()
            os.fsync(f.fileno())
        os.replace(tmp, path)
    except BaseException:
        tmp.unlink(missing_ok=True)
        raise


# -- STARTTLS and the handshake -----------------------------------------------------------------


def forget_plaintext(conn: ServerConnection, session: Session) -> None:
    """Put the protocol into TLS after STARTTLS's 220 was sent, forgetting the plaintext session.

    What the client pipelined behind STARTTLS is dropped unread (the CVE-2011-0411 family,
    aiosmtpd CVE-2024-34083) and logged by its size only: it may hold credentials. RFC 3207
    §4.2: nothing the client said before TLS counts any more (HELO name, AUTH).
    """
    injected = conn.start_tls()
    if injected:
        log.warning(
            "conn=%s ip=%s discarded %d bytes of plaintext pipelined after STARTTLS",
            session.id,
            session.client_ip,
            len(injected),
        )
    session.helo, session.extended, session.auth_user = None, False, None


async def handshake(
    transport: Transport, context: ssl.SSLContext
) -> tuple[StreamTransport, str, str]:
    """Wrap ``transport`` in TLS (server side) and complete the handshake.

    Returns:
        The TLS transport, the protocol version (``TLSv1.3``) and the cipher name.

    Raises:
        TlsHandshakeError: the handshake failed; the connection is unusable.
    """
    if isinstance(transport, SocketTransport):
        inner: trio.abc.Stream = trio.SocketStream(transport.sock)
    elif isinstance(transport, StreamTransport):
        inner = transport.stream
    else:
        raise TypeError(f"cannot start TLS over {transport!r}")
    stream = trio.SSLStream(inner, context, server_side=True)
    try:
        await stream.do_handshake()
    except (trio.BrokenResourceError, trio.ClosedResourceError) as exc:
        cause = exc.__cause__
        why = getattr(cause, "reason", None) or (repr(cause) if cause else "connection closed")
        raise TlsHandshakeError(str(why)) from exc
    version = str(stream.version())
    cipher = str(stream.cipher()[0])
    return StreamTransport(stream), version, cipher


async def close_tls(transport: Transport) -> None:
    """Send TLS close_notify and close, without waiting for the client's (RFC 8446 §6.1)."""
    if isinstance(transport, StreamTransport) and isinstance(transport.stream, trio.SSLStream):
        await transport.stream.aclose()
