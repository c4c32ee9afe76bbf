"""greylist through the hook runner, on a real SQLite file, with trio's MockClock as the time.

``mock_clock`` never jumps by itself: time moves only by ``mock_clock.jump``, so the plugin's
waits on its worker threads (loading, reading through, flushing) cost no virtual time.
"""

from __future__ import annotations

import contextlib
import logging
import sqlite3
import sys
from collections.abc import AsyncIterator
from pathlib import Path
from typing import Protocol, cast

import attrs
import pytest
import trio
import trio.testing

from tests.plugins.plugin_kit import begin, config_error, connection, shipped_config, verdict
from trio_mta import hooks
from trio_mta.protocol import Address, Reply

ALICE = Address("alice", "example.org")
CAROL = Address("carol", "example.net")
BOB = Address("bob", "example.test")
DAVE = Address("dave", "example.test")
IP = "192.0.2.10"
DAY = 86400.0
DELAY, WINDOW, LIFETIME = 300.0, DAY, 35 * DAY
PURGE_INTERVAL = 3600.0
COUNT_SPACING = 300.0


def greylisted(seconds: int) -> Reply:
    return Reply(451, "4.7.1", (f"Greylisted: please try again in {seconds} seconds",))


class GreylistPlugin(Protocol):
    settings: attrs.AttrsInstance

    async def startup(self) -> None: ...
    async def shutdown(self) -> None: ...
    async def flush(self) -> bool: ...


@attrs.frozen
class Greylist:
    run: hooks.HookRunner
    plugin: GreylistPlugin

    async def attempt(
        self,
        rcpt: Address = BOB,
        sender: Address | None = ALICE,
        ip: str = IP,
        **fields: object,
    ) -> tuple[Reply | None, hooks.Transaction]:
        """One RCPT that a plugin before accepted; the reply (None: passed on) and the
        transaction, for its notes."""
        conn = connection(ip, **fields)
        txn = begin(conn, sender)
        _, reply = await verdict(self.run, "rcpt_ok", conn, rcpt)
        return reply, txn

    async def reply(
        self, rcpt: Address = BOB, sender: Address | None = ALICE, ip: str = IP
    ) -> Reply | None:
        return (await self.attempt(rcpt, sender, ip))[0]


@attrs.define
class Bench:
    """Loads greylist as the server does, on one state directory; shuts every load down."""

    var_dir: Path
    loaded: list[hooks.PluginSet] = attrs.Factory(list)

    def load(self, **config: object) -> Greylist:
        env = hooks.PluginEnv(var_dir=self.var_dir, local_domains=("example.test",))
        plugins = hooks.load_plugins(["greylist"], configs={"greylist": config}, env=env)
        self.loaded.append(plugins)
        return Greylist(hooks.HookRunner(plugins), cast(GreylistPlugin, plugins.plugins[0]))

    @property
    def database(self) -> Path:
        return self.var_dir / "greylist.sqlite3"

    def rows(self, table: str = "triplet") -> list[tuple[object, ...]]:
        with contextlib.closing(sqlite3.connect(self.database)) as db:
            return list(db.execute(f"SELECT * FROM {table} ORDER BY 1, 2"))


@pytest.fixture
async def bench(tmp_path: Path) -> AsyncIterator[Bench]:
    bench = Bench(tmp_path / "var")
    yield bench
    for plugins in bench.loaded:
        await plugins.shutdown()


# ----------------------------------------------------------------------------- the cycle


async def test_first_attempt_is_greylisted_with_the_wait(
    bench: Bench, mock_clock: trio.testing.MockClock
) -> None:
    greylist = bench.load()
    reply, txn = await greylist.attempt()
    assert reply == greylisted(300)
    assert txn.notes["greylist.result"] == "greylisted"
    assert txn.notes["greylist.recipients"] == {"bob@example.test": "greylisted"}


async def test_an_early_retry_is_greylisted_with_the_seconds_left(
    bench: Bench, mock_clock: trio.testing.MockClock
) -> None:
    greylist = bench.load()
    assert await greylist.reply() == greylisted(300)
    mock_clock.jump(100)
    assert await greylist.reply() == greylisted(200)
    mock_clock.jump(199.5)
    assert await greylist.reply() == greylisted(1)
    # First-seen was not reset by the retries: the delay counts from the first attempt.
    mock_clock.jump(0.5)
    reply, txn = await greylist.attempt()
    assert reply is None
    assert txn.notes["greylist.result"] == "pass"


