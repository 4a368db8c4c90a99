"""The daemon on whichever queue backend the kernel offers, kept lean for the qemu stock-kernel
tier (one lab, one daemon, few processes: program starts are slow under TCG). On this machine it
runs the compat backend; in the guest (NFSENTRY_EXPECT_BACKEND=native) the native `queue`
statement. Covers: backend detection, nmap SYN/FIN/NULL/XMAS scans (IPv4) and a UDP scan (IPv6)
detected and the attacker blocked in-kernel, unblock via the CLI, legit traffic untouched."""
from __future__ import annotations

import os

import pytest

from daemon_util import Nfsentry

pytestmark = [pytest.mark.e2e, pytest.mark.native]
OPEN_PORT = 8080


def test_scans_blocked_unblocked_by_cli_legit_untouched(lab, tmp_path):
    victim, attacker, legit = lab["victim"], lab["attacker"], lab["legit"]
    victim.tcp_service(OPEN_PORT)
    d = Nfsentry(victim, tmp_path / "nfs").start()
    try:
        st = d.status()
        expected = os.environ.get("NFSENTRY_EXPECT_BACKEND")
        assert st["backend"] == (expected or st["backend"]) and st["backend"] in ("native", "compat")
        assert st["inuse"] == "socket"
        assert legit.connect(victim.ip4, OPEN_PORT) == "connected"
        for args, label, target, src in (("-sS", "SYN", victim.ip4, attacker.ip4), ("-sF", "FIN", victim.ip4, attacker.ip4),
                                         ("-sN", "NULL", victim.ip4, attacker.ip4), ("-sX", "XMAS", victim.ip4, attacker.ip4),
                                         ("-sU", "UDP", victim.ip6, attacker.ip6)):
            attacker.nmap(f"{args} -Pn --max-retries 0 --host-timeout 30s -p 7,9", target, timeout=90)
            ev = d.wait_event("detection", src, timeout=20, where=lambda e, label=label: e["label"] == label)
            assert ev["action"] == "block"
            assert attacker.connect(target, OPEN_PORT, timeout=1.0) == "timeout", label
            d.cli("unblock", "--all")
            assert attacker.connect(target, OPEN_PORT) == "connected", label
        # legit traffic untouched throughout: never detected, still connects over IPv4 and IPv6
        assert legit.connect(victim.ip4, OPEN_PORT) == "connected"
        assert legit.connect(victim.ip6, OPEN_PORT) == "connected"
        assert not [e for e in d.events() if e.get("src") in (legit.ip4, legit.ip6)]
        assert d.status()["counters"]["blocks"] == 5
    finally:
        d.close()
