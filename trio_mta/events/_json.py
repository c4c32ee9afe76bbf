"""The JSON form of an event, fast: one generated f-string per event class.

Theory of operation
-------------------
Encoding is the main cost of a watcher (every event, for every reading watcher), and
``json.dumps(event_dict(event))`` spends most of its time building and walking a dict. So each
class gets, once at import, a function whose body is a single f-string with the class's fields
in declaration order, each rendered by its annotated type: strings through the C
``encode_basestring_ascii``, ints and bools literally, floats by ``repr`` (our floats are
timestamps and durations, always finite), ``None`` as ``null``, ``tuple[str, ...]`` as an array.
The output is exactly ``json.dumps(event_dict(event, seq))`` modulo whitespace; a test checks
that for every event class. A field type outside that list makes import fail (add it here).
"""

from __future__ import annotations

from collections.abc import Callable
from json.encoder import encode_basestring_ascii  # the C-accelerated one

import attrs

from ._types import EVENT_TYPES, SCHEMA_VERSION, Event

Encoder = Callable[[Event, int | None], str]
ValuesEncoder = Callable[[tuple[object, ...], int], str]

_RENDER = {
    "str": "{S(e.%s)}",
    "str | None": '{"null" if e.%s is None else S(e.%s)}',
    "int": "{e.%s:d}",
    "int | None": '{"null" if e.%s is None else format(e.%s, "d")}',
    "float": "{e.%s!r}",
    "bool": '{"true" if e.%s else "false"}',
    "tuple[str, ...]": '[{",".join(map(S, e.%s))}]',
}


def _field(name: str, annotation: object, ref: str) -> str:
    template = _RENDER.get(str(annotation))
    if template is None:
        raise TypeError(f"no JSON rendering for field {name}: {annotation}")
    return f'"{name}":' + template.replace("e.%s", ref)


def _compile(cls: type[Event]) -> Encoder:
    fields = ",".join(_field(a.name, a.type, f"e.{a.name}") for a in attrs.fields(cls))
    head = f'"v":{SCHEMA_VERSION},"type":"{cls.TYPE}"'
    source = (
        "def encode(e, seq):\n"
        f"    if seq is None:\n        return f'{{{{{head},{fields}}}}}'\n"
        f"    return f'{{{{{head},\"seq\":{{seq:d}},{fields}}}}}'\n"
    )
    namespace: dict[str, object] = {"S": encode_basestring_ascii}
    exec(compile(source, f"<event encoder {cls.__name__}>", "exec"), namespace)
    encode = namespace["encode"]
    assert callable(encode)
    return encode


def _compile_values(cls: type[Event]) -> ValuesEncoder:
    """The same text from the event's field values as a tuple in declaration order (what a
    deferred event's builder returns), so a deferred event is encoded without being built."""
    fields = ",".join(_field(a.name, a.type, f"e[{i}]") for i, a in enumerate(attrs.fields(cls)))
    head = f'"v":{SCHEMA_VERSION},"type":"{cls.TYPE}","seq":{{seq:d}}'
    source = f"def encode(e, seq):\n    return f'{{{{{head},{fields}}}}}'\n"
    namespace: dict[str, object] = {"S": encode_basestring_ascii}
    exec(compile(source, f"<event values encoder {cls.__name__}>", "exec"), namespace)
    encode = namespace["encode"]
    assert callable(encode)
    return encode


_ENCODERS: dict[type[Event], Encoder] = {cls: _compile(cls) for cls in EVENT_TYPES}
VALUES_ENCODERS: dict[type[Event], ValuesEncoder] = {
    cls: _compile_values(cls) for cls in EVENT_TYPES
}


def event_json(event: Event, seq: int | None = None) -> str:
    """``event`` as one compact JSON object (``v``, ``type``, ``seq`` if given, the fields)."""
    return _ENCODERS[type(event)](event, seq)
