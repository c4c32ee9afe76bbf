"""The built wheel in a fresh virtual environment: `trio-mta init` writes a configuration from
the templates inside the package, `check` accepts it, and `run` (outside the source tree, so
nothing of the repository can be found) loads the built-in plugins from the package and takes a
message. No top-level `plugins` package lands in site-packages.

Needs pip to reach an index for the build backend and the dependencies (CI has PyPI); about 30 s.
"""

from __future__ import annotations

import os
import signal
import smtplib
import subprocess
import sys
from pathlib import Path

import pytest

from tests.conftest import REPO

pytestmark = pytest.mark.slow

CAP = 300  # seconds: building and installing with dependencies


def _run(*args: str | Path, cwd: Path, env: dict[str, str]) -> str:
    done = subprocess.run(
        [str(a) for a in args], cwd=cwd, env=env, capture_output=True, text=True, timeout=CAP
    )
    assert done.returncode == 0, f"{args}: {done.stdout}\n{done.stderr}"
    return done.stdout


def test_wheel_installs_and_runs_from_a_fresh_venv(tmp_path: Path) -> None:
    env = {k: v for k, v in os.environ.items() if k not in ("PYTHONPATH", "VIRTUAL_ENV")}
    env["PIP_DISABLE_PIP_VERSION_CHECK"] = "1"
    dist = tmp_path / "dist"
    _run(sys.executable, "-m", "pip", "wheel", "--no-deps", "-q", "-w", dist, REPO,
         cwd=tmp_path, env=env)  # fmt: skip
    [wheel] = dist.glob("trio_mta-*.whl")
    venv = tmp_path / "venv"
    _run(sys.executable, "-m", "venv", venv, cwd=tmp_path, env=env)
    _run(venv / "bin" / "python", "-m", "pip", "install", "-q", wheel, cwd=tmp_path, env=env)
    [site] = (venv / "lib").glob("python3*/site-packages")
    assert (site / "trio_mta" / "builtin_plugins" / "queue_maildir.py").is_file()
    assert (site / "trio_mta" / "templates" / "trio-mta.toml").is_file()
    assert (site / "trio_mta" / "admin" / "page.html").is_file()
    assert not (site / "plugins").exists()
    licenses = list(site.glob("trio_mta-*.dist-info/**/LICENSE"))
    assert licenses, "LICENSE missing from the wheel"

    trio_mta = venv / "bin" / "trio-mta"
    etc, var = tmp_path / "etc", tmp_path / "var"
    out = _run(trio_mta, "init", etc, "--var-dir", var, cwd=tmp_path, env=env)
    assert out.startswith("wrote ")
    assert (etc / "plugins" / "auth_flat_file.toml").is_file()
    assert f'var_dir = "{var}"' in (etc / "trio-mta.toml").read_text()
    assert "configuration OK" in _run(trio_mta, "check", "--config", etc, cwd=tmp_path, env=env)

    daemon = subprocess.Popen(
        [str(trio_mta), "run", "--config", str(etc), "--listen", "127.0.0.1:0"],
        cwd=tmp_path,
        env=env,
        stdout=subprocess.PIPE,
        stderr=subprocess.PIPE,
        text=True,
    )
    try:
        assert daemon.stdout is not None
        ready = daemon.stdout.readline().split()
        assert ready[:2] == ["trio-mta", "ready"], ready
        port = int(ready[2].rpartition(":")[2])
        with smtplib.SMTP("127.0.0.1", port, timeout=30) as smtp:
            smtp.sendmail("a@example.test", ["bob@example.test"], b"Subject: x\r\n\r\nhi\r\n")
    finally:
        daemon.send_signal(signal.SIGTERM)
        _, err = daemon.communicate(timeout=60)
    assert daemon.returncode == 0, err
    assert len(list((var / "maildir" / "example.test" / "bob" / "new").iterdir())) == 1
