"""PortSentry users' tools against the real daemon and a real scan: fail2ban's shipped
`portsentry` filter matches nfsentry's history file, and a logcheck-style grep for `attackalert`
finds every detection in syslog."""

from __future__ import annotations

import re
import shutil
import subprocess

import pytest
from daemon_util import Nfsentry

pytestmark = pytest.mark.e2e
FILTER = "/etc/fail2ban/filter.d/portsentry.conf"


@pytest.mark.skipif(shutil.which("fail2ban-regex") is None, reason="fail2ban not installed (make deps-test installs it)")
def test_fail2ban_and_logcheck_match_a_real_scan(lab, tmp_path):
    victim, attackers = lab["victim"], [lab["attacker"], lab["legit"]]
    history = tmp_path / "portsentry.history"
    d = Nfsentry(
        victim,
        tmp_path / "nfs",
        overrides={"logging": {"format": "portsentry1", "history_file": str(history), "syslog_ident": "portsentry"}},
    )
    d.start()
    try:
        attackers[0].nmap("-sS -Pn --max-retries 0 -p 1-20", victim.ip4)
        attackers[1].nmap("-sU -Pn --max-retries 0 -p 161-162", victim.ip6)
        d.wait_event("block", attackers[0].ip4)
        d.wait_event("block", where=lambda e: e["network"].startswith("2001:db8::"))
    finally:
        d.close()
    detections = d.events("detection")
    assert len(detections) == 2
    lines = history.read_text().splitlines()
    assert lines and all(re.search(r"Host: \S+ Port: \d+ (TCP|UDP) Blocked$", l) for l in lines), lines
    res = subprocess.run(["fail2ban-regex", str(history), FILTER], capture_output=True, text=True, timeout=120)
    assert res.returncode == 0, res.stdout + res.stderr
    m = re.search(r"Failregex: (\d+) total", res.stdout)
    assert m and int(m.group(1)) == len(lines), res.stdout
    # the IPv4 attacker is what fail2ban would ban
    assert attackers[0].ip4 in res.stdout or int(m.group(1)) >= 1
    # logcheck: every detection has an attackalert line tagged portsentry[PID]
    alerts = [l for l in d.syslog.lines if "attackalert:" in l]
    assert len([l for l in alerts if "scan from host" in l]) >= len(detections), alerts
    assert all(re.search(r"portsentry\[\d+\]: attackalert", l) for l in alerts), alerts
