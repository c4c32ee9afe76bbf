"""The [auth] section and the listeners' AUTH keys, as the loader reads them."""

from __future__ import annotations

from pathlib import Path

import pytest

from trio_mta.config import AuthConfig, ConfigError, ListenerKind, load_config


def write(tmp_path: Path, text: str) -> Path:
    (tmp_path / "trio-mta.toml").write_text(text)
    return tmp_path


def test_defaults() -> None:
    auth = AuthConfig()
    assert auth.constrain_sender
    assert (auth.max_failures, auth.failure_window) == (10, 3600.0)
    assert (auth.failure_delay, auth.max_failure_delay) == (1.0, 30.0)


def test_loaded_from_toml(tmp_path: Path) -> None:
    config = load_config(
        write(
            tmp_path,
            """
            [[listener]]
            name = "sub"
            listen = "127.0.0.1:0"
            kind = "submission"
            auth_allow_plaintext = true

            [[listener]]
            name = "mx"
            listen = "127.0.0.1:1"
            auth = false

            [auth]
            constrain_sender = false
            max_failures = 3
            failure_window = 60
            failure_delay = 0
            max_failure_delay = 5.5
            """,
        )
    )
    sub, mx = config.listeners
    assert (sub.kind, sub.auth, sub.auth_allow_plaintext) == (ListenerKind.SUBMISSION, True, True)
    assert (mx.kind, mx.auth, mx.auth_allow_plaintext) == (ListenerKind.MX, False, False)
    assert config.auth == AuthConfig(
        constrain_sender=False,
        max_failures=3,
        failure_window=60.0,
        failure_delay=0.0,
        max_failure_delay=5.5,
    )


def test_errors_name_the_key(tmp_path: Path) -> None:
    with pytest.raises(ConfigError) as info:
        load_config(
            write(
                tmp_path,
                """
                [[listener]]
                name = "mx"
                listen = "127.0.0.1:0"
                auth_allow_plaintext = "yes"

                [auth]
                max_failures = 0
                failure_window = -1
                constrain_senders = true
                """,
            )
        )
    problems = {(issue.key, issue.why) for issue in info.value.issues}
    assert ("listener[0].auth_allow_plaintext", 'expected true or false, got a string ("yes")') in (
        problems
    )
    assert ("auth.max_failures", "must be at least 1 (got 0)") in problems
    assert ("auth.failure_window", "must be greater than 0 seconds (got -1.0)") in problems
    assert ("auth.constrain_senders", 'unknown key (did you mean "constrain_sender"?)') in problems
