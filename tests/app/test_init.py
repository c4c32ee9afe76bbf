"""trio-mta init DIR: the shipped templates (conf/ in a source tree), never over a file."""

from __future__ import annotations

from pathlib import Path

import pytest

from tests.conftest import REPO
from trio_mta.cli import main
from trio_mta.config import load_config


def test_init_writes_every_template_and_the_result_loads(
    tmp_path: Path, capsys: pytest.CaptureFixture[str]
) -> None:
    target = tmp_path / "etc" / "trio-mta"
    assert main(["init", str(target), "--var-dir", "/var/lib/trio-mta"]) == 0
    shipped = sorted(p.relative_to(REPO / "conf") for p in (REPO / "conf").rglob("*.toml"))
    written = sorted(p.relative_to(target) for p in target.rglob("*.toml"))
    assert written == shipped
    assert (target / "plugins" / "greylist.toml").read_text() == (
        REPO / "conf" / "plugins" / "greylist.toml"
    ).read_text()
    config = load_config(target)
    assert config.server.var_dir == Path("/var/lib/trio-mta")
    assert config.plugins.order == load_config(REPO / "conf").plugins.order
    out = capsys.readouterr().out
    assert f"trio-mta check --config {target}" in out
    # Comments stay: the file is the documentation.
    assert "# Where state lives" in (target / "trio-mta.toml").read_text()


def test_init_never_overwrites(tmp_path: Path, capsys: pytest.CaptureFixture[str]) -> None:
    target = tmp_path / "conf"
    (target / "plugins").mkdir(parents=True)
    (target / "plugins" / "spf.toml").write_text("# mine\n")
    assert main(["init", str(target)]) == 1
    assert "not overwriting existing files:" in capsys.readouterr().err
    assert (target / "plugins" / "spf.toml").read_text() == "# mine\n"
    assert not (target / "trio-mta.toml").exists()  # nothing written at all


def test_check_refuses_an_unknown_service_user(
    tmp_path: Path, capsys: pytest.CaptureFixture[str]
) -> None:
    conf = tmp_path / "conf"
    conf.mkdir()
    (conf / "trio-mta.toml").write_text('[server]\nuser = "no-such-user-here"\n')
    assert main(["check", "--config", str(conf)]) == 1
    assert "[server] user 'no-such-user-here': no such user" in capsys.readouterr().err
    (conf / "trio-mta.toml").write_text('[server]\nuser = "nobody"\ngroup = "no-such-group"\n')
    assert main(["check", "--config", str(conf)]) == 1
    assert "[server] group 'no-such-group': no such group" in capsys.readouterr().err
