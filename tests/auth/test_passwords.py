"""scrypt password hashes and users files (``trio_mta.hooks`` helpers for auth plugins)."""

from __future__ import annotations

import base64
import hashlib

import pytest

from trio_mta import hooks


def fast(password: str) -> str:
    """Cheap parameters: these tests are about the format."""
    return hooks.hash_password(password, log2_n=4, r=1, p=1)


def test_hash_round_trip_with_default_cost() -> None:
    encoded = hooks.hash_password("correct horse")
    scheme, log2_n, r, p, salt, digest = encoded.split("$")
    assert (scheme, log2_n, r, p) == ("scrypt", "14", "8", "1")
    assert len(base64.b64decode(salt)) == 16
    assert len(base64.b64decode(digest)) == 32
    assert hooks.verify_password("correct horse", encoded)
    assert not hooks.verify_password("correct horsE", encoded)


def test_the_hash_is_scrypt_of_the_salt() -> None:
    salt = b"0123456789abcdef"
    encoded = hooks.hash_password("pw", salt=salt, log2_n=4, r=1, p=1)
    expected = hashlib.scrypt(b"pw", salt=salt, n=16, r=1, p=1, dklen=32)
    assert encoded.split("$")[5] == base64.b64encode(expected).decode()


def test_each_hash_has_its_own_salt() -> None:
    one, two = fast("pw"), fast("pw")
    assert one != two
    assert hooks.verify_password("pw", one)
    assert hooks.verify_password("pw", two)


def test_non_ascii_passwords() -> None:
    encoded = fast("p\u00e4ss\u00f6rd")
    assert hooks.verify_password("p\u00e4ss\u00f6rd", encoded)
    assert not hooks.verify_password("passord", encoded)


@pytest.mark.parametrize(
    "encoded",
    [
        "",
        "plain:secret",
        "bcrypt$4$1$1$c2FsdA==$aGFzaGhhc2hoYXNoaGFzaA==",
        "scrypt$4$1$1$c2FsdA==",
        "scrypt$x$1$1$c2FsdA==$aGFzaGhhc2hoYXNoaGFzaA==",
        "scrypt$4$1$1$!!!$aGFzaGhhc2hoYXNoaGFzaA==",
        "scrypt$4$1$1$c2FsdA==$c2hvcnQ=",  # hash too short
        "scrypt$0$1$1$c2FsdA==$aGFzaGhhc2hoYXNoaGFzaA==",
        "scrypt$40$8$1$c2FsdA==$aGFzaGhhc2hoYXNoaGFzaA==",  # absurd cost
        "scrypt$20$32$1$c2FsdA==$aGFzaGhhc2hoYXNoaGFzaA==",  # 4 GiB of memory
    ],
)
def test_malformed_hashes_are_refused_not_matched(encoded: str) -> None:
    with pytest.raises(ValueError):
        hooks.verify_password("secret", encoded)


def test_parse_users() -> None:
    alice = fast("a")
    bob = fast("b")
    text = f"# users\n\nalice:{alice}\n  bob@example.test:{bob}  \n"
    assert hooks.parse_users(text) == {"alice": alice, "bob@example.test": bob}


@pytest.mark.parametrize(
    ("text", "why"),
    [
        ("alice\n", "line 1: expected user:hash"),
        ("# c\nalice:plain\n", "line 2: not a scrypt"),
        (":{h}\n", "line 1: '' is not a valid user name"),
        ("al ice:{h}\n", "line 1: 'al ice' is not a valid user name"),
        ("alice:{h}\nalice:{h}\n", "line 2: user 'alice' appears twice"),
    ],
)
def test_parse_users_errors_name_the_line(text: str, why: str) -> None:
    encoded = fast("x")
    with pytest.raises(ValueError, match="^" + why.replace("(", r"\(")):
        hooks.parse_users(text.replace("{h}", encoded))


def test_update_users_adds_replaces_removes_and_keeps_the_rest() -> None:
    text = "# header comment\nalice:old\n\n# bob below\nbob:b\n"
    added = hooks.update_users(text, "carol", "c")
    assert added == text + "carol:c\n"
    replaced = hooks.update_users(text, "alice", "new")
    assert replaced == "# header comment\nalice:new\n\n# bob below\nbob:b\n"
    removed = hooks.update_users(text, "bob", None)
    assert removed == "# header comment\nalice:old\n\n# bob below\n"
    assert hooks.update_users("", "dave", "d") == "dave:d\n"
    # a commented-out line for the same user is left alone
    assert hooks.update_users("#alice:x\n", "alice", "y") == "#alice:x\nalice:y\n"
    with pytest.raises(ValueError):
        hooks.update_users(text, "bad:name", "x")


def test_credentials_matches_secret_for_passwords() -> None:
    creds = hooks.Credentials("LOGIN", "alice", password="pw")
    assert creds.matches_secret("pw")
    assert not creds.matches_secret("pW")
    assert not hooks.Credentials("CRAM-MD5", "alice").matches_secret("pw")
