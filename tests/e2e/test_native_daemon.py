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


# A probe that must connect returns as soon as it does: its budget (which includes starting bash,
# seconds under TCG on a busy machine) only bounds a failure.
CONNECT = 30.0


def probe(host, addr: str, port: int, timeout: float = 1.0) -> str:
    """TCP connect with bash's /dev/tcp: one cheap program start (python costs seconds under TCG)."""
    res = host.run(["timeout", str(timeout), "bash", "-c", f"exec 3<>/dev/tcp/{addr}/{port}"], check=False, timeout=timeout + 20)
    return {0: "connected", 124: "timeout"}.get(res.returncode, "refused")


def test_scans_blocked_unblocked_by_cli_legit_untouched(lab, tmp_path):
    victim, attacker, legit = lab["victim"], lab["attacker"], lab["legit"]
    victim.tcp_service(OPEN_PORT)
    d = Nfsentry(victim, tmp_path / "nfs").start()
    try:
        st = d.control("status")
        expected = os.environ.get("NFSENTRY_EXPECT_BACKEND")
        assert st["backend"] == (expected or st["backend"]) and st["backend"] in ("native", "compat")
        assert st["inuse"] == "socket"
        assert st["engine_kind"] == "compiled"  # the package build compiled nfsentry.core._fastpath
        assert probe(legit, victim.ip4, OPEN_PORT, CONNECT) == "connected"
        for i, (args, label, target, src) in enumerate(
            (
                ("-sS", "SYN", victim.ip4, attacker.ip4),
                ("-sF", "FIN", victim.ip4, attacker.ip4),
                ("-sN", "NULL", victim.ip4, attacker.ip4),
                ("-sX", "XMAS", victim.ip4, attacker.ip4),
                ("-sU", "UDP", victim.ip6, attacker.ip6),
            )
        ):
            attacker.nmap(f"{args} -Pn --max-retries 0 --host-timeout 30s -p 7,9", target, timeout=90)
            ev = d.wait_event("detection", src, timeout=120, where=lambda e, label=label: e["label"] == label)
            assert ev["action"] == "block"
            assert probe(attacker, target, OPEN_PORT) == "timeout", label
            if i == 0:
                assert f"unblocked 1: {src}" in d.cli("unblock", src).stdout  # the CLI, once
            else:
                d.control("unblock", all=True)
            assert probe(attacker, target, OPEN_PORT, CONNECT) == "connected", label
        # legit traffic untouched throughout: never detected, still connects over IPv4 and IPv6
        assert probe(legit, victim.ip4, OPEN_PORT, CONNECT) == "connected"
        assert probe(legit, victim.ip6, OPEN_PORT, CONNECT) == "connected"
        assert not [e for e in d.events() if e.get("src") in (legit.ip4, legit.ip6)]
        assert d.control("status")["counters"]["blocks"] == 5
    finally:
        d.close()
