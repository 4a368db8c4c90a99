"""Issue 18: the fleet through CrowdSec's Local API, end to end. One LAPI (Debian's crowdsec,
offline, in a hub namespace on the lab bridge), three nfsentry hosts and two scanners:

* a real nmap scan of host 1 gets the scanner dropped by hosts 2 and 3 (it can no longer connect
  to their open port), through host 1's push and their pulls; `cscli decisions delete` lifts it
  on hosts 2 and 3;
* with the LAPI stopped, host 1 blocks a second scanner (its outbox keeps the push); once the LAPI
  is back, hosts 2 and 3 drop it too;
* a decision for the hosts' gateway and one for a too-short prefix are refused on every host;
* a longer decision for an address already pulled extends its kernel timeout;
* `nfsentry unblock` of a fleet block deletes its decision at the LAPI (every host lifts it);
* a host restarted with the LAPI down puts its pulled blocks back from its database.

Every wait polls with a deadline far above the quiet time (pulls every 100 ms).
"""

from __future__ import annotations

import json

import pytest
from daemon_util import Nfsentry, wait_until
from fleet_util import Lapi, crowdsec_unavailable_reason, fleet_counter, fleet_section, fleet_sets, make_pki, register_hosts
from lab import Lab, lab_unavailable_reason

pytestmark = pytest.mark.e2e

OPEN_PORT = 8080
GATEWAY = "198.18.0.254"  # every host's default route (nobody answers there: nothing leaves the lab)
MARGIN = 30.0


@pytest.fixture
def fleet_lab():
    reason = lab_unavailable_reason() or crowdsec_unavailable_reason()
    if reason:
        pytest.skip(reason)
    lab = Lab()
    try:
        lab.add_segment("lan", "198.18.0.0/24", "2001:db8::/64")
        for num, role in ((1, "victim"), (2, "host2"), (3, "host3"), (10, "attacker"), (11, "scanner"), (100, "hub")):
            lab.add_host(role, "lan", num)
        lab.wait_ready()
        yield lab
    finally:
        lab.close()


def connects(host, target: str) -> str:
    return host.connect(target, OPEN_PORT, timeout=1.0)


