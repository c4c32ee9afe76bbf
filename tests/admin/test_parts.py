"""The admin pieces on their own: request heads, filters, access rules, the watch defaults."""

from __future__ import annotations

from pathlib import Path

import pytest

import trio_mta.admin
from tests.e2e.conftest import write_conf
from trio_mta.admin import Access, EventFilter
from trio_mta.admin._cli import _from_config
from trio_mta.admin._http import HttpError, parse_head
from trio_mta.config import AdminConfig
from trio_mta.events import ConnectionOpened, Gap, MailReceived, PluginCalled, RcptReceived


def test_public_surface_is_curated() -> None:
    public = {name for name in dir(trio_mta.admin) if not name.startswith("_")}
    assert public == {
        "Access",
        "AdminServer",
        "AdminSetupError",
        "DEFAULT_URL",
        "EventFilter",
        "Metrics",
        "WatchOptions",
        "add_watch_parser",
        "watch",
    }


def test_request_heads() -> None:
    head = parse_head(
        b"GET /events?type=a,b&type=c&replay=5 HTTP/1.1\r\nHost: x:1\r\n"
        b"Upgrade: WebSocket\r\nConnection: keep-alive, Upgrade\r\nX-A: 1\r\nx-a: 2"
    )
    assert (head.method, head.path, head.param("replay")) == ("GET", "/events", "5")
    assert head.query["type"] == ["a,b", "c"]
    assert head.is_websocket
    assert head.header("x-a") == "1, 2"
    for bad in (b"GET /\r\n", b"GET / HTTP/1.1\r\nno colon", b"GET / HTTP/1.1\r\n bad: x", b"\xff"):
        with pytest.raises(HttpError) as caught:
            parse_head(bad)
        assert caught.value.status == 400


def _opened(ip: str) -> ConnectionOpened:
    return ConnectionOpened(
        ts=0, conn="c", ip=ip, port=1, listener="mx", local_ip="127.0.0.1", local_port=25
    )


def test_filters() -> None:
    every = EventFilter.from_query({}, 100)
    assert every.kinds() is None
    assert not every.needs_match
    assert every.wants_plugin_calls
    assert every.match(_opened("1.2.3.4"))
    by_type = EventFilter.from_query({"type": ["transaction.end, connection"]}, 100)
    assert not by_type.wants_plugin_calls
    assert by_type.match(_opened("1.2.3.4"))
    assert not by_type.match(MailReceived(ts=0, txn="t", ip="1", sender="a@b", code=250, reply=""))
    assert by_type.match(Gap(ts=0, dropped=1))  # always
    assert EventFilter.from_query({"type": ["plugin"]}, 100).wants_plugin_calls
    by_ip = EventFilter.from_query({"ip": ["10.0.0.0/8", "2001:db8::1"]}, 100)
    assert by_ip.match(_opened("10.1.2.3"))
    assert by_ip.match(_opened("2001:db8::1"))
    assert not by_ip.match(_opened("11.0.0.1"))
    call = PluginCalled(ts=0, ip=None, plugin="p", hook="h", result="ok", duration=0)
    assert not by_ip.match(call)  # no client address
    by_rcpt = EventFilter.from_query({"rcpt_domain": ["Example.TEST."]}, 100)
    in_txn = PluginCalled(ts=0, txn="t", ip="1", plugin="p", hook="h", result="ok", duration=0)
    assert not by_rcpt.match(in_txn)  # the transaction has not matched yet
    rcpt = RcptReceived(
        ts=0, txn="t", ip="1", sender="a@x", recipient="u@example.test", code=250, reply=""
    )
    assert by_rcpt.match(rcpt)
    assert by_rcpt.match(in_txn)
    assert EventFilter.from_query({"replay": ["500"]}, 100).replay == 100
    for query in ({"ip": ["nope"]}, {"replay": ["-1"]}):
        with pytest.raises(HttpError):
            EventFilter.from_query(query, 100)


def test_a_type_filter_names_the_event_classes_the_bus_may_skip_building() -> None:
    def kinds(types: str) -> set[str] | None:
        found = EventFilter.from_query({"type": [types]} if types else {}, 100).kinds()
        return None if found is None else {cls.__name__ for cls in found}

    assert kinds("") is None
    assert kinds("transaction.end") == {"TransactionEnded"}
    assert kinds("transaction") == {
        "HeloReceived", "MailReceived", "RcptReceived", "TransactionEnded",
        "TransactionRefused",
    }  # fmt: skip
    assert kinds("plugin.call, connection.open") == {"PluginCalled", "ConnectionOpened"}
    assert kinds("trans") == set()  # a prefix is a whole dotted part


def test_tokens_are_compared_whole() -> None:
    access = Access(AdminConfig(token="t" * 20, open_on_loopback=False))
    ok = parse_head(b"GET / HTTP/1.1\r\nHost: 127.0.0.1\r\nAuthorization: bearer " + b"t" * 20)
    access.check(ok)
    for token in (b"t" * 19, b"t" * 21, b""):
        head = parse_head(b"GET / HTTP/1.1\r\nHost: 127.0.0.1\r\nAuthorization: Bearer " + token)
        with pytest.raises(HttpError) as caught:
            access.check(head)
        assert caught.value.status == 401


def test_watch_defaults_come_from_the_configuration(tmp_path: Path) -> None:
    token = "from-the-config-0123"
    write_conf(tmp_path, f'[admin]\nlisten = "0.0.0.0:9025"\ntoken = "{token}"\n')
    assert _from_config(tmp_path) == ("ws://127.0.0.1:9025/events", token)
    write_conf(tmp_path, '[admin]\nlisten = "[::1]:9026"\n')
    assert _from_config(tmp_path) == ("ws://[::1]:9026/events", "")
    write_conf(tmp_path, "[admin]\nnonsense = 1\n")
    assert _from_config(tmp_path) == ("ws://127.0.0.1:8025/events", "")
    assert _from_config(None) == ("ws://127.0.0.1:8025/events", "")
