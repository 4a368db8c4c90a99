"""Issue 17 part 3: a restarting service does not turn its clients into scanners.

The real daemon on the lab's victim, a legit client connecting every 0.2 s to a service on a
monitored port, and a 2 s restart of that service (stop, 2 s, start). With
``[monitor] recent_service_grace`` (default 10m) the port the service served stays exempt: the
client's connects are refused during the gap (by the kernel: the probe never reaches the daemon)
and succeed again after it, and nothing is blocked; a scanner hitting a never-served monitored port
still is. With the grace off (0) the client's first retry is a probe and the client is blocked:
that is what the grace protects it from.

Every wait polls with a deadline far above what it takes on a quiet machine.
"""

from __future__ import annotations

import json
import textwrap
import time
from pathlib import Path

import pytest
from daemon_util import Nfsentry, wait_until
from lab import PYTHON
from test_native_daemon import CONNECT, probe

pytestmark = pytest.mark.e2e

SERVICE_PORT = {"tcp": 443, "udp": 123}  # monitored (1-1023); started after the daemon, never seeded
SEEDED_PORT = 80  # listening before the daemon starts: counted as served from the load on
TRAP_PORT = 7  # monitored, never served
GAP = 2.0  # seconds the service is down
INTERVAL = 0.2  # the client's pace
MARGIN = 60.0  # seconds: generous for a busy machine (about 1 s on a quiet one)
MAX_TRIES = 1500  # the client's hard bound (with its own 300 s time bound)


def wait_for(what: str, check, timeout: float = MARGIN):
    return wait_until(what, check, timeout)


def kernel_set(victim, name: str) -> list:
    """The elements of one of our sets, straight from the kernel ([] if it does not exist)."""
    res = victim.nft(["-j", "list", "set", "inet", "nfsentry", name], check=False)
    if res.returncode != 0:
        return []
    for item in json.loads(res.stdout)["nftables"]:
        if "set" in item:
            return [e["elem"]["val"] if isinstance(e, dict) and "elem" in e else e for e in item["set"].get("elem", [])]
    return []


def kernel_blocks(victim) -> list:
    return [e for name in ("blocked4", "blocked4net", "blocked6", "blocked6_64", "blocked6net") for e in kernel_set(victim, name)]


def port_in(elems: list, port: int) -> bool:
    """Is ``port`` in a port set's elements (numbers, or {"range": [lo, hi]} in an interval set)?"""
    return any(e == port if isinstance(e, int) else e["range"][0] <= port <= e["range"][1] for e in elems)


class Client:
    """A legit client in its own namespace: one attempt every INTERVAL s until told to stop (a
    file), each a fresh socket: TCP connect, or a UDP datagram waiting for the echo. Writes one
    JSON line per attempt: {"t": monotonic time, "r": connected|answered|refused|timeout|error}."""

    def __init__(self, host, proto: str, addr: str, port: int, tmp: Path) -> None:
        self.out, self.stop_file = tmp / f"client-{proto}.jsonl", tmp / f"client-{proto}.stop"
        code = textwrap.dedent(f"""
            import json, socket, time
            out = open({str(self.out)!r}, "a", buffering=1)
            end = time.monotonic() + 300
            for _ in range({MAX_TRIES}):
                if time.monotonic() > end or __import__("os").path.exists({str(self.stop_file)!r}):
                    break
                t = time.monotonic()
                s = socket.socket(socket.AF_INET, socket.SOCK_STREAM if {proto!r} == "tcp" else socket.SOCK_DGRAM)
                s.settimeout(1.0)
                try:
                    s.connect(({addr!r}, {port}))
                    if {proto!r} == "udp":
                        s.send(b"ping")
                        s.recv(100)
                    r = "connected" if {proto!r} == "tcp" else "answered"
                except ConnectionRefusedError:
                    r = "refused"
                except (socket.timeout, TimeoutError):
                    r = "timeout"
                except OSError as e:
                    r = "error %d" % e.errno
                finally:
                    s.close()
                out.write(json.dumps({{"t": t, "r": r}}) + "\\n")
                time.sleep(max(0.0, {INTERVAL} - (time.monotonic() - t)))
        """)
        self.ok = "connected" if proto == "tcp" else "answered"
        self.proc = host.popen([PYTHON, "-u", "-c", code])

    def results(self) -> list[dict]:
        if not self.out.exists():
            return []
        return [json.loads(line) for line in self.out.read_text().splitlines() if line.endswith("}")]

    def successes_since(self, t: float) -> int:
        return sum(1 for r in self.results() if r["t"] >= t and r["r"] == self.ok)

    def stop(self) -> list[dict]:
        self.stop_file.touch()
        self.proc.wait(timeout=MARGIN)
        return self.results()


