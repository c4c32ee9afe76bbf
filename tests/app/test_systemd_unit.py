"""contrib/trio-mta.service: what the daemon implements is what the unit asks for."""

from __future__ import annotations

import configparser

from tests.conftest import REPO


def test_unit_is_type_notify_and_runs_the_daemon() -> None:
    unit = configparser.ConfigParser(strict=False, interpolation=None)
    unit.optionxform = str  # type: ignore[assignment,method-assign]  # keys are case-sensitive
    unit.read(REPO / "contrib" / "trio-mta.service")
    service = unit["Service"]
    assert service["Type"] == "notify"  # READY=1 from app.run via ops.sd_notify
    assert service["NotifyAccess"] == "main"
    assert service["ExecStart"].split()[1:3] == ["run", "--config"]
    assert service["ExecReload"] == "/bin/kill -HUP $MAINPID"
    assert service["StateDirectory"] == "trio-mta"
    assert "User" not in service  # started as root; [server] user drops after binding
    assert unit["Install"]["WantedBy"] == "multi-user.target"