async def test_a_retry_after_the_delay_passes_and_then_every_attempt(
    bench: Bench, mock_clock: trio.testing.MockClock
) -> None:
    greylist = bench.load()
    assert await greylist.reply() == greylisted(300)
    mock_clock.jump(DELAY)
    assert await greylist.reply() is None
    mock_clock.jump(1)
    assert await greylist.reply() is None
    # Another recipient, sender or network is another triplet.
    assert await greylist.reply(rcpt=DAVE) == greylisted(300)
    assert await greylist.reply(sender=CAROL) == greylisted(300)
    assert await greylist.reply(ip="198.51.100.7") == greylisted(300)


async def test_a_pending_triplet_older_than_the_retry_window_starts_over(
    bench: Bench, mock_clock: trio.testing.MockClock
) -> None:
    greylist = bench.load()
    assert await greylist.reply() == greylisted(300)
    mock_clock.jump(WINDOW + 1)
    assert await greylist.reply() == greylisted(300)  # a new round, from now
    mock_clock.jump(DELAY - 1)
    assert await greylist.reply() == greylisted(1)
    mock_clock.jump(1)
    assert await greylist.reply() is None


async def test_a_retry_at_the_end_of_the_retry_window_still_passes(
    bench: Bench, mock_clock: trio.testing.MockClock
) -> None:
    greylist = bench.load()
    await greylist.reply()
    mock_clock.jump(WINDOW)
    assert await greylist.reply() is None


async def test_the_pass_lasts_pass_lifetime_from_the_latest_pass(
    bench: Bench, mock_clock: trio.testing.MockClock
) -> None:
    greylist = bench.load(auto_allow_after=0)
    await greylist.reply()
    mock_clock.jump(DELAY)
    assert await greylist.reply() is None
    mock_clock.jump(LIFETIME - 1)
    assert await greylist.reply() is None  # refreshed: another lifetime from now
    mock_clock.jump(LIFETIME - 1)
    assert await greylist.reply() is None
    mock_clock.jump(LIFETIME + 1)
    assert await greylist.reply() == greylisted(300)


async def test_a_null_sender_and_letter_case(
    bench: Bench, mock_clock: trio.testing.MockClock
) -> None:
    greylist = bench.load()
    assert await greylist.reply(sender=None) == greylisted(300)
    assert await greylist.reply(rcpt=Address("Bob", "Example.TEST")) == greylisted(300)
    mock_clock.jump(DELAY)
    assert await greylist.reply(sender=None) is None
    # The same triplet whatever the case of the addresses.
    assert (
        await greylist.reply(Address("BOB", "EXAMPLE.test."), Address("Alice", "EXAMPLE.org"))
        is None
    )


async def test_recipients_get_their_own_verdicts_in_one_transaction(
    bench: Bench, mock_clock: trio.testing.MockClock
) -> None:
    greylist = bench.load()
    await greylist.reply(rcpt=BOB)
    mock_clock.jump(DELAY)
    conn = connection(IP)
    txn = begin(conn, ALICE)
    assert (await verdict(greylist.run, "rcpt_ok", conn, BOB))[1] is None
    assert (await verdict(greylist.run, "rcpt_ok", conn, DAVE))[1] == greylisted(300)
    assert txn.notes["greylist.result"] == "greylisted"  # the latest recipient's
    assert txn.notes["greylist.recipients"] == {
        "bob@example.test": "pass",
        "dave@example.test": "greylisted",
    }


async def test_one_line_per_decision_at_info(
    bench: Bench, mock_clock: trio.testing.MockClock, caplog: pytest.LogCaptureFixture
) -> None:
    caplog.set_level(logging.INFO, logger="trio_mta.plugin.greylist")
    greylist = bench.load()
    await greylist.reply()
    mock_clock.jump(DELAY + 12)
    await greylist.reply()
    await greylist.reply(rcpt=Address("postmaster", "example.test"))
    lines = [r.getMessage() for r in caplog.records if " greylist " in r.getMessage()]
    who = "client=192.0.2.0/24 from=<alice@example.org>"
    assert lines == [
        f"conn=c1 greylist greylisted {who} to=<bob@example.test> new",
        f"conn=c1 greylist pass {who} to=<bob@example.test> age=312s after 1 attempts",
        f"conn=c1 greylist skipped:allow_recipients {who} to=<postmaster@example.test>",
    ]
    assert all(r.levelno == logging.INFO for r in caplog.records if " greylist " in r.getMessage())