def test_a_scan_of_one_host_is_dropped_by_the_fleet(fleet_lab, tmp_path):
    lab = fleet_lab
    hosts = [lab["victim"], lab["host2"], lab["host3"]]
    attacker, scanner = lab["attacker"], lab["scanner"]
    lapi = Lapi(lab["hub"], tmp_path / "lapi")
    register_hosts(lapi, 3)
    lapi.start()
    daemons: list[Nfsentry] = []
    try:
        for n, h in enumerate(hosts, start=1):
            h.run(["ip", "route", "add", "default", "via", GATEWAY])
            h.tcp_service(OPEN_PORT)
            d = Nfsentry(h, tmp_path / f"h{n}", overrides={"fleet": fleet_section(lapi, n), "ignore": {"gateways": True}})
            daemons.append(d.start())
        h1, h2, h3 = daemons
        for h in hosts[1:]:
            assert connects(attacker, h.ip4) == "connected"

        # 1. a real scan of host 1: hosts 2 and 3 drop the scanner (pushed by host 1, pulled by them)
        attacker.nmap(["-sS", "-Pn", "-p", "1-200", "--max-retries", "0"], hosts[0].ip4, timeout=120)
        for h in hosts[1:]:
            wait_until(f"{attacker.ip4} in {h.role}'s fleet set", lambda h=h: attacker.ip4 in fleet_sets(h), MARGIN)
        for h in hosts[1:]:
            assert connects(attacker, h.ip4) == "timeout"
        assert fleet_counter(hosts[1]) > 0  # dropped by the fleet sets' rules, counted apart
        (entry,) = [b for b in h2.blocked() if b["network"] == attacker.ip4]
        assert entry["origin"] == "fleet" and entry["machine"] == "host1"
        assert "fleet:host1" in h2.cli("blocked", "-o", "tsv").stdout
        # host 1's own push came back in its pull stream: not pulled into its fleet sets
        assert attacker.ip4 not in fleet_sets(hosts[0])
        st1 = json.loads(h1.cli("fleet", "status", "-o", "json").stdout)
        assert st1["reachable"] is True and st1["counts"]["pushed"] >= 1 and st1["outbox"] == 0
        wait_until("host 1 sees its own push come back", lambda: h1.control("fleet_status")["fleet"]["skipped"].get("own"), MARGIN)
        # `unblock --all` lifts this host's own blocks only, and says that the fleet's stay
        out = h2.cli("unblock", "--all").stdout
        assert "1 fleet block(s) stay" in out, out
        assert attacker.ip4 in fleet_sets(hosts[1]) and connects(attacker, hosts[1].ip4) == "timeout"

        # 2. `cscli decisions delete` lifts it on hosts 2 and 3
        lapi.delete_decisions("--ip", attacker.ip4)
        for h in hosts[1:]:
            wait_until(f"{attacker.ip4} out of {h.role}'s fleet set", lambda h=h: attacker.ip4 not in fleet_sets(h), MARGIN)
            assert connects(attacker, h.ip4) == "connected"

        # 3. the LAPI down: host 1 blocks a second scanner and keeps the push; the LAPI back: delivered
        lapi.stop()
        scanner.nmap(["-sS", "-Pn", "-p", "1-200", "--max-retries", "0"], hosts[0].ip4, timeout=120)
        h1.wait_event("block", scanner.ip4, timeout=MARGIN)
        wait_until("host 1's outbox holds the push", lambda: h1.control("fleet_status")["fleet"]["outbox"], MARGIN)
        st2 = json.loads(h2.cli("fleet", "status", "-o", "json", check=False).stdout)
        assert st2["reachable"] is False
        assert scanner.ip4 not in fleet_sets(hosts[1])
        lapi.start()
        for h in hosts[1:]:
            wait_until(f"{scanner.ip4} in {h.role}'s fleet set", lambda h=h: scanner.ip4 in fleet_sets(h), MARGIN)
            assert connects(scanner, h.ip4) == "timeout"
        assert h1.control("fleet_status")["fleet"]["outbox"] == 0

        # 4. never the hosts' gateway, never a prefix shorter than min_prefix4 (24): refused everywhere
        lapi.add_decision("--ip", GATEWAY, "--duration", "1h")
        lapi.add_decision("--range", "198.18.0.0/16", "--duration", "1h")
        lapi.add_decision("--ip", "198.18.0.77", "--duration", "2m")  # a fine one, after them
        for d, h in zip(daemons, hosts, strict=True):
            wait_until(f"198.18.0.77 in {h.role}'s fleet set", lambda h=h: "198.18.0.77" in fleet_sets(h), MARGIN)
            sets = fleet_sets(h)
            assert GATEWAY not in sets and "198.18.0.0/16" not in sets, sets
            refused = d.control("fleet_status")["fleet"]["pulled"]["refused"]
            assert refused.get("never_block", 0) >= 1 and refused.get("prefix", 0) >= 1, refused

        # 5. a longer decision for an address already pulled extends its kernel timeout
        assert all(fleet_sets(h)["198.18.0.77"] <= 120 for h in hosts)
        lapi.add_decision("--ip", "198.18.0.77", "--duration", "3h")
        for h in hosts:
            wait_until(
                f"198.18.0.77's timeout extended on {h.role}", lambda h=h: (fleet_sets(h).get("198.18.0.77") or 0) > 3 * 3600 - 120, MARGIN
            )

        # 6. `unblock` of a fleet block on host 3 deletes the decision at the LAPI: host 2 lifts it too
        h3.cli("unblock", "198.18.0.77")
        for h in hosts:
            wait_until(f"198.18.0.77 lifted on {h.role}", lambda h=h: "198.18.0.77" not in fleet_sets(h), MARGIN)
        assert not [x for x in lapi.decisions() if x["value"] == "198.18.0.77"]

        # 7. pulled blocks are kept: host 2 restarted with the LAPI down and its fleet set emptied
        #    behind its back gets them back from its database
        lapi.stop()
        h2.stop()
        hosts[1].nft(["flush", "set", "inet", "nfsentry", "fleet4"])
        assert scanner.ip4 not in fleet_sets(hosts[1])
        h2.start()
        assert scanner.ip4 in fleet_sets(hosts[1])  # before the daemon says it is active
        assert connects(scanner, hosts[1].ip4) == "timeout"
    finally:
        for d in daemons:
            d.close()
        lapi.stop()


