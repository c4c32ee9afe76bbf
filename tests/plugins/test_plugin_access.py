from __future__ import annotations

import textwrap
from pathlib import Path

import pytest

from tests.plugins.plugin_kit import (
    begin,
    config_error,
    connection,
    load,
    runner,
    shipped_config,
    state,
    verdict,
)
from trio_mta import hooks
from trio_mta.protocol import Address, MailParams, RcptParams, Reply

DENIED = Reply(550, "5.7.1", ("Access denied",))
SPAMMER = Address("spammer", "spam.example")
FRIEND = Address("friend", "Friendly.Example")
NOBODY = RcptParams()

# A user's policy plugin that refuses everything: what whitelist_skip is for.
STRICT = """
from trio_mta import hooks

class Plugin(hooks.Plugin):
    async def hook_connect(self, conn):
        return hooks.deny("strict connect")

    async def hook_mail(self, conn, sender, params):
        return hooks.deny("strict mail")

    async def hook_rcpt(self, conn, rcpt, params):
        return hooks.deny("strict rcpt")

    async def hook_data_post(self, conn):
        return hooks.deny("strict data")
"""


@pytest.fixture
def user_dir(tmp_path: Path) -> Path:
    (tmp_path / "strict.py").write_text(textwrap.dedent(STRICT))
    return tmp_path


def with_strict(config: dict[str, object], user_dir: Path) -> hooks.HookRunner:
    """access first, then the strict plugin, as an operator would order them."""
    plugins = hooks.load_plugins(
        ["access", "strict"],
        directories=[user_dir],
        configs={"access": {"whitelist_skip": ["strict"], **config}},
    )
    return hooks.HookRunner(plugins)


# ----------------------------------------------------------------------------- client / rDNS


async def test_no_lists_no_opinion() -> None:
    run = runner("access")
    conn = connection()
    assert (await verdict(run, "connect", conn))[0] is hooks.CONT
    assert (await verdict(run, "helo", conn, "mx.example.org"))[0] is hooks.CONT
    begin(conn)
    assert (await verdict(run, "mail", conn, SPAMMER, MailParams()))[0] is hooks.CONT
    assert (await verdict(run, "rcpt", conn, SPAMMER, NOBODY))[0] is hooks.CONT
    assert "whitelisted" not in conn.notes


@pytest.mark.parametrize("ip", ["192.0.2.77", "::ffff:192.0.2.77", "2001:db8::1"])
async def test_denied_client_is_refused_at_connect(ip: str) -> None:
    run = runner("access", {"client": {"deny": ["192.0.2.0/24", "2001:db8::/32"]}})
    result, reply = await verdict(run, "connect", connection(ip))
    assert result.action is hooks.Action.DENY
    assert reply == Reply(554, "5.7.1", ("Access denied",))


async def test_client_outside_the_deny_list_passes() -> None:
    run = runner("access", {"client": {"deny": ["192.0.2.0/24"]}})
    assert (await verdict(run, "connect", connection("198.51.100.1")))[0] is hooks.CONT
    assert (await verdict(run, "connect", connection("not-an-ip")))[0] is hooks.CONT


async def test_refusal_text_is_configurable() -> None:
    run = runner("access", {"message": "Go away", "helo": {"deny": ["bad"]}})
    assert (await verdict(run, "helo", connection(), "bad"))[1] == Reply(550, "5.7.1", ("Go away",))


async def test_client_allow_wins_over_client_deny() -> None:
    run = runner("access", {"client": {"allow": ["192.0.2.10"], "deny": ["192.0.2.0/24"]}})
    conn = connection("192.0.2.10")
    assert (await verdict(run, "connect", conn))[0] is hooks.CONT
    assert conn.notes["whitelisted"] == "access: client"


async def test_denied_rdns_is_refused_at_connect() -> None:
    run = runner("access", {"rdns": {"deny": ["host.dsl.example"]}})
    conn = connection(notes={"rdns": "HOST.dsl.example."})
    assert (await verdict(run, "connect", conn))[1] == Reply(554, "5.7.1", ("Access denied",))


