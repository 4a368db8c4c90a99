"""Issue 17 part 1: the first probe is blocked by the kernel, from the rule that queues it, against
the real kernel, nft sets, NFQUEUE (compat backend here), the daemon and real scanners (nmap,
hping3) in lab namespaces.

The daemon is frozen (SIGSTOP) while the probe arrives: its block call is not merely delayed but
cannot run at all, so anything blocked then was blocked by the kernel. The same test with
``kernel_block = false`` shows the open port still answering, which is what makes the first test
mean something. Every wait polls with a deadline far above the quiet time.
"""

from __future__ import annotations

import os
import signal
import time
from contextlib import contextmanager

import pytest
from daemon_util import Nfsentry, kernel_blocks, wait_until

pytestmark = pytest.mark.e2e

OPEN_PORT = 8080
TRAP_PORT = 7  # monitored (1-1023), nothing listens
MARGIN = 20.0


def wait_for(what: str, check, timeout: float = MARGIN):
    return wait_until(what, check, timeout)


@contextmanager
def frozen(d: Nfsentry):
    """The daemon stopped (SIGSTOP) inside the block: its queue fills, nothing it does happens."""
    assert d.proc is not None
    os.kill(d.proc.pid, signal.SIGSTOP)
    try:
        yield
    finally:
        os.kill(d.proc.pid, signal.SIGCONT)


def start(lab, tmp_path, **response) -> Nfsentry:
    lab["victim"].tcp_service(OPEN_PORT)
    d = Nfsentry(lab["victim"], tmp_path / "nfs", overrides={"response": response} if response else None)
    return d.start()


def one_syn(attacker, target: str) -> None:
    """nmap's SYN scan of the trap port, one probe (no retries, no host discovery)."""
    attacker.nmap(["-sS", "-Pn", "-p", str(TRAP_PORT), "--max-retries", "0", "--host-timeout", "5s"], target, timeout=60)


@pytest.mark.parametrize("family", [4, 6])
def test_a_single_syn_is_blocked_by_the_kernel_before_any_second_packet_even_with_the_daemon_frozen(lab, tmp_path, family):
    victim, attacker = lab["victim"], lab["attacker"]
    target = victim.ip4 if family == 4 else victim.ip6
    # IPv6: the attacker shares the victim's /64, which holds the victim's own address: the kernel
    # blocks the address alone (near6_64), as the daemon's valves narrow it
    element = attacker.ip4 if family == 4 else attacker.ip6
    d = start(lab, tmp_path)
    try:
        assert d.status()["kernel_block"]["active"] is True
        assert attacker.connect(target, OPEN_PORT) == "connected"
        with frozen(d):
            one_syn(attacker, target)
            blocks = kernel_blocks(victim)
            assert element in blocks, blocks  # there already: the daemon has not run
            assert 3500 <= blocks[element] <= 3600  # the first offence's hour
            if family == 6:
                assert not any(n.endswith("/64") for n in blocks), blocks
            # the very next packets from the scanner, to an open port, get no answer
            assert attacker.connect(target, OPEN_PORT, timeout=2) == "timeout"
        ev = d.wait_event("block", element, timeout=MARGIN * 3)  # the daemon records it once thawed
        assert ev["src"] == element
        (entry,) = [b for b in d.blocked() if b["network"] == element]
        assert entry["origin"] == "auto" and "SYN" in entry["labels"]  # a detection (the database says "auto")
        assert d.status()["kernel_block"]["blocks"] >= 1
        assert "kernel-side block: active for TCP and UDP" in d.cli("status").stdout
    finally:
        d.close()


