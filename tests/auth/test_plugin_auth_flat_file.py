"""auth_flat_file: users and scrypt hashes from a file, re-read when it changes."""

from __future__ import annotations

import logging
import os
from pathlib import Path

import pytest

from tests.plugins.plugin_kit import config_error, connection, load, runner, shipped_config
from trio_mta import hooks


def users_file(tmp_path: Path, **users: str) -> Path:
    path = tmp_path / "auth_users"
    lines = [f"{user}:{hooks.hash_password(pw, log2_n=4, r=1, p=1)}" for user, pw in users.items()]
    path.write_text("# test users\n" + "".join(line + "\n" for line in lines))
    return path


async def verdict(run: hooks.HookRunner, creds: hooks.Credentials) -> hooks.Action:
    result, _ = await run.run("auth", connection(), creds)
    return result.action


async def test_right_wrong_and_unknown(tmp_path: Path) -> None:
    path = users_file(tmp_path, alice="s3cret", **{"bob@example.test": "pw"})
    run = runner("auth_flat_file", {"users_file": str(path)})
    assert await verdict(run, hooks.Credentials("PLAIN", "alice", password="s3cret")) is (
        hooks.Action.OK
    )
    assert await verdict(run, hooks.Credentials("LOGIN", "bob@example.test", password="pw")) is (
        hooks.Action.OK
    )
    wrong = hooks.Credentials("PLAIN", "alice", password="S3cret")
    assert await verdict(run, wrong) is hooks.Action.DENY
    unknown = hooks.Credentials("PLAIN", "carol", password="s3cret")
    assert await verdict(run, unknown) is hooks.Action.CONT  # a later plugin may know carol
    cram = hooks.Credentials("CRAM-MD5", "alice", challenge="<x@y>", digest="0" * 32)
    assert await verdict(run, cram) is hooks.Action.CONT


async def test_unknown_users_cost_a_hash_too(
    tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    path = users_file(tmp_path, alice="s3cret")
    run = runner("auth_flat_file", {"users_file": str(path)})
    checked: list[str] = []
    real = hooks.verify_password

    def spy(password: str, encoded: str) -> bool:
        checked.append(encoded)
        return real(password, encoded)

    monkeypatch.setattr(hooks, "verify_password", spy)
    await verdict(run, hooks.Credentials("PLAIN", "nobody", password="x"))
    await verdict(run, hooks.Credentials("PLAIN", "alice", password="x"))
    assert len(checked) == 2
    assert checked[0].startswith("scrypt$14$8$1$")  # full cost for the unknown user


def test_only_plain_and_login() -> None:
    plugin_class = load("auth_flat_file", {"users_file": os.devnull}).plugins[0]
    assert plugin_class.auth_mechanisms == frozenset({"PLAIN", "LOGIN"})


async def test_changes_are_picked_up_and_a_broken_file_keeps_the_last_good_one(
    tmp_path: Path, caplog: pytest.LogCaptureFixture
) -> None:
    path = users_file(tmp_path, alice="one")
    run = runner("auth_flat_file", {"users_file": str(path)})
    assert await verdict(run, hooks.Credentials("PLAIN", "alice", password="one")) is (
        hooks.Action.OK
    )
    users_file(tmp_path, alice="two", bob="three")
    os.utime(path, ns=(1, 1))  # a different modification time, whatever the clock did
    assert await verdict(run, hooks.Credentials("PLAIN", "alice", password="two")) is (
        hooks.Action.OK
    )
    assert await verdict(run, hooks.Credentials("PLAIN", "alice", password="one")) is (
        hooks.Action.DENY
    )
    path.write_text("garbage line without a colon\n")
    with caplog.at_level(logging.ERROR):
        assert await verdict(run, hooks.Credentials("PLAIN", "bob", password="three")) is (
            hooks.Action.OK
        )
    assert "line 1: expected user:hash; keeping the previous version" in caplog.text


def test_relative_path_is_relative_to_the_config_dir(tmp_path: Path) -> None:
    users_file(tmp_path, alice="x")
    env = hooks.PluginEnv(config_dir=tmp_path)
    plugins = hooks.load_plugins(["auth_flat_file"], configs={}, env=env)
    assert plugins.plugins[0].path == tmp_path / "auth_users"  # type: ignore[attr-defined]


@pytest.mark.parametrize(
    ("config", "why"),
    [
        ({"users_file": "/nonexistent/auth_users"}, "No such file or directory"),
        ({"users_file": 7}, "users_file: must be a path"),
        ({"users": "x"}, "unknown keys ['users']"),
    ],
)
def test_config_errors(config: dict[str, object], why: str) -> None:
    assert why in config_error("auth_flat_file", config)


def test_malformed_file_is_a_load_error(tmp_path: Path) -> None:
    path = tmp_path / "auth_users"
    path.write_text("alice:plain-text-password\n")
    assert "line 1: not a scrypt$... password hash" in config_error(
        "auth_flat_file", {"users_file": str(path)}
    )


def test_shipped_config_is_the_default() -> None:
    assert shipped_config("auth_flat_file") == {"users_file": "auth_users"}


async def test_a_missing_file_means_no_users_until_it_appears(tmp_path: Path) -> None:
    # The shipped configuration loads this plugin before `trio-mta passwd` made any user.
    path = tmp_path / "auth_users"
    run = runner("auth_flat_file", {"users_file": str(path)})
    alice = hooks.Credentials("PLAIN", "alice", password="s3cret")
    assert await verdict(run, alice) is hooks.Action.CONT
    users_file(tmp_path, alice="s3cret")
    assert await verdict(run, alice) is hooks.Action.OK
    path.unlink()  # removing the file locks everybody out again
    assert await verdict(run, alice) is hooks.Action.CONT
