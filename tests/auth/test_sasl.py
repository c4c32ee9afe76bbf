"""The SASL state machine on its own: PLAIN, LOGIN, CRAM-MD5, initial responses, cancellation
and malformed input (no I/O, no clock)."""

from __future__ import annotations

import base64
import hashlib
import hmac

import pytest

from trio_mta.hooks import Credentials
from trio_mta.protocol import Reply
from trio_mta.protocol import replies as R
from trio_mta.server._sasl import (
    AUTHZ_REFUSED,
    BAD_UTF8,
    MALFORMED,
    NO_INITIAL,
    Challenge,
    Mechanism,
    SaslExchange,
    decode,
)

CHALLENGE = "<1896.697170952@postoffice.reston.mci.net>"  # RFC 2195's example


def b64(data: str | bytes) -> str:
    raw = data.encode() if isinstance(data, str) else data
    return base64.b64encode(raw).decode("ascii")


def test_plain_with_initial_response() -> None:
    step = SaslExchange(Mechanism.PLAIN).start(b64("\0alice\0s3cret"))
    assert step == Credentials("PLAIN", "alice", password="s3cret")


def test_plain_without_initial_response_gets_an_empty_challenge() -> None:
    sasl = SaslExchange(Mechanism.PLAIN)
    step = sasl.start(None)
    assert step == Challenge("")
    assert isinstance(step, Challenge)
    assert step.reply().to_bytes() == b"334 \r\n"
    assert sasl.respond(b64("\0alice\0s3cret")) == Credentials("PLAIN", "alice", password="s3cret")
    assert sasl.done


def test_plain_authzid_equal_to_the_user_is_fine_another_is_refused() -> None:
    same = SaslExchange(Mechanism.PLAIN).start(b64("alice\0alice\0pw"))
    assert same == Credentials("PLAIN", "alice", password="pw")
    assert SaslExchange(Mechanism.PLAIN).start(b64("root\0alice\0pw")) == AUTHZ_REFUSED


@pytest.mark.parametrize(
    "payload",
    [b"", b"alice", b"\0alice", b"\0\0pw", b"\0alice\0", b"\0a\0b\0c"],
    ids=["empty", "no-nul", "no-password-field", "no-user", "empty-password", "four-fields"],
)
def test_plain_malformed_responses(payload: bytes) -> None:
    assert SaslExchange(Mechanism.PLAIN).start(b64(payload) if payload else "=") == MALFORMED


def test_equals_sign_is_an_empty_initial_response() -> None:
    assert decode("=") == b""
    # For PLAIN an empty response is malformed (RFC 4616 needs user and password)...
    assert SaslExchange(Mechanism.PLAIN).start("=") == MALFORMED
    # ...for LOGIN an empty user name too.
    assert SaslExchange(Mechanism.LOGIN).start("=") == MALFORMED


def test_login_without_initial_response() -> None:
    sasl = SaslExchange(Mechanism.LOGIN)
    assert sasl.start(None) == Challenge(b64("Username:"))
    assert sasl.respond(b64("alice")) == Challenge(b64("Password:"))
    assert sasl.respond(b64("pw")) == Credentials("LOGIN", "alice", password="pw")


def test_login_with_the_user_name_as_initial_response() -> None:
    sasl = SaslExchange(Mechanism.LOGIN)
    assert sasl.start(b64("alice")) == Challenge(b64("Password:"))
    assert sasl.respond(b64("pw")) == Credentials("LOGIN", "alice", password="pw")


def test_login_empty_password_still_goes_to_the_verifier() -> None:
    sasl = SaslExchange(Mechanism.LOGIN)
    sasl.start(b64("alice"))
    assert sasl.respond("") == Credentials("LOGIN", "alice", password="")


