"""``server._tls`` without sockets: SNI choice, the first-run self-signed certificate."""

from __future__ import annotations

import datetime
import logging
import ssl
from pathlib import Path

import attrs
import pytest
from cryptography import x509

from tests.helpers.config import make_config
from trio_mta.config import TlsConfig, TlsVersion
from trio_mta.server import TlsProvider
from trio_mta.server._tls import choose_context, self_signed


def _ctx() -> ssl.SSLContext:
    return ssl.SSLContext(ssl.PROTOCOL_TLS_SERVER)


def test_choose_context_exact_then_one_level_wildcard() -> None:
    exact, wild = _ctx(), _ctx()
    by_name = {"mail.example.com": exact, "*.example.com": wild}
    assert choose_context(by_name, "mail.example.com") is exact
    assert choose_context(by_name, "MAIL.Example.com.") is exact
    assert choose_context(by_name, "other.example.com") is wild
    assert choose_context(by_name, "a.b.example.com") is None
    assert choose_context(by_name, "example.com") is None
    assert choose_context(by_name, "com") is None


def test_self_signed_is_made_once_then_reused(
    tmp_path: Path, caplog: pytest.LogCaptureFixture
) -> None:
    directory = tmp_path / "var" / "tls"
    files = self_signed("mx.example.test", directory)
    assert files.cert == directory / "selfsigned-mx.example.test.pem"
    assert files.key is not None
    assert files.key.stat().st_mode & 0o777 == 0o600
    assert directory.stat().st_mode & 0o777 == 0o700
    cert = x509.load_pem_x509_certificate(files.cert.read_bytes())
    san = cert.extensions.get_extension_for_class(x509.SubjectAlternativeName).value
    assert san.get_values_for_type(x509.DNSName) == ["mx.example.test"]
    ssl.SSLContext(ssl.PROTOCOL_TLS_SERVER).load_cert_chain(files.cert, files.key)
    assert [r for r in caplog.records if "generated a self-signed" in r.getMessage()]
    before = files.cert.read_bytes()
    caplog.clear()
    assert self_signed("mx.example.test", directory) == files
    assert files.cert.read_bytes() == before
    assert not [r for r in caplog.records if "generated" in r.getMessage()]


def test_self_signed_is_remade_when_broken(tmp_path: Path) -> None:
    files = self_signed("localhost", tmp_path)
    before = files.cert.read_bytes()
    assert files.key is not None
    files.key.write_text("lost\n")
    again = self_signed("localhost", tmp_path)
    assert again.cert.read_bytes() != before
    assert again.key is not None
    ssl.SSLContext(ssl.PROTOCOL_TLS_SERVER).load_cert_chain(again.cert, again.key)
    not_after = x509.load_pem_x509_certificate(again.cert.read_bytes()).not_valid_after_utc
    assert not_after > datetime.datetime.now(datetime.UTC) + datetime.timedelta(days=3000)


def test_provider_is_none_when_tls_is_off(tmp_path: Path) -> None:
    config = make_config(tmp_path / "var")
    off = attrs.evolve(config, tls=TlsConfig(generate_self_signed=False))
    assert TlsProvider.from_config(off) is None
    assert not (tmp_path / "var" / "tls").exists()


def test_provider_generates_under_var_dir_and_applies_the_floor(
    tmp_path: Path, caplog: pytest.LogCaptureFixture
) -> None:
    caplog.set_level(logging.INFO, logger="trio_mta")
    config = make_config(tmp_path / "var")
    config = attrs.evolve(config, tls=TlsConfig(min_version=TlsVersion.TLSv1_3))
    provider = TlsProvider.from_config(config)
    assert provider is not None
    assert provider.context.minimum_version is ssl.TLSVersion.TLSv1_3
    assert provider.context.options & ssl.OP_NO_RENEGOTIATION
    assert (tmp_path / "var" / "tls" / "selfsigned-localhost.pem").is_file()
