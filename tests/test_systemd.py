"""systemd/collectord.service: `systemd-analyze verify` is clean and `security` rates it <= 2.0.

systemd-analyze comes with the `systemd` package (scripts/services installs it in CI).
"""

from __future__ import annotations

import os
import re
import shutil
import subprocess
import sys
from pathlib import Path

import pytest

ROOT = Path(__file__).resolve().parent.parent
UNIT = ROOT / "systemd" / "collectord.service"
INSTALLED_AT = "/opt/collectord/bin/collectord"
MAX_EXPOSURE = 2.0


def _analyze() -> str:
    tool = shutil.which("systemd-analyze")
    if tool is None:
        if os.environ.get("CI") == "true":
            pytest.fail("systemd-analyze is missing: scripts/services installs it")
        pytest.skip("systemd-analyze is not installed")
    return tool


def _unit_with_real_binary(tmp_path: Path) -> Path:
    # verify checks that ExecStart= exists: point it at this environment's console script.
    script = Path(sys.executable).with_name("collectord")
    assert script.exists(), f"{script} missing: install the package (scripts/bootstrap)"
    text = UNIT.read_text(encoding="utf-8")
    assert INSTALLED_AT in text
    unit = tmp_path / "collectord.service"
    unit.write_text(text.replace(INSTALLED_AT, str(script)), encoding="utf-8")
    return unit


def test_unit_verifies_cleanly(tmp_path: Path) -> None:
    result = subprocess.run(
        [_analyze(), "verify", str(_unit_with_real_binary(tmp_path))],
        capture_output=True,
        text=True,
        timeout=60,
    )
    assert result.returncode == 0, result.stderr
    assert "collectord.service" not in result.stderr, result.stderr


def test_security_exposure_is_at_most_two() -> None:
    result = subprocess.run(
        [_analyze(), "security", "--offline=yes", "--no-pager", str(UNIT)],
        capture_output=True,
        text=True,
        timeout=60,
    )
    output = result.stdout + result.stderr
    match = re.search(r"Overall exposure level for collectord\.service: (\d+(?:\.\d+)?)", output)
    assert match, output
    assert float(match.group(1)) <= MAX_EXPOSURE, output


def test_unit_declares_what_operations_relies_on() -> None:
    settings: dict[str, list[str]] = {}
    for line in UNIT.read_text(encoding="utf-8").splitlines():
        if line and not line.startswith(("#", "[")):
            key, _, value = line.partition("=")
            settings.setdefault(key, []).append(value)
    assert settings["Type"] == ["notify"]
    assert settings["ExecReload"] == ["kill -HUP $MAINPID"]
    assert settings["Restart"] == ["on-failure"]
    assert settings["StateDirectory"] == ["collectord"]
    assert settings["CapabilityBoundingSet"] == [""]
    assert settings["RestrictAddressFamilies"] == ["AF_INET AF_INET6 AF_UNIX"]
    assert "@system-service" in settings["SystemCallFilter"]
    assert settings["WatchdogSec"], "WatchdogSec= must be set"
    for key in ("ProtectSystem", "ProtectHome", "PrivateTmp", "NoNewPrivileges", "DynamicUser"):
        assert settings[key] in (["yes"], ["strict"]), key
