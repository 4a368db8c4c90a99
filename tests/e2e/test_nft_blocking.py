"""Blocking in the kernel: the blocked sets, their timeouts, reloads under traffic, variants.

Lab: victim 198.18.0.1 / 2001:db8::1 runs the ruleset; attacker .2/::2, legit .3/::3,
ignored .4/::4 connect to a service on the victim (port 8080, not a monitored port).
"""

from __future__ import annotations

import json
import textwrap
import time

import pytest
from lab import PYTHON
from test_nft_support import connect_many, expected_backend, nft_py

pytestmark = pytest.mark.e2e

SERVICE = 8080


def reach(lab, role: str, port: int = SERVICE) -> tuple[str, str]:
    """(IPv4 result, IPv6 result) of a TCP connect from ``role`` to the victim."""
    v = lab["victim"]
    res = connect_many(lab[role], [(v.ip4, port), (v.ip6, port)])
    return res[f"{v.ip4}:{port}"], res[f"{v.ip6}:{port}"]


def test_block_and_unblock_ipv4_ipv6_addresses_and_prefixes(lab):
    victim = lab["victim"]
    victim.tcp_service(SERVICE)
    st = nft_py(victim, "n.load(RulesetSpec()); out = n.status(sizes=False)")
    assert st["backend"] == expected_backend(st["backend"])
    assert all(reach(lab, r) == ("connected", "connected") for r in ("attacker", "legit", "ignored"))

    # Addresses: the attacker only.
    got = nft_py(
        victim,
        """
        n.block('198.18.0.2', 600); n.block('2001:db8::2', 0)
        out = sorted((b['network'], b['set'], b['expires_in'] is None) for b in n.list_blocked())
    """,
    )
    assert got == [["198.18.0.2", "blocked4", False], ["2001:db8::2", "blocked6", True]]
    assert reach(lab, "attacker") == ("timeout", "timeout")
    assert reach(lab, "legit") == ("connected", "connected")
    assert nft_py(victim, "out = [n.unblock('198.18.0.2'), n.unblock('2001:db8::2'), n.unblock('2001:db8::2')]") == [True, True, False]
    assert reach(lab, "attacker") == ("connected", "connected")

    # Prefixes: .2/31 and ::2/127 cover attacker and legit, not ignored (.4).
    nft_py(victim, "n.block('198.18.0.2/31', 600); n.block('2001:db8::2/127', 600)")
    assert reach(lab, "attacker") == ("timeout", "timeout")
    assert reach(lab, "legit") == ("timeout", "timeout")
    assert reach(lab, "ignored") == ("connected", "connected")
    # The daemon's IPv6 prefix (/64: hash set blocked6_64 matched through a mask) covers the lan.
    got = nft_py(victim, "n.block('2001:db8::/64', 600); out = [b['set'] for b in n.list_blocked() if b['network'] == '2001:db8::/64']")
    assert got == ["blocked6_64"]
    assert reach(lab, "ignored") == ("connected", "timeout")
    counters = nft_py(victim, "out = n.counters()")
    assert counters["blocked_pkts4"] > 0 and counters["blocked_pkts6"] > 0, counters
    assert nft_py(victim, "out = n.unblock_all()") == 3
    assert all(reach(lab, r) == ("connected", "connected") for r in ("attacker", "legit", "ignored"))


