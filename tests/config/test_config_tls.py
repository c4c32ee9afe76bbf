"""The ``[tls]`` section: values, and the certificate files it names, each problem reported as
``file: tls.<key>: why`` with every other problem of the file."""

from pathlib import Path

import trustme

from tests.config.test_config_errors import load_errors
from trio_mta.config import CertFiles, TlsConfig, TlsVersion, certificate_files, load_config


def _pair(ca: trustme.CA, directory: Path, stem: str, name: str, *, key_file: bool = True) -> None:
    leaf = ca.issue_cert(name)
    if key_file:
        (directory / f"{stem}.pem").write_bytes(b"".join(p.bytes() for p in leaf.cert_chain_pems))
        leaf.private_key_pem.write_to_path(str(directory / f"{stem}.key"))
    else:
        leaf.private_key_and_cert_chain_pem.write_to_path(str(directory / f"{stem}.pem"))


def test_valid_section_loads_with_paths_relative_to_the_config_dir(tmp_path: Path) -> None:
    ca = trustme.CA()
    _pair(ca, tmp_path, "mail", "mail.example.test")
    sni = tmp_path / "sni"
    sni.mkdir()
    _pair(ca, sni, "one.example.test", "one.example.test")
    _pair(ca, sni, "_wildcard.Two.example.test", "*.two.example.test", key_file=False)
    (tmp_path / "trio-mta.toml").write_text(
        '[tls]\ncert = "mail.pem"\nkey = "mail.key"\ncert_dir = "sni"\nmin_version = "TLSv1.3"\n'
        'ciphers = "ECDHE+AESGCM"\ngenerate_self_signed = false\n'
    )
    config = load_config(tmp_path)
    assert config.tls == TlsConfig(
        cert="mail.pem",
        key="mail.key",
        cert_dir="sni",
        min_version=TlsVersion.TLSv1_3,
        ciphers="ECDHE+AESGCM",
        generate_self_signed=False,
    )
    files = certificate_files(config.tls, tmp_path)
    assert files.default == CertFiles(tmp_path / "mail.pem", tmp_path / "mail.key")
    assert files.sni == {
        "one.example.test": CertFiles(sni / "one.example.test.pem", sni / "one.example.test.key"),
        "*.two.example.test": CertFiles(sni / "_wildcard.Two.example.test.pem", None),
    }


def test_file_problems_are_reported_with_the_other_problems(tmp_path: Path) -> None:
    errors = load_errors(
        tmp_path,
        """
        [limits]
        max_recipients = 0

        [tls]
        cert = "nope.pem"
        """,
    )
    assert errors == [
        ("limits.max_recipients", "must be at least 1 (got 0)"),
        ("tls.cert", f"{tmp_path / 'nope.pem'}: no such file"),
    ]


def test_bad_values(tmp_path: Path) -> None:
    errors = load_errors(tmp_path, '[tls]\nmin_version = "TLSv1.1"\nciphers = "NO-SUCH-CIPHER"\n')
    assert errors == [
        ("tls.min_version", 'expected one of "TLSv1.2", "TLSv1.3", got a string ("TLSv1.1")'),
        ("tls.ciphers", "'NO-SUCH-CIPHER' selects no cipher this OpenSSL knows"),
    ]


def test_mismatched_key_is_blamed_on_the_key(tmp_path: Path) -> None:
    ca = trustme.CA()
    _pair(ca, tmp_path, "a", "a.example.test")
    _pair(ca, tmp_path, "b", "b.example.test")
    assert load_errors(tmp_path, '[tls]\ncert = "a.pem"\nkey = "b.key"\n') == [
        ("tls.key", f"{tmp_path / 'b.key'}: the private key does not match the certificate")
    ]


def test_missing_and_broken_files(tmp_path: Path) -> None:
    (tmp_path / "junk.pem").write_text("junk\n")
    assert load_errors(tmp_path, '[tls]\ncert = "nope.pem"\n') == [
        ("tls.cert", f"{tmp_path / 'nope.pem'}: no such file")
    ]
    assert load_errors(tmp_path, '[tls]\ncert = "junk.pem"\n') == [
        ("tls.cert", f"{tmp_path / 'junk.pem'}: no PEM certificate in it")
    ]
    ca = trustme.CA()
    _pair(ca, tmp_path, "a", "a.example.test")
    # A certificate without a key file and no key inside it.
    assert load_errors(tmp_path, '[tls]\ncert = "a.pem"\n') == [
        (
            "tls.key",
            f"{tmp_path / 'a.pem'}: no usable PEM private key in it (encrypted keys are not"
            " supported)",
        )
    ]
    assert load_errors(tmp_path, '[tls]\ncert = "a.pem"\nkey = "none.key"\n') == [
        ("tls.key", f"{tmp_path / 'none.key'}: no such file")
    ]
    assert load_errors(tmp_path, '[tls]\nkey = "a.key"\n') == [
        ("tls.key", "set, but tls.cert is not")
    ]


def test_sni_directory_problems(tmp_path: Path) -> None:
    ca = trustme.CA()
    sni = tmp_path / "sni"
    sni.mkdir()
    _pair(ca, sni, "good.example.test", "good.example.test")
    _pair(ca, sni, "bad_name!", "x.example.test")
    (sni / "broken.example.test.pem").write_text("junk\n")
    assert load_errors(tmp_path, '[tls]\ncert_dir = "sni"\n') == [
        (
            "tls.cert_dir",
            f"{sni / 'bad_name!.pem'}: file name: 'bad_name!' is not a valid domain"
            " name (use the ASCII xn-- form for IDNs)",
        ),
        ("tls.cert_dir", f"{sni / 'broken.example.test.pem'}: no PEM certificate in it"),
    ]
    assert load_errors(tmp_path, '[tls]\ncert_dir = "nodir"\n') == [
        ("tls.cert_dir", f"{tmp_path / 'nodir'}: not a directory")
    ]


def test_tls_off_with_an_implicit_tls_listener_is_an_error(tmp_path: Path) -> None:
    errors = load_errors(
        tmp_path,
        """
        [[listener]]
        name = "smtps"
        listen = "127.0.0.1:465"
        kind = "smtps"

        [tls]
        generate_self_signed = false
        """,
    )
    assert errors == [
        (
            "tls.generate_self_signed",
            "false, but listener 'smtps' is implicit TLS (smtps) and needs a certificate: set"
            " tls.cert, or generate_self_signed = true",
        )
    ]


def test_tls_off_without_implicit_listeners_is_fine(tmp_path: Path) -> None:
    (tmp_path / "trio-mta.toml").write_text(
        '[[listener]]\nname = "mx"\nlisten = "127.0.0.1:25"\n[tls]\ngenerate_self_signed = false\n'
    )
    assert not load_config(tmp_path).tls.enabled


def test_port_zero_listeners_do_not_clash(tmp_path: Path) -> None:
    (tmp_path / "trio-mta.toml").write_text(
        '[[listener]]\nname = "a"\nlisten = "127.0.0.1:0"\n'
        '[[listener]]\nname = "b"\nlisten = "127.0.0.1:0"\nkind = "smtps"\n'
    )
    assert [x.port for x in load_config(tmp_path).listeners] == [0, 0]
