"""The daemon tunes its own garbage collector (``trio-mta run``), and only its own."""

from __future__ import annotations

import gc
from collections.abc import Iterator

import pytest

from trio_mta import app


@pytest.fixture
def restore_gc() -> Iterator[None]:
    threshold = gc.get_threshold()
    yield
    gc.unfreeze()
    gc.set_threshold(*threshold)


@pytest.mark.usefixtures("restore_gc")
def test_tuning_freezes_what_exists_and_collects_young_objects_less_often() -> None:
    before = gc.get_freeze_count()
    app._tune_gc()
    assert gc.get_threshold()[0] == app.GC_YOUNG_THRESHOLD > 700
    assert gc.get_freeze_count() > before  # the modules, config and plugins loaded so far


def test_the_command_asks_for_it_and_app_run_does_not_by_default() -> None:
    import inspect

    from trio_mta import cli

    assert inspect.signature(app.run).parameters["tune_gc"].default is False
    assert "tune_gc=True" in inspect.getsource(cli)