def start_service(victim, proto: str):
    port = SERVICE_PORT[proto]
    return victim.tcp_service(port, family=4) if proto == "tcp" else victim.udp_service(port, family=4)


def run_restart(lab, tmp_path, proto: str, monitor: dict) -> dict:
    """The scenario: daemon up, service up, client running, the service restarted (down GAP s),
    client running on until it made 5 attempts after the restart. Returns the daemon (the caller
    closes it) and the client's results by phase: before the stop, during the gap, after the
    service is back (ready)."""
    victim = lab["victim"]
    victim.tcp_service(SEEDED_PORT, family=4)
    d = Nfsentry(victim, tmp_path / "nfs", overrides={"monitor": monitor})
    d.start()
    try:
        results, t_down, t_up = client_through_a_restart(lab, tmp_path, proto, monitor)
    except BaseException:
        d.close()
        raise
    return dict(
        daemon=d,
        before=[r["r"] for r in results if r["t"] < t_down],
        gap=[r["r"] for r in results if t_down <= r["t"] < t_up],
        after=[r["r"] for r in results if r["t"] >= t_up],
    )


def client_through_a_restart(lab, tmp_path, proto: str, monitor: dict) -> tuple[list[dict], float, float]:
    """(the client's results, when the service went down, when it was back)."""
    victim, legit = lab["victim"], lab["legit"]
    port = SERVICE_PORT[proto]
    service = start_service(victim, proto)
    if monitor.get("inuse") == "poll":  # poll: the daemon must have seen the service first (its 1 s poll)
        wait_for("the poller leaving the service's port out", lambda: not port_in(kernel_set(victim, f"{proto}_ports"), port))
    t0 = time.monotonic()
    client = Client(legit, proto, victim.ip4, port, tmp_path)
    try:
        wait_for("5 client successes before the restart", lambda: client.successes_since(t0) >= 5)
        service.terminate()
        service.wait(timeout=MARGIN)
        t_down = time.monotonic()
        time.sleep(GAP)  # the scenario itself: the service is down for 2 s
        start_service(victim, proto)
        t_up = time.monotonic()
        wait_for("5 client attempts after the restart", lambda: sum(1 for r in client.results() if r["t"] >= t_up) >= 5)
    finally:
        results = client.stop()
    return results, t_down, t_up


def scanner_still_blocked(lab, d) -> None:
    """A scanner's SYN to a never-served monitored port blocks it (kernel set, and it can no longer
    reach a service). Its block event also proves the daemon wrote every event before it."""
    victim, attacker = lab["victim"], lab["attacker"]
    assert attacker.connect(victim.ip4, SEEDED_PORT) == "connected"
    attacker.connect(victim.ip4, TRAP_PORT, timeout=2)
    ev = d.wait_event("block", attacker.ip4, timeout=MARGIN)
    assert ev["port"] == TRAP_PORT
    assert attacker.ip4 in kernel_blocks(victim)
    assert attacker.connect(victim.ip4, SEEDED_PORT, timeout=1.5) == "timeout"


@pytest.mark.parametrize("proto,monitor", [("tcp", {}), ("udp", {}), ("tcp", {"inuse": "poll"})], ids=["tcp", "udp", "tcp-poll"])
def test_restart_within_the_grace_blocks_no_client_and_a_scanner_still_is(lab, tmp_path, proto, monitor):
    victim, legit = lab["victim"], lab["legit"]
    out = run_restart(lab, tmp_path, proto, {"recent_service_grace": "10m", **monitor})
    d = out["daemon"]
    try:
        print(f"{proto} {monitor}: before {len(out['before'])} ok, gap {out['gap']}, after {out['after']}")
        ok = "connected" if proto == "tcp" else "answered"
        assert len(out["before"]) >= 5 and set(out["before"]) == {ok}, out["before"]
        # The gap was real: the client's attempts found the port closed...
        assert [r for r in out["gap"] if r != ok], out["gap"]
        if proto == "tcp":  # ...and the kernel refused them (a reset), nothing dropped them
            assert set(out["gap"]) <= {"refused", ok}, out["gap"]
        # Once the service is back every attempt succeeds: the client was never blocked.
        assert len(out["after"]) >= 5 and set(out["after"]) == {ok}, out["after"]
        if monitor.get("inuse") == "poll":  # the poller kept the port out of the monitored set
            assert not port_in(kernel_set(victim, f"{proto}_ports"), SERVICE_PORT[proto])
        else:  # the kernel learned the port from the packet path (it was not listening at load time)
            assert SERVICE_PORT[proto] in kernel_set(victim, f"served_{proto}")
            assert SEEDED_PORT in kernel_set(victim, "served_tcp")  # listening at load time
            assert TRAP_PORT not in kernel_set(victim, "served_tcp")
        scanner_still_blocked(lab, d)
        assert legit.ip4 not in kernel_blocks(victim)
        assert d.events("detection", legit.ip4) == [] and d.events("block", legit.ip4) == []
        assert [b["network"] for b in d.blocked()] == [lab["attacker"].ip4]
    finally:
        d.close()


