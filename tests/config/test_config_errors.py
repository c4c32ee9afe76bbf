import textwrap
from pathlib import Path

import pytest

from trio_mta.config import CONFIG_FILE_NAME, ConfigError, ConfigIssue, load_config


def load_errors(config_dir: Path, toml: str | bytes) -> list[tuple[str, str]]:
    """Write ``toml``, load it expecting failure, and return its issues as (key, why)."""
    path = config_dir / CONFIG_FILE_NAME
    if isinstance(toml, str):
        path.write_text(textwrap.dedent(toml))
    else:
        path.write_bytes(toml)
    with pytest.raises(ConfigError) as info:
        load_config(config_dir)
    assert all(issue.file == str(path) for issue in info.value.issues)
    return [(issue.key, issue.why) for issue in info.value.issues]


def test_toml_syntax_error_is_one_issue_without_key(tmp_path: Path) -> None:
    [(key, why)] = load_errors(tmp_path, "[limits]\nmax_recipients = = 5\n")
    assert key == ""
    assert "line 2" in why


def test_invalid_utf8_is_reported(tmp_path: Path) -> None:
    assert load_errors(tmp_path, b'[server]\nbanner = "\xff"\n') == [
        ("", "not valid UTF-8 (byte 19)")
    ]


def test_missing_directory_is_an_error(tmp_path: Path) -> None:
    missing = tmp_path / "nope"
    with pytest.raises(ConfigError) as info:
        load_config(missing)
    assert info.value.issues == (ConfigIssue(str(missing), "", "not a directory"),)


def test_unreadable_file_is_reported(tmp_path: Path) -> None:
    (tmp_path / CONFIG_FILE_NAME).mkdir()  # reading a directory fails on every platform
    with pytest.raises(ConfigError) as info:
        load_config(tmp_path)
    [issue] = info.value.issues
    assert (issue.file, issue.key) == (str(tmp_path / CONFIG_FILE_NAME), "")


def test_unknown_sections_and_keys(tmp_path: Path) -> None:
    assert load_errors(
        tmp_path,
        """
        stray = 1
        [limit]
        [limits]
        max_recipient = 5
        [limits.nested]
        [[listener]]
        name = "mx"
        listen = "127.0.0.1:25"
        listn = "x"
        host = "127.0.0.1"
        """,
    ) == [
        ("stray", "unknown section"),
        ("limit", 'unknown section (did you mean "limits"?)'),
        ("limits.max_recipient", 'unknown key (did you mean "max_recipients"?)'),
        ("limits.nested", "unknown key"),
        ("listener[0].listn", 'unknown key (did you mean "listen"?)'),
        # host and port are fields, but the file spells them as `listen`.
        ("listener[0].host", "unknown key"),
    ]


@pytest.mark.parametrize(
    ("toml", "key", "why"),
    [
        ("[limits]\nmax_recipients = true", "limits.max_recipients", "a boolean (true)"),
        ("[limits]\nmax_recipients = false", "limits.max_recipients", "a boolean (false)"),
        ("[timeouts]\ncommand = true", "timeouts.command", "expected a number, got a boolean"),
        ("[limits]\nmax_recipients = 1.5", "limits.max_recipients", "an integer, got a float"),
        ('[limits]\nmax_recipients = "5"', "limits.max_recipients", 'a string ("5")'),
        (
            "[log]\ntransaction_log = 1",
            "log.transaction_log",
            "expected true or false, got an integer",
        ),
        ('[log]\ntransaction_log = "yes"', "log.transaction_log", "expected true or false"),
        ("[server]\nhostname = 5", "server.hostname", "expected a string, got an integer"),
        ("[server]\nvar_dir = []", "server.var_dir", "expected a string, got an array"),
        ('[server]\nlocal_domains = "a.test"', "server.local_domains", "expected an array"),
        ('[server]\nlocal_domains = ["a.test", 3]', "server.local_domains", "item 1: expected"),
        ("[log]\nlevel = 1979-05-27", "log.level", "got a date/time"),
        (
            '[data]\nbare_line_endings = "fix"',
            "data.bare_line_endings",
            'one of "reject", "normalize"',
        ),
        ('[data]\nbare_line_endings = "fix"', "data.bare_line_endings", '"reject", "normalize"'),
        ("[data]\nbare_line_endings = 1", "data.bare_line_endings", "got an integer (1)"),
        ("server = 1", "server", "expected a [server] table, got an integer"),
        ("[listener]\nname = 'mx'", "listener", "expected [[listener]] tables, got a table"),
        ("listener = []", "listener", "at least one listener is required"),
        ("[[listener]]\nname = 'mx'\nlisten = 25", "listener[0].listen", "a string HOST:PORT"),
        (
            "[[listener]]\nname = 'mx'\nlisten = '[::1]:1'\nkind = 'lmtp'",
            "listener[0].kind",
            '"mx", "submission", "smtps"',
        ),
    ],
)
def test_wrong_types(tmp_path: Path, toml: str, key: str, why: str) -> None:
    issues = load_errors(tmp_path, toml)
    assert [k for k, _ in issues] == [key]
    assert why in issues[0][1]