def test_block_timeouts_expire_by_themselves(lab):
    victim = lab["victim"]
    victim.tcp_service(SERVICE)
    nft_py(victim, "n.load(RulesetSpec())")
    # T: the short blocks' timeout. What is checked while they hold (the blocked connects and the
    # listing, ~2 s quiet) must be over before they can expire, which the clock tells afterwards:
    # a machine too busy for that starts again with a longer T (never judged across the expiry).
    for T in (6, 15, 40):
        t0 = time.monotonic()  # the elements are added after this: none expires before t0 + T
        nft_py(victim, f"n.block('198.18.0.2', {T}); n.block('2001:db8::2/127', {T}); n.block('198.18.0.3', 600)")
        added = time.monotonic()  # ... and all of them by this + T
        held = reach(lab, "attacker")
        left = nft_py(victim, "out = {b['network']: b['expires_in'] for b in n.list_blocked()}")
        if time.monotonic() < t0 + T - 0.5:
            break
        nft_py(victim, "n.unblock_all()")
    else:
        pytest.fail(f"the machine never checked the blocks within {T - 0.5}s of adding them")
    assert held == ("timeout", "timeout")
    assert set(left) == {"198.18.0.2", "2001:db8::2/127", "198.18.0.3"} and left["198.18.0.2"] <= T
    time.sleep(max(0.0, added + T + 0.5 - time.monotonic()))
    # gone from the listing within a generous deadline (a busy machine runs the snippet slowly)
    deadline = time.monotonic() + 60
    while nft_py(victim, "out = [b['network'] for b in n.list_blocked()]") != ["198.18.0.3"] and time.monotonic() < deadline:
        time.sleep(0.2)
    assert reach(lab, "attacker") == ("connected", "connected")
    assert reach(lab, "legit") == ("timeout", "connected")
    assert [b for b in nft_py(victim, "out = [b['network'] for b in n.list_blocked()]")] == ["198.18.0.3"]


ECHO_SERVER = textwrap.dedent("""
    import socket, threading, sys
    port = int(sys.argv[1])
    s = socket.socket(socket.AF_INET6); s.setsockopt(socket.SOL_SOCKET, socket.SO_REUSEADDR, 1)
    s.setsockopt(socket.IPPROTO_IPV6, socket.IPV6_V6ONLY, 0)
    s.bind(("::", port)); s.listen(16)
    def echo(c):
        while True:
            d = c.recv(65536)
            if not d:
                return
            c.sendall(d)
    print("READY", flush=True)
    while True:
        c, _ = s.accept()
        threading.Thread(target=echo, args=(c,), daemon=True).start()
""")

# Keeps one TCP connection per address busy until stdin closes: sends a numbered 8-byte record
# every 10 ms and expects it back within 20 s.
ECHO_CLIENT = textwrap.dedent("""
    import json, select, socket, struct, sys, threading, time
    port, addrs = int(sys.argv[1]), sys.argv[2:]
    stop = threading.Event(); res = {}
    def run(addr):
        r = res[addr] = {"sent": 0, "received": 0, "error": None}
        try:
            s = socket.create_connection((addr, port), timeout=20)   # a broken connection, not a slow machine
            while not stop.is_set():
                s.sendall(struct.pack("!Q", r["sent"])); r["sent"] += 1
                buf = b""
                while len(buf) < 8:
                    d = s.recv(8 - len(buf))
                    if not d:
                        raise OSError("connection closed")
                    buf += d
                assert struct.unpack("!Q", buf)[0] == r["received"], "out of order"
                r["received"] += 1
                time.sleep(0.01)
        except Exception as e:
            r["error"] = repr(e)
    ts = [threading.Thread(target=run, args=(a,)) for a in addrs]
    [t.start() for t in ts]
    time.sleep(0.3); print("RUNNING", flush=True)
    sys.stdin.read(); stop.set(); [t.join() for t in ts]
    print(json.dumps(res), flush=True)
""")


