"""``trio-mta passwd``: writes scrypt hashes that auth_flat_file accepts, atomically."""

from __future__ import annotations

import io
import sys
from pathlib import Path

import pytest
import trio

from tests.conftest import REPO
from tests.plugins.plugin_kit import connection, runner
from trio_mta import cli, hooks


def passwd(
    monkeypatch: pytest.MonkeyPatch, argv: list[str], stdin: str = ""
) -> tuple[int, str, str]:
    out, err = io.StringIO(), io.StringIO()
    monkeypatch.setattr(sys, "stdin", io.StringIO(stdin))
    monkeypatch.setattr(sys, "stdout", out)
    monkeypatch.setattr(sys, "stderr", err)
    status = cli.main(["passwd", *argv])
    return status, out.getvalue(), err.getvalue()


async def test_written_hash_is_accepted_by_auth_flat_file(tmp_path: Path) -> None:
    path = tmp_path / "users"
    argv = [sys.executable, "-m", "trio_mta", "passwd", "--file", str(path), "alice@example.test"]
    with trio.fail_after(30):
        done = await trio.run_process(
            argv, stdin=b"correct horse\n", capture_stdout=True, capture_stderr=True, cwd=REPO
        )
    assert done.stdout == f"user alice@example.test added to {path}\n".encode()
    assert "correct horse" not in path.read_text()
    assert path.stat().st_mode & 0o777 == 0o600
    run = runner("auth_flat_file", {"users_file": str(path)})
    for password, action in (("correct horse", hooks.Action.OK), ("wrong", hooks.Action.DENY)):
        creds = hooks.Credentials("PLAIN", "alice@example.test", password=password)
        result, _ = await run.run("auth", connection(), creds)
        assert result.action is action


def test_update_keeps_other_lines_and_the_mode(
    tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    path = tmp_path / "users"
    bob = hooks.hash_password("b", log2_n=4, r=1, p=1)
    path.write_text(f"# our users\nalice:{bob}\nbob:{bob}\n")
    path.chmod(0o640)
    status, out, _ = passwd(monkeypatch, ["--file", str(path), "alice"], "new one\n")
    assert (status, out) == (0, f"user alice updated in {path}\n")
    lines = path.read_text().splitlines()
    assert lines[0] == "# our users"
    assert lines[2] == f"bob:{bob}"
    assert hooks.verify_password("new one", hooks.parse_users(path.read_text())["alice"])
    assert path.stat().st_mode & 0o777 == 0o640
    assert [p.name for p in tmp_path.iterdir()] == ["users"]  # no temporary file left


def test_delete(tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> None:
    path = tmp_path / "users"
    assert passwd(monkeypatch, ["--file", str(path), "alice"], "pw\n")[0] == 0
    assert passwd(monkeypatch, ["--file", str(path), "bob"], "pw\n")[0] == 0
    status, out, _ = passwd(monkeypatch, ["--file", str(path), "--delete", "alice"])
    assert (status, out) == (0, f"user alice removed from {path}\n")
    assert set(hooks.parse_users(path.read_text())) == {"bob"}
    status, _, err = passwd(monkeypatch, ["--file", str(path), "--delete", "alice"])
    assert status == 1
    assert "no user 'alice'" in err


def test_terminal_asks_twice(tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> None:
    path = tmp_path / "users"
    answers = iter(["pw1", "pw2", "same", "same"])
    monkeypatch.setattr("getpass.getpass", lambda prompt: next(answers))

    class Tty(io.StringIO):
        def isatty(self) -> bool:
            return True

    monkeypatch.setattr(sys, "stdin", Tty())
    assert cli.main(["passwd", "--file", str(path), "alice"]) == 1  # they differ
    assert not path.exists()
    assert cli.main(["passwd", "--file", str(path), "alice"]) == 0
    assert hooks.verify_password("same", hooks.parse_users(path.read_text())["alice"])


@pytest.mark.parametrize(
    ("argv", "stdin", "why"),
    [
        (["bad:user"], "pw\n", "'bad:user' is not a valid user name"),
        (["alice"], "\n", "empty password"),
    ],
)
def test_refusals(
    tmp_path: Path,
    monkeypatch: pytest.MonkeyPatch,
    argv: list[str],
    stdin: str,
    why: str,
) -> None:
    path = tmp_path / "users"
    status, _, err = passwd(monkeypatch, ["--file", str(path), *argv], stdin)
    assert status == 1
    assert why in err
    assert not path.exists()


def test_a_malformed_file_is_not_overwritten(
    tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    path = tmp_path / "users"
    path.write_text("alice:plaintext\n")
    status, _, err = passwd(monkeypatch, ["--file", str(path), "bob"], "pw\n")
    assert status == 1
    assert "line 1: not a scrypt" in err
    assert path.read_text() == "alice:plaintext\n"


def test_default_file_follows_the_plugin_config(
    tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    (tmp_path / "trio-mta.toml").write_text("")
    (tmp_path / "plugins").mkdir()
    (tmp_path / "plugins" / "auth_flat_file.toml").write_text('users_file = "secret/users"\n')
    (tmp_path / "secret").mkdir()
    status, _, err = passwd(monkeypatch, ["--config", str(tmp_path), "alice"], "pw\n")
    assert status == 0, err
    assert "alice" in hooks.parse_users((tmp_path / "secret" / "users").read_text())
    other = tmp_path / "other"
    other.mkdir()
    status, _, _ = passwd(monkeypatch, ["--config", str(other), "bob"], "pw\n")
    assert status == 0
    assert (other / "auth_users").exists()  # the default name
