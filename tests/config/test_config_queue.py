"""``[queue]``, ``[resolver]`` and ``[[route]]``: values, defaults, and errors naming the key."""

from __future__ import annotations

from pathlib import Path

import pytest

from trio_mta.config import ConfigError, RouteConfig, TlsPolicy, load_config


def load(tmp_path: Path, text: str) -> object:
    (tmp_path / "trio-mta.toml").write_text(text)
    return load_config(tmp_path)


def errors(tmp_path: Path, text: str) -> list[str]:
    with pytest.raises(ConfigError) as caught:
        load(tmp_path, text)
    return [f"{i.key}: {i.why}" for i in caught.value.issues]


def test_queue_resolver_and_routes(tmp_path: Path) -> None:
    (tmp_path / "trio-mta.toml").write_text(
        """
        [queue]
        port = 2525
        starttls = "required"
        retry_first = 30
        [resolver]
        nameservers = ["127.0.0.1:5353", "[::1]:53", "192.0.2.1"]
        [[route]]
        domain = "*"
        host = "smtp.provider.example"
        port = 587
        auth_user = "me"
        auth_password = "secret"
        [[route]]
        domain = ".Internal.Example"
        host = "10.0.0.5"
        starttls = "never"
        """
    )
    config = load_config(tmp_path)
    assert (config.queue.port, config.queue.starttls) == (2525, TlsPolicy.REQUIRED)
    assert config.queue.retry_first == 30.0
    assert config.resolver.nameservers == ("127.0.0.1:5353", "[::1]:53", "192.0.2.1")
    smart, internal = config.routes
    assert smart == RouteConfig("*", "smtp.provider.example", 587, "", "me", "secret")
    assert internal.domain == ".internal.example"
    assert internal.starttls == "never"
    assert "secret" not in repr(smart)


def test_defaults(tmp_path: Path) -> None:
    config = load_config(None)
    assert config.queue.enabled
    assert config.queue.fsync
    assert config.queue.port == 25
    assert (config.queue.retry_first, config.queue.give_up) == (60.0, 5 * 86400.0)
    assert config.resolver.nameservers == ()
    assert config.routes == ()


def test_every_problem_is_reported_with_its_key(tmp_path: Path) -> None:
    found = errors(
        tmp_path,
        """
        [queue]
        port = 0
        starttls = "sometimes"
        postmaster = "nobody"
        [resolver]
        nameservers = ["dns.example"]
        [[route]]
        host = "a b"
        [[route]]
        domain = "x.test"
        auth_user = "u"
        [[route]]
        domain = "x.test"
        host = "h.test"
        """,
    )
    keys = [f.split(":")[0] for f in found]
    assert keys == [
        "queue.port",
        "queue.starttls",
        "queue.postmaster",
        "resolver.nameservers",
        "route[0].domain",  # missing: the rest of that table is not judged
        "route[1].auth_user",
        "route[1].host",
        "route[2].domain",
    ]