# ----------------------------------------------------------------------------- networks


@pytest.mark.parametrize(
    ("first", "retry", "same"),
    [
        ("192.0.2.10", "192.0.2.250", True),
        ("192.0.2.10", "192.0.3.10", False),
        ("192.0.2.10", "::ffff:192.0.2.99", True),  # IPv4-mapped IPv6 is the IPv4 address
        ("2001:db8:1:2::1", "2001:db8:1:2:ffff:ffff:ffff:fffe", True),
        ("2001:db8:1:2::1", "2001:db8:1:3::1", False),
    ],
)
async def test_the_triplet_holds_the_client_network(
    bench: Bench, mock_clock: trio.testing.MockClock, first: str, retry: str, same: bool
) -> None:
    greylist = bench.load()
    assert await greylist.reply(ip=first) == greylisted(300)
    mock_clock.jump(DELAY)
    assert await greylist.reply(ip=retry) == (None if same else greylisted(300))


@pytest.mark.parametrize(
    ("config", "first", "retry", "same"),
    [
        ({"ipv4_prefix": 32}, "192.0.2.10", "192.0.2.11", False),
        ({"ipv4_prefix": 16}, "192.0.2.10", "192.0.77.1", True),
        ({"ipv6_prefix": 128}, "2001:db8::1", "2001:db8::2", False),
        ({"ipv6_prefix": 48}, "2001:db8:1:2::1", "2001:db8:1:ff::1", True),
    ],
)
async def test_prefixes_are_configurable(
    bench: Bench,
    mock_clock: trio.testing.MockClock,
    config: dict[str, object],
    first: str,
    retry: str,
    same: bool,
) -> None:
    greylist = bench.load(**config)
    await greylist.reply(ip=first)
    mock_clock.jump(DELAY)
    assert await greylist.reply(ip=retry) == (None if same else greylisted(300))


async def _pass(greylist: Greylist, clock: trio.testing.MockClock, sender: Address) -> None:
    assert await greylist.reply(sender=sender) == greylisted(300)
    clock.jump(DELAY)
    assert await greylist.reply(sender=sender) is None


async def test_a_network_that_passed_often_enough_is_allowed_for_everyone(
    bench: Bench, mock_clock: trio.testing.MockClock
) -> None:
    greylist = bench.load(auto_allow_after=2)
    await _pass(greylist, mock_clock, ALICE)  # counted once
    mock_clock.jump(COUNT_SPACING)
    await _pass(greylist, mock_clock, CAROL)  # counted twice
    reply, txn = await greylist.attempt(
        rcpt=DAVE, sender=Address("new", "example.com"), ip="192.0.2.77"
    )
    assert reply is None
    assert txn.notes["greylist.result"] == "pass"
    assert await greylist.reply(ip="192.0.3.1") == greylisted(300)  # another network
    # The allowance lasts pass_lifetime from the network's latest pass.
    mock_clock.jump(LIFETIME + 1)
    assert await greylist.reply(sender=Address("later", "example.com")) == greylisted(300)


async def test_passes_closer_than_the_spacing_count_once(
    bench: Bench, mock_clock: trio.testing.MockClock
) -> None:
    greylist = bench.load(auto_allow_after=2)
    await _pass(greylist, mock_clock, ALICE)
    for _ in range(5):
        mock_clock.jump(COUNT_SPACING / 10)
        assert await greylist.reply(sender=ALICE) is None
    assert await greylist.reply(sender=CAROL) == greylisted(300)


async def test_auto_allow_can_be_turned_off(
    bench: Bench, mock_clock: trio.testing.MockClock
) -> None:
    greylist = bench.load(auto_allow_after=0)
    for n in range(6):
        await _pass(greylist, mock_clock, Address(f"s{n}", "example.org"))
        mock_clock.jump(COUNT_SPACING)
    assert await greylist.reply(sender=CAROL) == greylisted(300)


# ----------------------------------------------------------------------------- exemptions


POSTMASTER = Address("postmaster", "")


