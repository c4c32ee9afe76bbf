"""The files ``[tls]`` names: where they are, and whether each certificate loads with its key.

The loader runs :func:`tls_problems` on every load, so ``trio-mta check``, start-up and SIGHUP all
report a broken certificate as ``file: tls.cert: why`` and refuse it before any socket sees it.
The server builds its contexts from :func:`certificate_files`, the same reading of the same keys.

SNI directory layout (``cert_dir``): ``<hostname>.pem`` holds the certificate chain (leaf first)
and ``<hostname>.key`` its private key; without a ``.key`` file the key must be in the ``.pem``.
A wildcard certificate for ``*.example.com`` is ``_wildcard.example.com.pem`` (mkcert's naming,
since ``*`` is awkward in file names). Names are matched case-insensitively.
"""

import ssl
from collections.abc import Sequence
from pathlib import Path

import attrs

from ._schema import ListenerConfig, ListenerKind, TlsConfig, _domain_problem

WILDCARD_PREFIX = "_wildcard."


@attrs.frozen
class CertFiles:
    cert: Path
    key: Path | None  # None: the key is in the cert file


@attrs.frozen
class TlsFiles:
    """``default`` is None when no ``cert`` is configured (a generated one is used, if allowed);
    ``sni`` maps lower-case host names (``*.example.com`` for wildcards) to their files."""

    default: CertFiles | None
    sni: dict[str, CertFiles]


def _resolve(base: Path | None, name: str) -> Path:
    path = Path(name)
    return path if path.is_absolute() or base is None else base / path


def _sni_files(directory: Path) -> dict[str, CertFiles]:
    found: dict[str, CertFiles] = {}
    for pem in sorted(directory.glob("*.pem")):
        stem = pem.name[: -len(".pem")].lower()
        name = "*." + stem[len(WILDCARD_PREFIX) :] if stem.startswith(WILDCARD_PREFIX) else stem
        key = pem.with_name(pem.name[: -len(".pem")] + ".key")
        found[name] = CertFiles(pem, key if key.exists() else None)
    return found


def certificate_files(tls: TlsConfig, config_dir: Path | None) -> TlsFiles:
    """The certificate files ``tls`` names, resolved against ``config_dir`` (not checked).

    Raises:
        OSError: ``cert_dir`` cannot be listed.
    """
    default = None
    if tls.cert:
        key = _resolve(config_dir, tls.key) if tls.key else None
        default = CertFiles(_resolve(config_dir, tls.cert), key)
    sni = _sni_files(_resolve(config_dir, tls.cert_dir)) if tls.cert_dir else {}
    return TlsFiles(default, sni)


def pair_problem(files: CertFiles) -> tuple[str, str] | None:
    """``("cert" or "key", why)`` if the pair does not load into a server context, else None."""
    for which, path in (("cert", files.cert), ("key", files.key)):
        if path is not None and not path.is_file():
            return which, f"{path}: no such file"
    ctx = ssl.SSLContext(ssl.PROTOCOL_TLS_SERVER)
    try:
        ctx.load_verify_locations(cafile=files.cert)
    except ssl.SSLError:
        return "cert", f"{files.cert}: no PEM certificate in it"
    except OSError as exc:
        return "cert", f"{files.cert}: {exc.strerror or exc}"
    try:
        ctx.load_cert_chain(files.cert, files.key)
    except ssl.SSLError as exc:
        where = files.key or files.cert
        if exc.reason == "KEY_VALUES_MISMATCH":
            return "key", f"{where}: the private key does not match the certificate"
        return "key", f"{where}: no usable PEM private key in it (encrypted keys are not supported)"
    except OSError as exc:
        return "key", f"{files.key or files.cert}: {exc.strerror or exc}"
    return None


def tls_problems(
    tls: TlsConfig, listeners: Sequence[ListenerConfig], config_dir: Path | None
) -> list[tuple[str, str]]:
    """Every problem with the ``[tls]`` files, as ``(dotted key, why)``."""
    problems: list[tuple[str, str]] = []
    if tls.key and not tls.cert:
        problems.append(("tls.key", "set, but tls.cert is not"))
    if tls.cert_dir:
        directory = _resolve(config_dir, tls.cert_dir)
        if not directory.is_dir():
            problems.append(("tls.cert_dir", f"{directory}: not a directory"))
        if not tls.enabled:
            why = "needs a default certificate: set tls.cert, or generate_self_signed = true"
            problems.append(("tls.cert_dir", why))
    if not tls.enabled:
        for listener in listeners:
            if listener.kind is ListenerKind.SMTPS:
                why = (
                    f"false, but listener {listener.name!r} is implicit TLS (smtps) and needs a"
                    " certificate: set tls.cert, or generate_self_signed = true"
                )
                problems.append(("tls.generate_self_signed", why))
    try:
        files = certificate_files(tls, config_dir)
    except OSError:
        return problems  # the cert_dir problem is already reported
    if files.default is not None:
        problem = pair_problem(files.default)
        if problem is not None:
            problems.append((f"tls.{problem[0]}", problem[1]))
    for name, pair in files.sni.items():
        bad_name = _domain_problem(name.removeprefix("*."))
        if bad_name is not None:
            problems.append(("tls.cert_dir", f"{pair.cert}: file name: {bad_name}"))
        problem = pair_problem(pair)
        if problem is not None:
            problems.append(("tls.cert_dir", problem[1]))
    return problems