async def test_rdns_is_not_checked_without_the_note() -> None:
    run = runner("access", {"rdns": {"deny_regex": [".*"]}})
    assert (await verdict(run, "connect", connection()))[0] is hooks.CONT
    assert (await verdict(run, "connect", connection(notes={"rdns": ""})))[0] is hooks.CONT


async def test_rdns_regexes_must_match_the_whole_name() -> None:
    run = runner("access", {"rdns": {"deny_regex": [r"dsl\d+\.example"]}})
    partial = connection(notes={"rdns": "host.dsl1.example"})
    assert (await verdict(run, "connect", partial))[0] is hooks.CONT
    whole = connection(notes={"rdns": "DSL1.example"})
    assert (await verdict(run, "connect", whole))[0].action is hooks.Action.DENY


async def test_rdns_allow_wins_over_client_deny() -> None:
    config = {
        "client": {"deny": ["192.0.2.0/24"]},
        "rdns": {"allow_regex": [r".*\.partner\.example"]},
    }
    conn = connection(notes={"rdns": "mx1.partner.example"})
    assert (await verdict(runner("access", config), "connect", conn))[0] is hooks.CONT
    assert conn.notes["whitelisted"] == "access: rdns"


async def test_rdns_deny_cannot_override_client_allow() -> None:
    config = {"client": {"allow": ["192.0.2.0/24"]}, "rdns": {"deny": ["mx.example.org"]}}
    conn = connection(notes={"rdns": "mx.example.org"})
    assert (await verdict(runner("access", config), "connect", conn))[0] is hooks.CONT
    assert conn.notes["whitelisted"] == "access: client"


# ----------------------------------------------------------------------------- HELO


@pytest.mark.parametrize("hook", ["helo", "ehlo"])
@pytest.mark.parametrize("name", ["localhost", "LocalHost.", "x.dynamic.example"])
async def test_denied_helo_names(hook: str, name: str) -> None:
    config = {"helo": {"deny": ["localhost"], "deny_regex": [r".*\.dynamic\.example"]}}
    result, reply = await verdict(runner("access", config), hook, connection(), name)
    assert result.action is hooks.Action.DENY
    assert reply == DENIED


async def test_helo_allow_wins_over_helo_deny_regex() -> None:
    config = {"helo": {"allow": ["good.dynamic.example"], "deny_regex": [".*dynamic.*"]}}
    conn = connection()
    assert (await verdict(runner("access", config), "ehlo", conn, "good.dynamic.example"))[
        1
    ] is None
    assert conn.notes["whitelisted"] == "access: helo"


# ----------------------------------------------------------------------------- MAIL / RCPT


@pytest.mark.parametrize(
    "entry", ["spammer@spam.example", "SPAMMER@Spam.Example", "spam.example", "@spam.example."]
)
async def test_denied_sender_by_address_or_domain(entry: str) -> None:
    conn = connection()
    begin(conn, SPAMMER)
    run = runner("access", {"mail": {"deny": [entry]}})
    assert (await verdict(run, "mail", conn, SPAMMER, MailParams()))[1] == DENIED


async def test_address_entry_does_not_match_other_addresses_at_the_domain() -> None:
    run = runner("access", {"mail": {"deny": ["spammer@spam.example", "<>"]}})
    conn = connection()
    other = Address("other", "spam.example")
    begin(conn, other)
    assert (await verdict(run, "mail", conn, other, MailParams()))[0] is hooks.CONT


async def test_null_sender_entry_and_regex() -> None:
    conn = connection()
    begin(conn, None)
    listed = runner("access", {"mail": {"deny": ["<>"]}})
    assert (await verdict(listed, "mail", conn, None, MailParams()))[1] == DENIED
    regex = runner("access", {"mail": {"deny_regex": [""]}})
    assert (await verdict(regex, "mail", conn, None, MailParams()))[1] == DENIED
    begin(conn, SPAMMER)
    assert (await verdict(regex, "mail", conn, SPAMMER, MailParams()))[0] is hooks.CONT


async def test_sender_regex_sees_the_unquoted_address() -> None:
    sender = Address('"john doe"', "example.org")
    conn = connection()
    begin(conn, sender)
    run = runner("access", {"mail": {"deny_regex": ["john doe@example\\.org"]}})
    assert (await verdict(run, "mail", conn, sender, MailParams()))[1] == DENIED


