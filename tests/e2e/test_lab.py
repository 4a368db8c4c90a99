"""The namespace lab itself: reachability, real nmap through it, and a clean teardown."""

from __future__ import annotations

import signal
import subprocess
import textwrap
from pathlib import Path

import pytest
from lab import PREFIX, PYTHON, Lab, list_lab_namespaces

pytestmark = pytest.mark.e2e


def test_nmap_syn_scan_reaches_victim_and_open_service_answers(lab):
    victim, attacker = lab["victim"], lab["attacker"]
    victim.tcp_service(8022)
    for target in (victim.ip4, victim.ip6):
        res = attacker.nmap("-sS -Pn -p 8022,8023 --max-retries 1", target)
        assert res.returncode == 0, res.stderr
        assert "8022/tcp open" in res.stdout, res.stdout
        assert "8023/tcp closed" in res.stdout, res.stdout


def test_hosts_have_only_documentation_addresses_and_no_default_route(lab):
    for host in lab.hosts.values():
        addrs = host.run("ip -o addr show").stdout
        for line in addrs.splitlines():
            fields = line.split()
            addr = fields[3].split("/")[0]
            if fields[1] == "lo":
                continue
            if fields[2] == "inet":
                assert addr.startswith("198.18.") or addr.startswith("198.19."), line
            elif not addr.startswith("fe80:"):
                assert addr.startswith("2001:db8:"), line
        assert "default" not in host.run("ip route show").stdout
        assert "default" not in host.run("ip -6 route show").stdout


def test_udp_and_tcp_services_answer_legit_client(lab):
    victim, legit = lab["victim"], lab["legit"]
    victim.udp_service(5353)
    victim.tcp_service(8080)
    assert legit.udp_query(victim.ip4, 5353, b"abc") == b"abc"
    assert legit.udp_query(victim.ip6, 5353, b"v6") == b"v6"
    assert legit.connect(victim.ip4, 8080) == "connected"
    assert legit.connect(victim.ip6, 8081) == "refused"


def test_teardown_leaves_no_namespace_or_process_behind():
    lab = Lab.standard()
    victim = lab["victim"]
    service = victim.tcp_service(9000)
    stray = victim.popen(["sleep", "300"])
    names = list(lab.namespaces)
    assert all(n in list_lab_namespaces() for n in names)
    lab.close()
    assert not set(names) & set(list_lab_namespaces())
    assert service.poll() is not None and stray.poll() is not None
    # no veth/bridge leaked into the root namespace either
    links = subprocess.run(["ip", "-o", "link"], capture_output=True, text=True).stdout
    assert lab.tag not in links and "br0" not in links


def test_teardown_runs_when_the_test_process_is_killed(tmp_path):
    """A lab in a child process killed with SIGTERM (as pytest-timeout or Ctrl-C would) cleans up."""
    here = Path(__file__).resolve().parent.parent
    code = textwrap.dedent(f"""
        import sys, time
        sys.path.insert(0, {str(here)!r})
        from lab import Lab
        lab = Lab.standard()
        lab['victim'].popen(['sleep', '300'])
        print(lab.tag, flush=True)
        time.sleep(300)
    """)
    p = subprocess.Popen([PYTHON, "-c", code], stdout=subprocess.PIPE, text=True)
    tag = p.stdout.readline().strip()
    assert tag.startswith(PREFIX)
    assert any(n.startswith(tag) for n in list_lab_namespaces())
    p.send_signal(signal.SIGTERM)
    p.wait(timeout=30)
    assert not any(n.startswith(tag) for n in list_lab_namespaces())