@pytest.mark.parametrize(
    ("config", "attempt", "why"),
    [
        ({}, {"auth_user": "alice", "relaying": True}, "authenticated"),
        ({}, {"relaying": True}, "relaying"),
        ({}, {"notes": {"dns_list.allowed": "list.dnswl.example"}}, "dns_list"),
        ({"allow_ips": ["192.0.2.0/28"]}, {}, "allow_ips"),
        ({"allow_ips": ["192.0.2.10"]}, {"ip": "::ffff:192.0.2.10"}, "allow_ips"),
        ({"allow_ips": ["2001:db8::/32"]}, {"ip": "2001:db8:5::1"}, "allow_ips"),
        ({"allow_sender_domains": ["example.org"]}, {}, "allow_sender_domains"),
        (
            {"allow_sender_domains": ["EXAMPLE.org."]},
            {"sender": Address("b", "bounce.Example.org")},
            "allow_sender_domains",
        ),
        ({}, {"rcpt": Address("postmaster", "example.test")}, "allow_recipients"),
        ({}, {"rcpt": Address("PostMaster", "other.test")}, "allow_recipients"),
        ({}, {"rcpt": POSTMASTER}, "allow_recipients"),
        ({"allow_recipients": ["@example.test"]}, {}, "allow_recipients"),
        ({"allow_recipients": ["Bob@Example.test"]}, {}, "allow_recipients"),
        ({"allow_recipients": ["bob@"]}, {}, "allow_recipients"),
        ({}, {"ip": "not-an-ip"}, "no_client_ip"),
    ],
)
async def test_exemptions_pass_without_state(
    bench: Bench,
    mock_clock: trio.testing.MockClock,
    config: dict[str, object],
    attempt: dict[str, object],
    why: str,
) -> None:
    greylist = bench.load(**config)
    await greylist.plugin.startup()
    reply, txn = await greylist.attempt(**attempt)  # type: ignore[arg-type]  # by name, per case
    assert reply is None
    assert txn.notes["greylist.result"] == f"skipped:{why}"
    await greylist.plugin.flush()
    assert bench.rows() == []


@pytest.mark.parametrize(
    ("config", "attempt"),
    [
        ({}, {"notes": {"dns_list.allowed": False}}),
        ({"allow_ips": ["192.0.2.0/28"]}, {"ip": "192.0.2.16"}),
        ({"allow_ips": ["2001:db8::/32"]}, {"ip": "2001:db9::1"}),
        ({"allow_sender_domains": ["example.org"]}, {"sender": Address("a", "notexample.org")}),
        ({"allow_sender_domains": ["bounce.example.org"]}, {"sender": Address("a", "example.org")}),
        ({"allow_sender_domains": ["example.org"]}, {"sender": None}),
        ({"allow_recipients": ["@example.test"]}, {"rcpt": Address("bob", "sub.example.test")}),
        ({"allow_recipients": ["bob@example.test"]}, {"rcpt": Address("bob", "example.net")}),
        ({"allow_recipients": []}, {"rcpt": Address("postmaster", "example.test")}),
    ],
)
async def test_near_misses_are_greylisted(
    bench: Bench,
    mock_clock: trio.testing.MockClock,
    config: dict[str, object],
    attempt: dict[str, object],
) -> None:
    greylist = bench.load(**config)
    reply, _ = await greylist.attempt(**attempt)  # type: ignore[arg-type]  # by name, per case
    assert reply == greylisted(300)


# ----------------------------------------------------------------------------- the file


async def test_state_survives_a_new_instance_on_the_same_file(
    bench: Bench, mock_clock: trio.testing.MockClock
) -> None:
    first = bench.load()
    await first.reply(rcpt=BOB)
    mock_clock.jump(DELAY)
    assert await first.reply(rcpt=BOB) is None
    assert await first.reply(rcpt=DAVE) == greylisted(300)
    await first.plugin.shutdown()

    second = bench.load()
    await second.plugin.startup()
    assert await second.reply(rcpt=BOB) is None  # passed stays passed
    assert await second.reply(rcpt=DAVE) == greylisted(300)  # first-seen kept, not restarted
    mock_clock.jump(DELAY)
    assert await second.reply(rcpt=DAVE) is None


async def test_a_running_instance_reads_what_another_wrote_since_it_loaded(
    bench: Bench, mock_clock: trio.testing.MockClock
) -> None:
    """A reload: the old generation still serves its connections when the new one has loaded."""
    old, new = bench.load(), bench.load()
    await old.plugin.startup()
    await new.plugin.startup()
    assert await old.reply() == greylisted(300)
    assert await old.plugin.flush()
    mock_clock.jump(DELAY)
    assert await new.reply() is None


