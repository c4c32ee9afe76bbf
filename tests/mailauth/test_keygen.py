from __future__ import annotations

import re
import stat
from pathlib import Path

import dkim
import pytest

from trio_mta import cli

MESSAGE = b"From: a@example.org\r\nTo: b@example.test\r\nSubject: k\r\n\r\nbody\r\n"


@pytest.mark.parametrize(
    ("key_type", "algorithm"), [("rsa", b"rsa-sha256"), ("ed25519", b"ed25519-sha256")]
)
def test_keygen_writes_a_key_and_prints_its_record(
    tmp_path: Path, capsys: pytest.CaptureFixture[str], key_type: str, algorithm: bytes
) -> None:
    argv = ["dkim", "keygen", "example.org", "s1", "--config", str(tmp_path), "--type", key_type]
    assert cli.main(argv) == 0
    key = tmp_path / "dkim" / "example.org" / "s1.key"
    assert stat.S_IMODE(key.stat().st_mode) == 0o600
    out = capsys.readouterr().out
    assert 'key = "dkim/example.org/s1.key"' in out
    [zone] = [line for line in out.splitlines() if "IN TXT" in line]
    assert zone.startswith("s1._domainkey.example.org. IN TXT (")
    strings = re.findall(r'"([^"]*)"', zone)
    assert all(len(s) <= 255 for s in strings)
    record = "".join(strings)
    assert record.startswith(f"v=DKIM1; k={key_type}; p=")
    signed = (
        dkim.sign(MESSAGE, b"s1", b"example.org", key.read_bytes(), signature_algorithm=algorithm)
        + MESSAGE
    )

    def lookup(name: bytes, timeout: int = 5) -> bytes | None:
        return record.encode() if name == b"s1._domainkey.example.org." else None

    assert dkim.verify(signed, dnsfunc=lookup)
    # An existing key is not replaced without --force.
    assert cli.main(argv) == 1
    assert cli.main([*argv, "--force"]) == 0


@pytest.mark.parametrize(
    "name", ["spf", "dkim_verify", "dkim_sign", "dmarc", "arc", "auth_results"]
)
def test_shipped_configs_load(name: str) -> None:
    from tests.plugins.plugin_kit import load, shipped_config

    plugins = load(name, shipped_config(name))
    assert [p.name for p in plugins.plugins] == [name]
