"""What a plugin answers: an action (Haraka's vocabulary) with an optional reply text and codes."""

from __future__ import annotations

import enum

import attrs


class Action(enum.Enum):
    CONT = "cont"  # no opinion: the next plugin decides
    OK = "ok"  # accept; the rest of the chain is skipped
    DENY = "deny"  # permanent refusal (5xx)
    DENYSOFT = "denysoft"  # temporary refusal (4xx)
    DENYDISCONNECT = "denydisconnect"  # 5xx, then close
    DENYSOFTDISCONNECT = "denysoftdisconnect"  # 4xx, then close
    DISCONNECT = "disconnect"  # close (answered like DENYDISCONNECT where a reply is due)

    @property
    def is_denial(self) -> bool:
        return self in _DENIALS

    @property
    def disconnects(self) -> bool:
        return self in _DISCONNECTS


_DENIALS = frozenset(
    {
        Action.DENY,
        Action.DENYSOFT,
        Action.DENYDISCONNECT,
        Action.DENYSOFTDISCONNECT,
        Action.DISCONNECT,
    }
)
_DISCONNECTS = frozenset({Action.DENYDISCONNECT, Action.DENYSOFTDISCONNECT, Action.DISCONNECT})


def _text(value: str | tuple[str, ...] | None) -> tuple[str, ...] | None:
    if value is None or isinstance(value, tuple):
        return value
    return (value,)


@attrs.frozen
class Result:
    """A plugin's verdict. ``code``/``enhanced``/``message`` override the hook's default reply
    (see ``_spec.REPLIES``); the code must be of the class the action implies."""

    action: Action
    message: tuple[str, ...] | None = attrs.field(default=None, converter=_text)
    code: int | None = None
    enhanced: str | None = None

    def __attrs_post_init__(self) -> None:
        if self.code is None:
            return
        if self.action in (Action.DENY, Action.DENYDISCONNECT) and not 500 <= self.code < 600:
            raise ValueError(f"{self.action.name} needs a 5xx code, not {self.code}")
        if self.action in (Action.DENYSOFT, Action.DENYSOFTDISCONNECT) and not (
            400 <= self.code < 500
        ):
            raise ValueError(f"{self.action.name} needs a 4xx code, not {self.code}")


CONT = Result(Action.CONT)
OK = Result(Action.OK)


def ok(
    message: str | None = None, *, code: int | None = None, enhanced: str | None = None
) -> Result:
    return Result(Action.OK, message, code, enhanced)


def deny(
    message: str | None = None, *, code: int | None = None, enhanced: str | None = None
) -> Result:
    return Result(Action.DENY, message, code, enhanced)


def denysoft(
    message: str | None = None, *, code: int | None = None, enhanced: str | None = None
) -> Result:
    return Result(Action.DENYSOFT, message, code, enhanced)


def denydisconnect(
    message: str | None = None, *, code: int | None = None, enhanced: str | None = None
) -> Result:
    return Result(Action.DENYDISCONNECT, message, code, enhanced)


def denysoftdisconnect(
    message: str | None = None, *, code: int | None = None, enhanced: str | None = None
) -> Result:
    return Result(Action.DENYSOFTDISCONNECT, message, code, enhanced)


def disconnect(message: str | None = None) -> Result:
    return Result(Action.DISCONNECT, message)


TIMEOUT_RESULT = Result(Action.DENYSOFT, "Temporary failure, please try again later", 451, "4.3.0")
ERROR_RESULT = Result(Action.DENYSOFT, "Temporary failure, please try again later", 451, "4.3.0")