def test_cram_md5_exchange_and_verification() -> None:
    sasl = SaslExchange(Mechanism.CRAM_MD5, challenge=CHALLENGE)
    step = sasl.start(None)
    assert step == Challenge(b64(CHALLENGE))
    # RFC 2195 §2: tim / tanstaaftanstaaf gives this digest for that challenge.
    answer = sasl.respond(b64("tim b913a602c7eda7a495b4e6e7334d3890"))
    assert answer == Credentials(
        "CRAM-MD5", "tim", challenge=CHALLENGE, digest="b913a602c7eda7a495b4e6e7334d3890"
    )
    assert isinstance(answer, Credentials)
    assert answer.matches_secret("tanstaaftanstaaf")
    assert not answer.matches_secret("tanstaaftanstaafX")


def test_cram_md5_digest_case_and_format() -> None:
    digest = hmac.new(b"k", CHALLENGE.encode(), hashlib.md5).hexdigest().upper()
    sasl = SaslExchange(Mechanism.CRAM_MD5, challenge=CHALLENGE)
    sasl.start(None)
    creds = sasl.respond(b64(f"user name {digest}"))  # the user name may hold spaces
    assert isinstance(creds, Credentials)
    assert creds.username == "user name"
    assert creds.matches_secret("k")
    for bad in ("tim", "tim xyz", "tim " + "g" * 32, " " + "a" * 32):
        again = SaslExchange(Mechanism.CRAM_MD5, challenge=CHALLENGE)
        again.start(None)
        assert again.respond(b64(bad)) == MALFORMED, bad


def test_cram_md5_refuses_an_initial_response() -> None:
    assert SaslExchange(Mechanism.CRAM_MD5, challenge=CHALLENGE).start(b64("x")) == NO_INITIAL


@pytest.mark.parametrize("mechanism", list(Mechanism))
def test_star_cancels_at_any_step(mechanism: Mechanism) -> None:
    sasl = SaslExchange(mechanism, challenge=CHALLENGE)
    assert isinstance(sasl.start(None), Challenge)
    assert sasl.respond("*") == R.AUTH_CANCELLED
    assert (R.AUTH_CANCELLED.code, R.AUTH_CANCELLED.enhanced) == (501, "5.0.0")
    assert sasl.done
    with pytest.raises(RuntimeError):
        sasl.respond("*")


def test_login_cancel_after_the_user_name() -> None:
    sasl = SaslExchange(Mechanism.LOGIN)
    sasl.start(b64("alice"))
    assert sasl.respond("*") == R.AUTH_CANCELLED


@pytest.mark.parametrize(
    "text", ["not base64!", "YWJj=", "YW Jj", "=YWJj", "YWJ", "YWJjZA=", "é"], ids=repr
)
def test_malformed_base64_is_501_5_5_2(text: str) -> None:
    assert decode(text) is None
    assert SaslExchange(Mechanism.PLAIN).start(text) == R.BAD_BASE64
    sasl = SaslExchange(Mechanism.LOGIN)
    sasl.start(None)
    assert sasl.respond(text) == R.BAD_BASE64
    assert (R.BAD_BASE64.code, R.BAD_BASE64.enhanced) == (501, "5.5.2")


def test_responses_must_be_utf8() -> None:
    assert SaslExchange(Mechanism.PLAIN).start(b64(b"\0al\xffice\0pw")) == BAD_UTF8
    plain = SaslExchange(Mechanism.PLAIN).start(b64("\0jos\u00e9\0p\u00e4ss"))
    assert plain == Credentials("PLAIN", "jos\u00e9", password="p\u00e4ss")


def test_repr_never_shows_secrets() -> None:
    creds = SaslExchange(Mechanism.PLAIN).start(b64("\0alice\0hunter2-secret"))
    assert isinstance(creds, Credentials)
    assert "hunter2" not in repr(creds)
    assert "hunter2" not in str(creds)
    assert "alice" in repr(creds)
    cram = Credentials("CRAM-MD5", "tim", challenge=CHALLENGE, digest="ab" * 16)
    assert "abab" not in repr(cram)


def test_every_reply_ending_an_exchange_is_a_reply() -> None:
    for reply in (MALFORMED, BAD_UTF8, NO_INITIAL, AUTHZ_REFUSED):
        assert isinstance(reply, Reply)
        assert reply.code in (501, 535)