def test_without_kernel_side_blocking_a_frozen_daemon_blocks_nothing(lab, tmp_path):
    """The control: the same probe with kernel_block off leaves the open port answering until the
    daemon runs again (then the daemon blocks it)."""
    victim, attacker = lab["victim"], lab["attacker"]
    d = start(lab, tmp_path, kernel_block=False)
    try:
        assert d.status()["kernel_block"]["active"] is False
        assert "kernel-side block: off" in d.cli("status").stdout
        with frozen(d):
            one_syn(attacker, victim.ip4)
            assert attacker.ip4 not in kernel_blocks(victim)
            assert attacker.connect(victim.ip4, OPEN_PORT) == "connected"
        d.wait_event("block", attacker.ip4, timeout=MARGIN * 3)
        wait_for("the daemon's block", lambda: attacker.ip4 in kernel_blocks(victim))
    finally:
        d.close()


def test_a_kernel_block_the_valves_refuse_is_withdrawn_and_leaves_no_element(lab, tmp_path):
    """max_blocks_per_minute = 1: the legit host's probe uses it up; the attacker's first probe is
    blocked by the kernel (seen while the daemon is frozen), then refused by the daemon's valve and
    withdrawn: no element, no block record, and the attacker reaches the open port again."""
    victim, attacker, legit = lab["victim"], lab["attacker"], lab["legit"]
    d = start(lab, tmp_path, max_blocks_per_minute=1)
    try:
        one_syn(legit, victim.ip4)
        d.wait_event("block", legit.ip4, timeout=MARGIN * 3)
        with frozen(d):
            one_syn(attacker, victim.ip4)
            assert attacker.ip4 in kernel_blocks(victim)
        wait_for("the withdrawal", lambda: attacker.ip4 not in kernel_blocks(victim))
        assert attacker.connect(victim.ip4, OPEN_PORT) == "connected"
        st = d.status()
        assert st["counters"]["kernel_blocks_withdrawn"] >= 1 and st["counters"]["blocks_rate_limited"] >= 1
        assert not d.events("block", attacker.ip4)
        assert attacker.ip4 not in {b["network"] for b in d.blocked()}
        assert legit.ip4 in kernel_blocks(victim)  # the admitted block stays
    finally:
        d.close()


def test_reply_shaped_packets_never_make_a_kernel_block(lab, tmp_path):
    """SYN+ACK, RST, RST+ACK (what a stack sends back; backscatter of a scan forging our address)
    to a monitored port: no element, neither from the kernel (daemon frozen) nor from the daemon."""
    victim, attacker = lab["victim"], lab["attacker"]
    d = start(lab, tmp_path)
    try:
        with frozen(d):
            for flags in ("-S -A", "-R", "-R -A"):
                attacker.hping3(f"{flags} -p {TRAP_PORT} -c 2 -i u20000 {victim.ip4}")
            assert attacker.ip4 not in kernel_blocks(victim)
        time.sleep(1.0)  # the daemon's turn: it must not block them either (nothing to wait for)
        assert attacker.ip4 not in kernel_blocks(victim)
        assert attacker.connect(victim.ip4, OPEN_PORT) == "connected"
        assert not d.events("block", attacker.ip4)
    finally:
        d.close()


@pytest.mark.native
def test_lean_on_this_kernel_the_first_syn_is_blocked_by_the_kernel(lab, tmp_path):
    """Kept lean for the qemu stock-kernel tier (Debian's kernel, native `queue` backend; compat
    here): with the daemon frozen, one SYN puts its source into blocked4 from the queueing rule,
    the open port no longer answers it, and the thawed daemon records the block."""
    victim, attacker = lab["victim"], lab["attacker"]
    d = start(lab, tmp_path)
    try:
        assert attacker.connect(victim.ip4, OPEN_PORT, timeout=10) == "connected"
        with frozen(d):
            one_syn(attacker, victim.ip4)
            assert attacker.ip4 in kernel_blocks(victim)
            assert attacker.connect(victim.ip4, OPEN_PORT, timeout=3) == "timeout"
        d.wait_event("block", attacker.ip4, timeout=120)
        assert d.status()["kernel_block"]["active"] is True
    finally:
        d.close()
