"""examples/systemd/trilb.service: a unit systemd accepts, in line with trilb's defaults."""

from __future__ import annotations

import shutil
import subprocess
import sys
from pathlib import Path

import pytest

from trilb.config import GlobalConfig
from trilb.config.values import parse_duration

UNIT = Path(__file__).parents[2] / "examples" / "systemd" / "trilb.service"


def settings() -> dict[str, list[str]]:
    """The unit's ``Key=value`` lines (every value of a key, in order)."""
    result: dict[str, list[str]] = {}
    for line in UNIT.read_text().splitlines():
        if line and not line.startswith(("#", "[")):
            key, _, value = line.partition("=")
            result.setdefault(key, []).append(value)
    return result


def test_unit_settings() -> None:
    unit = settings()
    assert unit["Type"] == ["notify"]
    assert unit["ExecStart"] == ["/usr/local/bin/trilb serve /etc/trilb/trilb.toml"]
    assert unit["ExecReload"][-1] == "/bin/kill -HUP $MAINPID"
    assert unit["KillSignal"] == ["SIGTERM"]
    assert unit["Restart"] == ["on-failure"]
    assert "CAP_NET_BIND_SERVICE" in unit["AmbientCapabilities"][0]
    assert unit["NoNewPrivileges"] == ["true"]
    # systemd must not kill a drain that trilb would end by itself
    (stop,) = unit["TimeoutStopSec"]
    assert parse_duration(f"{stop}s") > GlobalConfig().timeout_drain


def test_systemd_analyze_verify(tmp_path: Path) -> None:
    analyze = shutil.which("systemd-analyze")
    if analyze is None:
        pytest.skip("systemd-analyze is not installed")
    # the installed trilb's path is not this machine's: point the unit at this one's
    trilb = Path(sys.executable).parent / "trilb"
    if not trilb.exists():
        pytest.skip(f"no trilb script next to {sys.executable}")
    copy = tmp_path / "trilb.service"
    copy.write_text(UNIT.read_text().replace("/usr/local/bin/trilb", str(trilb)))
    result = subprocess.run(
        [analyze, "verify", str(copy)], capture_output=True, text=True, timeout=60, check=False
    )
    ours = [line for line in (result.stdout + result.stderr).splitlines() if "trilb" in line]
    assert result.returncode == 0, result.stdout + result.stderr
    assert ours == []