async def test_expired_rows_are_deleted_from_the_file(
    bench: Bench, mock_clock: trio.testing.MockClock
) -> None:
    greylist = bench.load(auto_allow_after=1)
    await _pass(greylist, mock_clock, ALICE)  # passed, and its network counted
    await greylist.reply(rcpt=DAVE, ip="198.51.100.1")  # pending
    assert await greylist.plugin.flush()
    assert len(bench.rows()) == 2
    assert len(bench.rows("client")) == 1

    mock_clock.jump(WINDOW + PURGE_INTERVAL)
    await greylist.reply(rcpt=DAVE, ip="203.0.113.1")  # a decision: the purge is due
    assert await greylist.plugin.flush()
    assert [row[:3] for row in bench.rows()] == [
        ("192.0.2.0/24", "alice@example.org", "bob@example.test"),
        ("203.0.113.0/24", "alice@example.org", "dave@example.test"),
    ]
    mock_clock.jump(LIFETIME)
    await greylist.reply(rcpt=DAVE, ip="203.0.113.1")  # started over: a new pending row
    assert await greylist.plugin.flush()
    assert [row[:3] for row in bench.rows()] == [
        ("203.0.113.0/24", "alice@example.org", "dave@example.test"),
    ]
    assert bench.rows("client") == []


async def test_the_file_is_purged_once_an_hour_not_on_every_decision(
    bench: Bench, mock_clock: trio.testing.MockClock
) -> None:
    greylist = bench.load(retry_window=600)
    await greylist.plugin.startup()  # purges, and the next purge is due in an hour
    await greylist.reply(rcpt=DAVE)
    mock_clock.jump(700)  # DAVE's row has expired
    await greylist.reply(rcpt=BOB)
    assert await greylist.plugin.flush()
    assert len(bench.rows()) == 2
    mock_clock.jump(PURGE_INTERVAL - 700)
    await greylist.reply(rcpt=BOB)
    assert await greylist.plugin.flush()
    assert [row[2] for row in bench.rows()] == ["bob@example.test"]


async def test_the_file_defaults_to_var_dir_and_may_be_elsewhere(
    bench: Bench, tmp_path: Path, mock_clock: trio.testing.MockClock
) -> None:
    greylist = bench.load()
    await greylist.reply()
    assert await greylist.plugin.flush()
    assert bench.database.is_file()
    elsewhere = tmp_path / "state" / "grey.db"
    other = bench.load(database=str(elsewhere))
    await other.reply()
    assert await other.plugin.flush()
    with contextlib.closing(sqlite3.connect(elsewhere)) as db:
        assert db.execute("SELECT COUNT(*) FROM triplet").fetchone() == (1,)


async def test_a_file_that_cannot_be_opened_stops_startup(
    bench: Bench, mock_clock: trio.testing.MockClock
) -> None:
    bench.var_dir.mkdir()
    bench.database.write_bytes(b"this is not an SQLite database, but it is long enough" * 40)
    greylist = bench.load()
    with pytest.raises(
        hooks.PluginLoadError,
        match=r"plugin 'greylist': cannot use .*greylist\.sqlite3: file is not a database",
    ):
        await greylist.plugin.startup()


async def test_a_broken_file_lets_mail_through(
    bench: Bench, mock_clock: trio.testing.MockClock, caplog: pytest.LogCaptureFixture
) -> None:
    bench.var_dir.mkdir()
    bench.database.mkdir()  # a directory where the file should be
    greylist = bench.load()
    reply, txn = await greylist.attempt()
    assert reply is None
    assert txn.notes["greylist.result"] == "skipped:error"
    assert any("greylist state unavailable" in r.getMessage() for r in caplog.records)


