"""Event types: their JSON form, and docs/events.md documenting every field of every type."""

from __future__ import annotations

import json
import re
from pathlib import Path
from typing import Any

import attrs
import pytest

from trio_mta.events import (
    EVENT_TYPES,
    SCHEMA_VERSION,
    VALUES_ENCODERS,
    Event,
    as_event,
    event_dict,
    event_json,
)

DOC = Path(__file__).resolve().parents[2] / "docs" / "events.md"
COMMON = ("v", "type", "seq", "ts", "conn", "txn")

# One value per annotated field type, awkward ones included (quotes, non-ASCII, control chars).
SAMPLES: dict[str, list[object]] = {
    "str": ['a"b\\c\u00e9\n<x>', ""],
    "str | None": [None, "t\u2603"],
    "int": [0, 250],
    "int | None": [None, 421],
    "float": [1795614371.7178257, 1e-05],
    "bool": [True, False],
    "tuple[str, ...]": [(), ("a@example.test", 'q"@x')],
}


def documented() -> dict[str, set[str]]:
    """``type -> field names`` from the tables under each ``### `type` `` heading."""
    found: dict[str, set[str]] = {}
    current: set[str] | None = None
    for line in DOC.read_text().splitlines():
        heading = re.fullmatch(r"### `([a-z.]+)`", line)
        if heading:
            current = found.setdefault(heading.group(1), set())
        elif line.startswith("## "):
            current = None
        elif current is not None and (cell := re.match(r"\| `([a-z_]+)` \|", line)):
            current.add(cell.group(1))
    return found


def common_documented() -> set[str]:
    text = DOC.read_text().split("## Every event", 1)[1].split("\n## ", 1)[0]
    return set(re.findall(r"^\| `([a-z_]+)` \|", text, re.M))


def samples(cls: type[Event], which: int) -> Event:
    # The annotations are strings (the module has ``from __future__ import annotations``).
    values: dict[str, Any] = {a.name: SAMPLES[str(a.type)][which] for a in attrs.fields(cls)}
    return cls(**values)


def test_every_event_type_and_field_is_documented() -> None:
    doc = documented()
    assert set(COMMON) <= common_documented()
    for cls in EVENT_TYPES:
        assert cls.TYPE in doc, f"docs/events.md has no section for {cls.TYPE}"
        own = {a.name for a in attrs.fields(cls)} - set(COMMON)
        assert own == doc[cls.TYPE], f"{cls.TYPE}: fields {own} vs documented {doc[cls.TYPE]}"
    assert set(doc) == {cls.TYPE for cls in EVENT_TYPES}


@pytest.mark.parametrize("cls", EVENT_TYPES, ids=lambda c: c.TYPE)
@pytest.mark.parametrize("which", [0, 1])
def test_fast_json_is_exactly_the_dict_form(cls: type[Event], which: int) -> None:
    event = samples(cls, which)
    for seq in (None, 7):
        expected = event_dict(event, seq)
        assert list(expected)[:2] == ["v", "type"]
        assert expected["v"] == SCHEMA_VERSION
        text = event_json(event, seq)
        # Same keys in the same order, same values (tuples become arrays).
        assert json.loads(text) == json.loads(json.dumps(expected))
        assert list(json.loads(text)) == list(expected)
        assert text.isascii()


@pytest.mark.parametrize("cls", EVENT_TYPES, ids=lambda c: c.TYPE)
@pytest.mark.parametrize("which", [0, 1])
def test_a_deferred_events_values_encode_and_build_as_the_object_does(
    cls: type[Event], which: int
) -> None:
    event = samples(cls, which)
    values = tuple(getattr(event, name) for name in cls.FIELDS)
    assert VALUES_ENCODERS[cls](values, 7) == event_json(event, 7)
    assert as_event((cls, values)) == event


def test_events_are_frozen() -> None:
    event = samples(EVENT_TYPES[0], 0)
    with pytest.raises(attrs.exceptions.FrozenInstanceError):
        event.ts = 0.0  # type: ignore[misc]  # the point of the test