def test_hosts_join_with_tls_client_certificates(fleet_lab, tmp_path):
    """[fleet] cert/key/ca instead of a password and an api_key: the LAPI (https, client certificates
    verified against the test's CA, OU agent-ou for watchers and bouncer-ou for bouncers) names
    each host CN@address itself. Host 1's scan reaches host 2 through push and pull over TLS; host
    3's certificate carries an OU the LAPI does not allow: refused, it says so and pulls nothing."""
    lab = fleet_lab
    hosts = [lab["victim"], lab["host2"], lab["host3"]]
    attacker = lab["attacker"]
    both = ("agent-ou", "bouncer-ou")
    pki = make_pki(tmp_path / "pki", lab["hub"].ip4, {"host1": both, "host2": both, "host3": ("other-ou",)})
    lapi = Lapi(lab["hub"], tmp_path / "lapi", tls=pki).start()
    daemons: list[Nfsentry] = []
    try:
        for n, h in enumerate(hosts, start=1):
            h.tcp_service(OPEN_PORT)
            tls = {"password": "", "api_key": "", "cert": str(pki[f"host{n}"]), "key": str(pki[f"host{n}-key"]), "ca": str(pki["ca"])}
            daemons.append(Nfsentry(h, tmp_path / f"h{n}", overrides={"fleet": fleet_section(lapi, n, **tls)}).start())
        h1, h2, h3 = daemons
        assert lapi.url.startswith("https://") and connects(attacker, hosts[1].ip4) == "connected"

        attacker.nmap(["-sS", "-Pn", "-p", "1-200", "--max-retries", "0"], hosts[0].ip4, timeout=120)
        wait_until(f"{attacker.ip4} in host2's fleet set", lambda: attacker.ip4 in fleet_sets(hosts[1]), MARGIN)
        assert connects(attacker, hosts[1].ip4) == "timeout"
        (entry,) = [b for b in h2.blocked() if b["network"] == attacker.ip4]
        assert entry["origin"] == "fleet" and entry["machine"] == "host1"  # the origin this host set
        wait_until("host 1 sees its own push come back", lambda: h1.control("fleet_status")["fleet"]["skipped"].get("own"), MARGIN)
        assert attacker.ip4 not in fleet_sets(hosts[0])
        machines = {m["machineId"]: m for m in json.loads(lapi.cscli("machines", "list", "-o", "json").stdout)}
        assert machines[f"host1@{hosts[0].ip4}"]["auth_type"] == "tls"
        bouncers = {b["name"]: b for b in json.loads(lapi.cscli("bouncers", "list", "-o", "json").stdout)}
        assert bouncers[f"host2@{hosts[1].ip4}"]["auth_type"] == "tls"

        st3 = json.loads(h3.cli("fleet", "status", "-o", "json", check=False).stdout)
        assert st3["reachable"] is False and "HTTP 403" in st3["last_error"], st3
        assert attacker.ip4 not in fleet_sets(hosts[2]) and connects(attacker, hosts[2].ip4) == "connected"
        assert not any(k.startswith("host3") for k in machines)
    finally:
        for d in daemons:
            d.close()
        lapi.stop()
