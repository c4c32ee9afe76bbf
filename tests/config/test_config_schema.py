import attrs
import pytest

from trio_mta.config import Config, Limits, ListenerConfig, ServerConfig, Timeouts


def test_config_is_frozen() -> None:
    with pytest.raises(attrs.exceptions.FrozenInstanceError):
        Config().limits.max_recipients = 5  # type: ignore[misc]  # proving it is refused


def test_evolve_applies_the_same_rules_as_the_loader() -> None:
    with pytest.raises(ValueError, match="at least 1"):
        attrs.evolve(Limits(), max_recipients=0)
    with pytest.raises(ValueError, match="greater than 0"):
        attrs.evolve(Timeouts(), command=0.0)
    with pytest.raises(ValueError, match="not a valid domain name"):
        attrs.evolve(ServerConfig(), hostname="bad name")
    with pytest.raises(ValueError, match="IP address"):
        ListenerConfig(name="mx", host="mail.example", port=25)
    with pytest.raises(ValueError, match="from 0 to 65535"):
        ListenerConfig(name="mx", host="::1", port=70000)


def test_evolve_checks_listener_conflicts() -> None:
    one = ListenerConfig(name="a", host="127.0.0.1", port=25)
    with pytest.raises(ValueError, match="duplicate listener name 'a'"):
        attrs.evolve(Config(), listeners=(one, attrs.evolve(one, port=26)))
    with pytest.raises(ValueError, match="already used by listener 'a'"):
        attrs.evolve(Config(), listeners=(one, attrs.evolve(one, name="b")))
    with pytest.raises(ValueError, match="at least one listener"):
        attrs.evolve(Config(), listeners=())


def test_listener_host_is_normalized() -> None:
    listener = ListenerConfig(name="mx", host="0:0::0001", port=2525)
    assert listener.host == "::1"
    assert listener.listen == "[::1]:2525"
    assert ListenerConfig(name="mx", host="LocalHost", port=25).host == "localhost"


def test_local_domains_are_lower_cased_and_not_a_bare_string() -> None:
    assert ServerConfig(local_domains=["A.Example"]).local_domains == ("a.example",)
    with pytest.raises(TypeError):
        ServerConfig(local_domains="example.com")