@pytest.mark.parametrize("proto", ["tcp", "udp"])
def test_with_the_grace_off_the_restart_blocks_the_client(lab, tmp_path, proto):
    """recent_service_grace = 0, the old behaviour: the client's first retry during the gap is a
    probe of an unused monitored port, and the client is blocked (what the grace protects it from)."""
    victim, legit = lab["victim"], lab["legit"]
    out = run_restart(lab, tmp_path, proto, {"recent_service_grace": "0"})
    d = out["daemon"]
    try:
        print(f"{proto} grace 0: before {len(out['before'])} ok, gap {out['gap']}, after {out['after']}")
        ev = d.wait_event("block", legit.ip4, timeout=MARGIN)
        assert ev["port"] == SERVICE_PORT[proto]
        assert legit.ip4 in kernel_blocks(victim)
        assert "timeout" in out["after"] and not {"connected", "answered"} & set(out["after"]), out["after"]
        assert kernel_set(victim, "served_tcp") == [] == kernel_set(victim, "served_udp")  # no such sets
    finally:
        d.close()


def test_a_reload_while_the_service_is_down_keeps_its_port_served(lab, tmp_path):
    """The served sets survive a daemon reload (like the blocked sets): a reload in the middle of
    a service restart does not forget the service. The port was learned from the packet path
    only, and the service is down during the reload, so no seeding can bring it back."""
    victim, legit = lab["victim"], lab["legit"]
    victim.tcp_service(SEEDED_PORT, family=4)
    d = Nfsentry(victim, tmp_path / "nfs")
    d.start()
    try:
        service = start_service(victim, "tcp")
        assert legit.connect(victim.ip4, SERVICE_PORT["tcp"]) == "connected"
        assert SERVICE_PORT["tcp"] in kernel_set(victim, "served_tcp")
        service.terminate()
        service.wait(timeout=MARGIN)
        assert d.control("reload")["ok"]
        assert SERVICE_PORT["tcp"] in kernel_set(victim, "served_tcp")
        assert legit.connect(victim.ip4, SERVICE_PORT["tcp"]) == "refused"
        scanner_still_blocked(lab, d)  # detection works after the reload (and flushes the events)
        assert d.events("block", legit.ip4) == [] and legit.ip4 not in kernel_blocks(victim)
    finally:
        d.close()


@pytest.mark.native
def test_lean_on_this_kernel_a_served_port_stays_exempt_when_its_service_stops(lab, tmp_path):
    """Kept lean for the qemu stock-kernel tier (Debian's kernel, native `queue` backend; compat
    here; probes with bash, program starts are slow under TCG): a connection to a service started
    after the daemon puts its port into the kernel's served set; with the service stopped, a
    client's connect is refused by the kernel (the grace keeps the port out of the traps: no
    probe, no block) and connects again once it is back; a scanner of a never-served monitored
    port is still blocked."""
    victim, legit, attacker = lab["victim"], lab["legit"], lab["attacker"]
    d = Nfsentry(victim, tmp_path / "nfs").start()  # recent_service_grace: the default (10m)
    try:
        service = start_service(victim, "tcp")
        assert probe(legit, victim.ip4, SERVICE_PORT["tcp"], CONNECT) == "connected"
        wait_for("the served port in the kernel's set", lambda: SERVICE_PORT["tcp"] in kernel_set(victim, "served_tcp"))
        service.terminate()
        service.wait(timeout=MARGIN)
        for _ in range(2):  # a retry is no scan either
            assert probe(legit, victim.ip4, SERVICE_PORT["tcp"], CONNECT) == "refused"
        start_service(victim, "tcp")
        assert probe(legit, victim.ip4, SERVICE_PORT["tcp"], CONNECT) == "connected"
        assert probe(attacker, victim.ip4, TRAP_PORT, 2.0) == "timeout"  # the first probe: blocked
        d.wait_event("block", attacker.ip4, timeout=MARGIN)
        assert attacker.ip4 in kernel_blocks(victim)
        assert legit.ip4 not in kernel_blocks(victim)
        assert d.events("detection", legit.ip4) == [] and d.events("block", legit.ip4) == []
    finally:
        d.close()
