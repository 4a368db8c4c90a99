"""examples/nfsentry.service: a notify unit with a watchdog the daemon can keep fed, a synchronous
reload, and no directive systemd would ignore (systemd-analyze verify, when it is installed)."""

from __future__ import annotations

import re
import shutil
import subprocess
import sys
from pathlib import Path

import pytest

from nfsentry.core.units import parse_duration

UNIT = Path(__file__).resolve().parents[2] / "examples" / "nfsentry.service"


def directives() -> dict[str, list[str]]:
    out: dict[str, list[str]] = {}
    for line in UNIT.read_text().splitlines():
        line = line.strip()
        if line and not line.startswith(("#", ";", "[")):
            key, _, value = line.partition("=")
            out.setdefault(key, []).append(value)
    return out


def test_notify_unit_with_watchdog_and_synchronous_reload():
    d = directives()
    assert d["Type"] == ["notify"] and d["NotifyAccess"] == ["main"]
    # the main thread stamps its liveness at least every ~1.2 s when healthy and the daemon stops
    # pinging once the stamp is half the interval old: the interval must leave room for slow duties
    assert parse_duration(d["WatchdogSec"][0], "WatchdogSec") >= 10
    assert d["Restart"] == ["on-failure"]  # a watchdog timeout counts as a failure
    assert d["ExecStart"][0].split()[1:] == ["run"]  # no --foreground: the journal gets the lines once
    assert d["ExecReload"][0].split()[1:] == ["reload"]  # waits for the daemon, fails when refused
    assert d["ExecReload"][0].split()[0] == d["ExecStart"][0].split()[0]


@pytest.mark.skipif(shutil.which("systemd-analyze") is None, reason="systemd-analyze not installed")
def test_systemd_analyze_verify_finds_nothing_to_ignore(tmp_path):
    program = str(Path(sys.executable).parent / "nfsentry")  # the unit's path may not exist here
    unit = tmp_path / "nfsentry.service"
    unit.write_text(re.sub(r"^(Exec\w*=)\S*/nfsentry\b", rf"\g<1>{program}", UNIT.read_text(), flags=re.M))
    assert program in unit.read_text()
    res = subprocess.run(["systemd-analyze", "verify", "--man=no", str(unit)], capture_output=True, text=True, timeout=60)
    assert res.returncode == 0 and res.stderr.strip() == "", res.stderr
