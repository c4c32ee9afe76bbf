"""Fixtures shared by the server, integration and e2e suites."""

from __future__ import annotations

import os
from pathlib import Path

import pytest

REPO = Path(__file__).resolve().parent.parent


@pytest.fixture
def var_dir(tmp_path: Path) -> Path:
    """The daemon's state directory for one test (created by whoever needs it)."""
    return tmp_path / "var"


@pytest.fixture
def repo_root() -> Path:
    return REPO


# CI installs every external tool the suite drives (swaks, dnsmasq, smtp-source, postsrsd,
# chromium); a skip there means a tool went missing and a whole integration area silently stopped
# running, so with TRIO_MTA_TESTS_STRICT set a skip is reported as a failure.
@pytest.hookimpl(hookwrapper=True)
def pytest_runtest_makereport(item: pytest.Item, call: pytest.CallInfo[None]):  # type: ignore[no-untyped-def]
    outcome = yield
    report = outcome.get_result()
    if (
        report.skipped
        and os.environ.get("TRIO_MTA_TESTS_STRICT")
        and not hasattr(report, "wasxfail")
    ):
        report.outcome = "failed"
        reason = report.longrepr[2] if isinstance(report.longrepr, tuple) else str(report.longrepr)
        report.longrepr = f"skipped under TRIO_MTA_TESTS_STRICT: {reason}"