async def test_a_locked_file_delays_the_writes_not_the_decisions(
    bench: Bench,
    mock_clock: trio.testing.MockClock,
    caplog: pytest.LogCaptureFixture,
    monkeypatch: pytest.MonkeyPatch,
) -> None:
    caplog.set_level(logging.INFO, logger="trio_mta.plugin.greylist")
    greylist = bench.load()
    store = sys.modules[type(greylist.plugin).__module__].store  # the plugin's own copy
    monkeypatch.setattr(store, "BUSY_SECONDS", 0.05)
    monkeypatch.setattr(store, "RETRY_SECONDS", 0.05)
    await greylist.plugin.startup()
    with contextlib.closing(sqlite3.connect(bench.database, isolation_level=None)) as other:
        other.execute("BEGIN EXCLUSIVE")  # another writer holds the file
        assert await greylist.reply() == greylisted(300)
        assert not await greylist.plugin.flush()
        mock_clock.jump(DELAY)
        assert await greylist.reply() is None  # memory decides meanwhile
        other.execute("ROLLBACK")
    assert await greylist.plugin.flush()  # the rows kept were written at the next attempt
    [row] = bench.rows()
    assert row[:3] == ("192.0.2.0/24", "alice@example.org", "bob@example.test")
    assert row[6] == 1  # passes: the latest state, not the first
    messages = [r.getMessage() for r in caplog.records]
    assert sum("cannot write" in m for m in messages) == 1  # once, not at every retry
    assert any("writing" in m and "again" in m for m in messages)


# ----------------------------------------------------------------------------- config


def test_shipped_config_shows_the_defaults(tmp_path: Path) -> None:
    bench = Bench(tmp_path)
    shipped = bench.load(**shipped_config("greylist")).plugin.settings
    assert attrs.asdict(shipped) == attrs.asdict(bench.load().plugin.settings)


def test_runner_keys_are_accepted(tmp_path: Path) -> None:
    Bench(tmp_path).load(timeout=3, on_error="denysoft", on_timeout="denysoft")


@pytest.mark.parametrize(
    ("config", "expected"),
    [
        ({"dealy": 300}, "unknown keys ['dealy']"),
        ({"delay": "300"}, "delay: must be a number of seconds, not '300'"),
        ({"delay": True}, "delay: must be a number of seconds"),
        ({"delay": 0}, "delay: must be more than 0 seconds"),
        ({"delay": float("nan")}, "delay: must be a number of seconds"),
        ({"retry_window": -1}, "retry_window: must be more than 0 seconds"),
        ({"retry_window": 300}, "retry_window (300 s) must be longer than delay (300 s)"),
        ({"delay": 3600, "retry_window": 600}, "retry_window (600 s) must be longer than delay"),
        ({"pass_lifetime": 0}, "pass_lifetime: must be more than 0 seconds"),
        ({"auto_allow_after": -1}, "auto_allow_after: must be a whole number >= 0"),
        ({"auto_allow_after": 2.5}, "auto_allow_after: must be a whole number >= 0"),
        ({"ipv4_prefix": 33}, "ipv4_prefix: must be between 0 and 32, not 33"),
        ({"ipv6_prefix": 129}, "ipv6_prefix: must be between 0 and 128, not 129"),
        ({"ipv6_prefix": "64"}, "ipv6_prefix: must be a whole number"),
        ({"allow_ips": "10.0.0.0/8"}, "allow_ips: must be a list of strings"),
        ({"allow_ips": ["10.0.0.0/33"]}, "allow_ips: '10.0.0.0/33' is not an IP address"),
        ({"allow_ips": ["mail.example"]}, "allow_ips: 'mail.example' is not an IP address"),
        ({"allow_sender_domains": [5]}, "allow_sender_domains: must be a list of strings"),
        ({"allow_sender_domains": ["a@b.example"]}, "allow_sender_domains: 'a@b.example' is not"),
        ({"allow_sender_domains": ["a..example"]}, "allow_sender_domains: 'a..example' is not"),
        ({"allow_sender_domains": [""]}, "allow_sender_domains: '' is not a domain name"),
        ({"allow_recipients": ["postmaster"]}, "allow_recipients: 'postmaster' is not an address"),
        ({"allow_recipients": ["@"]}, "allow_recipients: '@' is not an address"),
        ({"allow_recipients": ["a b@"]}, "allow_recipients: 'a b@' is not an address"),
        ({"allow_recipients": ["@a..example"]}, "allow_recipients: '@a..example' is not"),
        ({"allow_recipients": ["x@@example.test"]}, "allow_recipients: 'x@@example.test' is not"),
        ({"allow_recipients": ["a@b@c.example"]}, "allow_recipients: 'a@b@c.example' is not"),
        ({"allow_recipients": ["a b@example.test"]}, "allow_recipients: 'a b@example.test' is not"),
        ({"database": ""}, "database: must be a file name or path, not ''"),
        ({"database": 5}, "database: must be a file name or path, not 5"),
    ],
)
def test_config_errors(config: dict[str, object], expected: str) -> None:
    message = config_error("greylist", config)
    assert expected in message, message