async def test_denied_recipient() -> None:
    run = runner("access", {"rcpt": {"deny": ["old@example.test"]}})
    conn = connection()
    begin(conn)
    old = Address("Old", "example.test")
    assert (await verdict(run, "rcpt", conn, old, NOBODY))[1] == Reply(
        550, "5.7.1", ("Access denied",)
    )
    new = Address("new", "example.test")
    assert (await verdict(run, "rcpt", conn, new, NOBODY))[0] is hooks.CONT


async def test_postmaster_entry_matches_the_bare_postmaster() -> None:
    run = runner("access", {"rcpt": {"deny": ["<postmaster>"]}})
    conn = connection()
    begin(conn)
    bare = Address("Postmaster", "")
    assert (await verdict(run, "rcpt", conn, bare, NOBODY))[1] == DENIED
    domain = Address("postmaster", "example.test")
    assert (await verdict(run, "rcpt", conn, domain, NOBODY))[0] is hooks.CONT


# ----------------------------------------------------------------------------- allow scopes


async def test_client_allow_lasts_for_the_connection() -> None:
    config = {
        "client": {"allow": ["192.0.2.0/24"]},
        "helo": {"deny": ["bad"]},
        "mail": {"deny": ["spam.example"]},
        "rcpt": {"deny": ["spam.example"]},
    }
    run = runner("access", config)
    conn = connection()
    await verdict(run, "connect", conn)
    assert (await verdict(run, "helo", conn, "bad"))[0] is hooks.CONT
    for _ in range(2):  # and in every transaction
        begin(conn, SPAMMER)
        assert (await verdict(run, "mail", conn, SPAMMER, MailParams()))[0] is hooks.CONT
        assert (await verdict(run, "rcpt", conn, SPAMMER, NOBODY))[0] is hooks.CONT


async def test_whitelisted_note_from_another_plugin_counts() -> None:
    run = runner("access", {"helo": {"deny": ["bad"]}})
    conn = connection(notes={"whitelisted": "dns_whitelist"})
    assert (await verdict(run, "helo", conn, "bad"))[0] is hooks.CONT


async def test_sender_allow_lasts_for_the_transaction_only() -> None:
    config = {"mail": {"allow": ["friendly.example"]}, "rcpt": {"deny": ["spam.example"]}}
    run = runner("access", config)
    conn = connection()
    txn = begin(conn, FRIEND)
    assert (await verdict(run, "mail", conn, FRIEND, MailParams()))[0] is hooks.CONT
    assert txn.notes["whitelisted"] == "access: mail"
    assert (await verdict(run, "rcpt", conn, SPAMMER, NOBODY))[0] is hooks.CONT
    assert "whitelisted" not in conn.notes
    begin(conn, SPAMMER)  # the next transaction
    assert (await verdict(run, "rcpt", conn, SPAMMER, NOBODY))[1] == DENIED


async def test_recipient_allow_covers_that_recipient_only() -> None:
    config = {"rcpt": {"allow": ["abuse@example.test"], "deny_regex": [".*@example\\.test"]}}
    run = runner("access", config)
    conn = connection()
    txn = begin(conn)
    abuse = Address("abuse", "example.test")
    result, _ = await verdict(run, "rcpt", conn, abuse, NOBODY)
    assert result is hooks.CONT  # allowed, but not accepted: that is another plugin's call
    assert "whitelisted" not in txn.notes
    other = Address("sales", "example.test")
    assert (await verdict(run, "rcpt", conn, other, NOBODY))[1] == DENIED


async def test_sender_deny_is_not_undone_by_sender_allow_elsewhere() -> None:
    config = {"mail": {"allow": ["friendly.example"], "deny": ["spammer@spam.example"]}}
    conn = connection()
    begin(conn, SPAMMER)
    assert (await verdict(runner("access", config), "mail", conn, SPAMMER, MailParams()))[
        1
    ] == DENIED


# ----------------------------------------------------------------------------- whitelist_skip


async def test_without_an_allow_the_skipped_plugin_still_runs(user_dir: Path) -> None:
    run = with_strict({"mail": {"allow": ["friendly.example"]}}, user_dir)
    conn = connection()
    begin(conn, SPAMMER)
    result, _ = await verdict(run, "mail", conn, SPAMMER, MailParams())
    assert result.message == ("strict mail",)


