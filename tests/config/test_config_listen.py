import ipaddress

import pytest
from hypothesis import given
from hypothesis import strategies as st

from trio_mta.config import format_listen, parse_listen


@pytest.mark.parametrize(
    ("text", "expected"),
    [
        ("127.0.0.1:2525", ("127.0.0.1", 2525)),
        ("0.0.0.0:25", ("0.0.0.0", 25)),
        ("localhost:1", ("localhost", 1)),
        ("LOCALHOST:65535", ("localhost", 65535)),
        ("[::1]:2525", ("::1", 2525)),
        ("[::]:25", ("::", 25)),
        ("[2001:DB8:0:0::1]:587", ("2001:db8::1", 587)),
        ("[::ffff:192.0.2.1]:25", ("::ffff:c000:201", 25)),
    ],
)
def test_parse_listen_accepts(text: str, expected: tuple[str, int]) -> None:
    assert parse_listen(text) == expected


@pytest.mark.parametrize(
    ("text", "why"),
    [
        ("", "expected HOST:PORT"),
        ("2525", "expected HOST:PORT"),
        (":2525", "expected HOST:PORT"),
        ("127.0.0.1:", "port must be a number from 0 to 65535"),
        ("127.0.0.1:65536", "port must be a number from 0 to 65535"),
        ("127.0.0.1:-1", "port must be a number from 0 to 65535"),
        ("127.0.0.1:+25", "port must be a number from 0 to 65535"),
        ("127.0.0.1: 25", "port must be a number from 0 to 65535"),
        ("127.0.0.1:2_5", "port must be a number from 0 to 65535"),
        ("127.0.0.1:\uff12\uff15", "port must be a number from 0 to 65535"),
        ("127.0.0.1:smtp", "port must be a number from 0 to 65535"),
        ("::1:2525", "IPv6 addresses must be in brackets"),
        ("[::1]", r"expected \[IPV6\]:PORT"),
        ("[::1]2525", r"expected \[IPV6\]:PORT"),
        ("[::1:2525", r"expected \[IPV6\]:PORT"),
        ("[127.0.0.1]:25", "not an IPv6 address"),
        ("mail.example:25", 'host must be an IP address or "localhost"'),
        ("127.0.0.256:25", "host must be an IP address"),
        ("127.000.0.1:25", "host must be an IP address"),
    ],
)
def test_parse_listen_rejects(text: str, why: str) -> None:
    with pytest.raises(ValueError, match=why):
        parse_listen(text)


@given(ip=st.ip_addresses(), port=st.integers(1, 65535))
def test_parse_listen_round_trips(
    ip: ipaddress.IPv4Address | ipaddress.IPv6Address, port: int
) -> None:
    # Spelled out here rather than only via format_listen, so a shared bug cannot hide.
    text = f"[{ip}]:{port}" if ip.version == 6 else f"{ip}:{port}"
    assert parse_listen(text) == (str(ip), port)
    assert format_listen(str(ip), port) == text
    assert parse_listen(format_listen(*parse_listen(text))) == (str(ip), port)


@given(ip=st.ip_addresses(v=6), port=st.integers(1, 65535))
def test_parse_listen_normalizes_ipv6_spelling(ip: ipaddress.IPv6Address, port: int) -> None:
    assert parse_listen(f"[{ip.exploded.upper()}]:{port}") == (str(ip), port)