def test_reload_under_traffic_drops_no_connection_and_loses_no_block(lab):
    import subprocess

    victim, legit = lab["victim"], lab["legit"]
    port = 500  # a monitored port: the service is exempt because its socket exists
    srv = victim.popen([PYTHON, "-u", "-c", ECHO_SERVER, str(port)])
    assert "READY" in srv.stdout.readline()
    victim.tcp_service(SERVICE)
    nft_py(
        victim,
        "n.load(RulesetSpec()); n.block('198.18.0.2', 600); n.block('2001:db8::2', 600); n.block('2001:db8:5::/64', 0); n.block('198.19.0.0/16', 300)",
    )
    before = {b["network"]: b for b in nft_py(victim, "out = n.list_blocked()")}
    client = legit.popen([PYTHON, "-u", "-c", ECHO_CLIENT, str(port), victim.ip4, victim.ip6], stdin=subprocess.PIPE)
    assert "RUNNING" in client.stdout.readline()
    # 12 reloads while the connections exchange data: variants, ports, ignore lists, the IPv6
    # block prefix (which moves entries between sets), the compat backend and back.
    specs = [
        "RulesetSpec()",
        "RulesetSpec(variant='gateway', protect=['198.18.1.0/24'])",
        "RulesetSpec(variant='observe')",
        "RulesetSpec(tcp_ports=[(1, 600)], ignore=['198.18.0.4', '2001:db8::4'])",
        "RulesetSpec(ipv6_prefix=56)",
        "RulesetSpec(inuse='poll')",
        "RulesetSpec(ftp=False)",
        "RulesetSpec()",
    ]
    reloads = nft_py(
        victim,
        f"""
        specs = [{", ".join(specs)}]
        out = 0
        for i in range(12):
            n.load(specs[i % len(specs)], backend='compat' if i == 9 else None, poll_interval=0)
            out += 1
            time.sleep(0.15)
    """,
    )
    assert reloads == 12
    time.sleep(0.3)
    tail, err = client.communicate(input="", timeout=30)
    res = json.loads(tail.strip().splitlines()[-1])
    for addr, r in res.items():
        assert r["error"] is None, f"{addr}: {r} {err}"
        assert r["received"] == r["sent"] and r["received"] > 50, (addr, r)
    after = {b["network"]: b for b in nft_py(victim, "out = n.list_blocked()")}
    assert set(after) == set(before) == {"198.18.0.2", "2001:db8::2", "2001:db8:5::/64", "198.19.0.0/16"}
    for net, b in after.items():  # remaining time kept (not reset to the full timeout)
        if b["timeout"]:
            assert b["expires_in"] <= before[net]["expires_in"], (b, before[net])
        else:
            assert before[net]["expires_in"] is None and b["expires_in"] is None
    assert reach(lab, "attacker") == ("timeout", "timeout")


def test_observe_mode_counts_blocked_sources_but_never_drops(lab):
    victim = lab["victim"]
    victim.tcp_service(SERVICE)
    nft_py(victim, "n.load(RulesetSpec(variant='observe')); n.block('198.18.0.2', 600); n.block('2001:db8::2')")
    assert reach(lab, "attacker") == ("connected", "connected")
    c = nft_py(victim, "out = [n.counters(), n.status(sizes=False)['variant']]")
    assert c[1] == "observe"
    assert c[0]["blocked_pkts4"] > 0 and c[0]["blocked_pkts6"] > 0, c


def test_gateway_protects_the_network_behind_it(lab):
    victim, attacker, legit = lab["victim"], lab["attacker"], lab["legit"]
    (inside,) = lab.add_inside()
    inside.tcp_service(SERVICE)
    nft_py(
        victim, "n.load(RulesetSpec(variant='gateway', protect=['198.18.1.0/24', '2001:db8:1::/64'], tcp_ports=[(1, 1023), (9000, 9001)]))"
    )
    targets = [(inside.ip4, SERVICE), (inside.ip6, SERVICE)]
    assert set(connect_many(attacker, targets).values()) == {"connected"}
    assert nft_py(victim, "out = n.counters()['queued_tcp']") == 0  # an unmonitored port is not queued
    # A probe of a monitored port on the protected host is queued (forward hook; bypass: refused).
    assert set(connect_many(attacker, [(inside.ip4, 9001), (inside.ip6, 9001)]).values()) == {"refused"}
    assert nft_py(victim, "out = n.counters()['queued_tcp']") == 2
    # The protected host's own connections out (to a monitored port elsewhere) are not.
    assert set(connect_many(inside, [(attacker.ip4, 9001), (attacker.ip6, 9001)]).values()) == {"refused"}
    assert nft_py(victim, "out = n.counters()['queued_tcp']") == 2
    nft_py(victim, "n.block('198.18.0.2', 600); n.block('2001:db8::2', 600)")
    assert set(connect_many(attacker, targets).values()) == {"timeout"}
    assert set(connect_many(legit, targets).values()) == {"connected"}
    assert reach(lab, "attacker") == ("timeout", "timeout")  # the gateway itself too
    nft_py(victim, "n.unblock_all()")
    assert set(connect_many(attacker, targets).values()) == {"connected"}