async def test_sender_allow_skips_plugins_for_the_transaction(user_dir: Path) -> None:
    run = with_strict({"mail": {"allow": ["friendly.example"]}}, user_dir)
    conn = connection()
    txn = begin(conn, FRIEND)
    assert (await verdict(run, "mail", conn, FRIEND, MailParams()))[0] is hooks.CONT
    assert txn.skip_plugins == {"strict"}
    assert (await verdict(run, "rcpt", conn, SPAMMER, NOBODY))[0] is hooks.CONT
    assert (await verdict(run, "data_post", conn))[0] is hooks.CONT
    begin(conn, SPAMMER)
    assert (await verdict(run, "mail", conn, SPAMMER, MailParams()))[0].action is hooks.Action.DENY


async def test_recipient_allow_skips_plugins_for_the_rest_of_the_transaction(
    user_dir: Path,
) -> None:
    run = with_strict({"rcpt": {"allow": ["<postmaster>"]}}, user_dir)
    conn = connection()
    txn = begin(conn)
    assert (await verdict(run, "rcpt", conn, Address("postmaster", ""), NOBODY))[0] is hooks.CONT
    assert txn.skip_plugins == {"strict"}


async def test_client_allow_skips_plugins_in_every_transaction(user_dir: Path) -> None:
    run = with_strict({"client": {"allow": ["192.0.2.0/24"]}}, user_dir)
    conn = connection()
    # At connect there is no transaction to skip with: only the chain's order helps there.
    assert (await verdict(run, "connect", conn))[0].message == ("strict connect",)
    assert conn.notes["skip_plugins"] == {"strict"}
    for _ in range(2):
        txn = begin(conn, SPAMMER)
        assert (await verdict(run, "mail", conn, SPAMMER, MailParams()))[0] is hooks.CONT
        assert txn.skip_plugins == {"strict"}


async def test_helo_allow_skips_plugins_from_the_next_transaction(user_dir: Path) -> None:
    run = with_strict({"helo": {"allow": ["trusted.example"]}}, user_dir)
    conn = connection()
    await verdict(run, "helo", conn, "trusted.example")
    begin(conn, SPAMMER)
    assert (await verdict(run, "mail", conn, SPAMMER, MailParams()))[0] is hooks.CONT


# ----------------------------------------------------------------------------- config


def test_shipped_config_shows_the_defaults() -> None:
    shipped = load("access", shipped_config("access")).plugins[0]
    assert state(shipped) == state(load("access").plugins[0])


def test_runner_keys_are_accepted() -> None:
    load("access", {"timeout": 3, "on_error": "cont", "message": "No"})


@pytest.mark.parametrize(
    ("config", "expected"),
    [
        ({"mesage": "x"}, "unknown keys ['mesage']"),
        ({"message": ""}, "message: must be one non-empty line"),
        ({"message": 5}, "message: must be one non-empty line"),
        ({"message": "a\nb"}, "message: must be one non-empty line"),
        ({"whitelist_skip": "tarpit"}, "whitelist_skip: must be a list of strings"),
        ({"whitelist_skip": ["tar-pit"]}, "whitelist_skip: must be a list of plugin names"),
        ({"client": ["10.0.0.0/8"]}, "[client]: must be a table"),
        ({"client": {"deny_regex": ["10\\..*"]}}, "[client]: unknown keys ['deny_regex']"),
        ({"client": {"allow": "10.0.0.0/8"}}, "[client] allow: must be a list of strings"),
        ({"client": {"deny": ["10.0.0.0/40"]}}, "[client] deny: "),
        ({"client": {"allow": ["localhost"]}}, "[client] allow: "),
        ({"rdns": {"block": []}}, "[rdns]: unknown keys ['block']"),
        ({"helo": {"deny": [1]}}, "[helo] deny: must be a list of strings"),
        ({"mail": {"deny_regex": ["(unclosed"]}}, "[mail] deny_regex: "),
        ({"rcpt": {"allow_regex": ["*x"]}}, "[rcpt] allow_regex: "),
    ],
)
def test_config_errors(config: dict[str, object], expected: str) -> None:
    assert expected in config_error("access", config)