@pytest.mark.parametrize(
    ("section", "key", "value", "why"),
    [
        ("limits", "max_recipients", "0", "must be at least 1 (got 0)"),
        ("limits", "max_connections", "-5", "must be at least 1 (got -5)"),
        ("limits", "max_connections_per_ip", "0", "at least 1"),
        ("limits", "max_message_size", "0", "at least 1"),
        ("limits", "max_unrecognized_commands", "0", "at least 1"),
        ("limits", "auth_line", "0", "at least 1"),
        ("limits", "command_line", "63", "must be at least 64 (got 63)"),
        ("limits", "text_line", "79", "must be at least 80 (got 79)"),
        ("limits", "exempt_networks", '["127.0.0.0/8", "10.0.0.1/8"]', "'10.0.0.1/8' is not a"),
        ("limits", "exempt_networks", '["localhost"]', "'localhost' is not a network"),
        ("limits", "exempt_networks", '"127.0.0.0/8"', "expected an array"),
        ("timeouts", "banner", "0", "must be greater than 0 seconds (got 0.0)"),
        ("timeouts", "command", "-1.5", "greater than 0"),
        ("timeouts", "data_block", "0.0", "greater than 0"),
        ("timeouts", "data_total", "0", "greater than 0"),
        ("timeouts", "session", "0", "greater than 0"),
        ("timeouts", "tls_handshake", "0", "greater than 0"),
        ("timeouts", "drain", "0", "greater than 0"),
        ("timeouts", "greeting_delay", "-0.5", "must be at least 0 seconds"),
        ("timeouts", "session", "inf", "must be a finite number"),
        ("timeouts", "greeting_delay", "nan", "must be a finite number"),
        ("server", "hostname", '"mail example.test"', "not a valid domain name"),
        ("server", "hostname", '"-bad.test"', "not a valid domain name"),
        ("server", "hostname", '"a..test"', "not a valid domain name"),
        ("server", "hostname", f'"{"a" * 64}.test"', "not a valid domain name"),
        ("server", "local_domains", '["ok.test", "bad_one.test"]', "'bad_one.test' is not"),
        ("server", "banner", '"hi\\r\\n250 injected"', "printable ASCII"),
        ("server", "banner", '"caf\u00e9"', "printable ASCII"),
        ("server", "banner", f'"{"x" * 201}"', "at most 200 characters (got 201)"),
        ("log", "level", '"TRACE"', "must be one of DEBUG, INFO, WARNING, ERROR"),
        ("log", "format", '"xml"', 'expected one of "text", "json"'),
        ("log", "destination", '"journal"', 'expected one of "stderr", "file", "syslog"'),
        ("log", "syslog_facility", '"kern"', "must be one of mail, daemon"),
    ],
)
def test_out_of_range(tmp_path: Path, section: str, key: str, value: str, why: str) -> None:
    issues = load_errors(tmp_path, f"[{section}]\n{key} = {value}\n")
    assert [k for k, _ in issues] == [f"{section}.{key}"]
    assert why in issues[0][1]


@pytest.mark.parametrize(
    ("section", "key", "value"),
    [
        ("limits", "command_line", "64"),
        ("limits", "text_line", "80"),
        ("limits", "exempt_networks", "[]"),
        ("limits", "exempt_networks", '["192.0.2.7", "2001:db8::/32"]'),
        ("timeouts", "greeting_delay", "0"),
        ("server", "hostname", f'"{"a" * 63}.test"'),
        ("server", "banner", '""'),
        ("log", "level", '"DEBUG"'),
    ],
)
def test_boundary_values_are_accepted(tmp_path: Path, section: str, key: str, value: str) -> None:
    (tmp_path / CONFIG_FILE_NAME).write_text(f"[{section}]\n{key} = {value}\n")
    load_config(tmp_path)


def test_listener_problems(tmp_path: Path) -> None:
    assert load_errors(
        tmp_path,
        """
        [[listener]]
        name = "mx"
        listen = "127.0.0.1:2525"

        [[listener]]
        name = "mx"
        listen = "[::1]:2525"

        [[listener]]
        name = "other"
        listen = "127.0.0.1:2525"

        [[listener]]
        listen = "[::1]:99999"

        [[listener]]
        name = "bad name"

        [[listener]]
        name = "v6"
        listen = "[0:0::1]:2525"
        """,
    ) == [
        ("listener[3].name", "missing required key"),
        ("listener[3].listen", "port must be a number from 0 to 65535 (got '99999')"),
        ("listener[4].listen", "missing required key"),
        (
            "listener[4].name",
            "'bad name' is not a valid listener name (1-64 letters, digits, '_', '.', '-',"
            " starting with a letter or digit)",
        ),
        ("listener[1].name", "duplicate listener name 'mx'"),
        ("listener[2].listen", "127.0.0.1:2525 is already used by listener 'mx'"),
        # Same address as listener[1] once normalized.
        ("listener[5].listen", "[::1]:2525 is already used by listener 'mx'"),
    ]


def test_every_error_is_collected_and_listed_one_per_line(tmp_path: Path) -> None:
    path = tmp_path / CONFIG_FILE_NAME
    path.write_text(
        textwrap.dedent(
            """
            [server]
            hostname = "no spaces allowed"
            received_header = "yes"

            [[listener]]
            name = "mx"
            listen = "[::1]"

            [timeouts]
            command = 0

            [limits]
            max_recipients = true
            bogus = 1

            [log]
            level = "LOUD"
            """
        )
    )
    with pytest.raises(ConfigError) as info:
        load_config(tmp_path)
    lines = str(info.value).splitlines()
    assert [line.split(": ")[1] for line in lines] == [
        "server.hostname",
        "server.received_header",
        "listener[0].listen",
        "timeouts.command",
        "limits.max_recipients",
        "limits.bogus",
        "log.level",
    ]
    assert all(line.startswith(f"{path}: ") for line in lines)
    assert lines[4] == (f"{path}: limits.max_recipients: expected an integer, got a boolean (true)")
    assert len(info.value.issues) == len(lines)


def test_config_error_str_without_key(tmp_path: Path) -> None:
    error = ConfigError([ConfigIssue("f.toml", "", "broken"), ConfigIssue("f.toml", "a.b", "no")])
    assert str(error) == "f.toml: broken\nf.toml: a.b: no"
