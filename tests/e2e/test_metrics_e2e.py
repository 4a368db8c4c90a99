"""Issue 19 against the real kernel: the Prometheus endpoint of a running daemon scraped from
inside its namespace while it is scanned (the detection, block and kernel-drop counters move), the
textfile written beside it, and the per-element packet counters of `nfsentry blocked` growing
while a blocked source keeps sending."""

from __future__ import annotations

import json

import pytest
from daemon_util import Nfsentry, wait_until

pytestmark = pytest.mark.e2e
OPEN_PORT = 8080
METRICS = "127.0.0.1:9467"  # the victim namespace's own loopback


def scrape(host) -> dict[tuple, float]:
    """The endpoint's samples, read from inside ``host``'s namespace."""
    res = host.python(
        f"""
        import json, urllib.request
        from prometheus_client.parser import text_string_to_metric_families
        text = urllib.request.urlopen("http://{METRICS}/metrics", timeout=10).read().decode()
        print(json.dumps([[s.name, sorted(s.labels.items()), s.value] for f in text_string_to_metric_families(text) for s in f.samples]))
        """
    )
    return {(name, tuple(tuple(kv) for kv in labels)): value for name, labels, value in json.loads(res.stdout)}


def total(samples: dict[tuple, float], name: str, **labels: str) -> float:
    """The sum of ``name``'s samples whose labels include ``labels``."""
    want = set(labels.items())
    return sum(v for (n, ls), v in samples.items() if n == name and want <= set(ls))


def test_scraped_counters_move_when_the_daemon_is_scanned(lab, tmp_path):
    victim, attacker = lab["victim"], lab["attacker"]
    victim.tcp_service(OPEN_PORT)
    prom = tmp_path / "textfile" / "nfsentry.prom"
    prom.parent.mkdir()
    d = Nfsentry(victim, tmp_path / "nfs", overrides={"metrics": {"listen": METRICS, "textfile": str(prom), "textfile_interval": "1s"}})
    d.start()
    try:
        before = scrape(victim)
        assert total(before, "nfsentry_detections_total") == 0 and total(before, "nfsentry_blocks_total") == 0
        assert total(before, "nfsentry_info") == 1 and total(before, "nfsentry_degraded") == 0
        assert total(before, "nfsentry_blocked_entries") == 0
        attacker.nmap("-sS -Pn --max-retries 0 -p 20-25", victim.ip4)
        d.wait_event("block", attacker.ip4)

        def counted():
            s = scrape(victim)  # the worker counts a detection by label as it reports it
            return s if total(s, "nfsentry_detections_total", label="SYN") else None

        after = wait_until("the detection counted by label", counted, 60)
        assert total(after, "nfsentry_detections_total", label="SYN", proto="tcp") >= 1
        assert total(after, "nfsentry_blocks_total", origin="detection") == 1
        assert total(after, "nfsentry_blocked_entries", set="blocked4") == 1
        assert total(after, "nfsentry_verdict_loop_packets_total") >= 1
        assert total(after, "nfsentry_kernel_queued_packets_total", queue="tcp") >= 1
        # the blocked source keeps sending: the kernel drops it, and the drop counter moves
        dropped = total(after, "nfsentry_blocked_packets_total", family="4")
        assert attacker.connect(victim.ip4, OPEN_PORT, timeout=1.5) == "timeout"
        later = scrape(victim)
        assert total(later, "nfsentry_blocked_packets_total", family="4") > dropped
        # a block by hand counts under its own origin
        d.cli("block", "198.18.0.77", "--for", "10m")
        assert total(scrape(victim), "nfsentry_blocks_total", origin="manual") == 1
        # the textfile carries the same figures, rewritten every second
        wait_until(
            "the textfile's manual block", lambda: prom.exists() and 'nfsentry_blocks_total{origin="manual"} 1.0' in prom.read_text(), 30
        )
        assert 'nfsentry_detections_total{label="SYN",proto="tcp"}' in prom.read_text()
    finally:
        d.close()
    assert not prom.exists()  # a clean stop leaves no frozen figures behind


def test_a_taken_metrics_port_stops_start_up_before_the_kernel_is_touched(lab, tmp_path):
    victim = lab["victim"]
    holder = victim.tcp_service(9467)  # something else has the port
    try:
        d = Nfsentry(victim, tmp_path / "nfs", overrides={"metrics": {"listen": METRICS}})
        with pytest.raises(RuntimeError, match=r"\[metrics\] listen 127\.0\.0\.1:9467: Address already in use"):
            d.start(timeout=60)
        assert d.proc.returncode == 1
        assert "nfsentry" not in victim.nft("list tables").stdout  # nothing loaded
        d.close()
    finally:
        holder.kill()


@pytest.mark.parametrize("family", [4, 6])
def test_blocked_shows_each_blocked_sources_packets_growing(lab, tmp_path, family):
    """`blocked` reads the element counter of each block: a source that keeps sending after its
    block is seen sending (IPv4: an exact count of hping3 probes; IPv6: connection attempts)."""
    victim, attacker = lab["victim"], lab["attacker"]
    victim.tcp_service(OPEN_PORT)
    target, src = (victim.ip4, attacker.ip4) if family == 4 else (victim.ip6, attacker.ip6)
    d = Nfsentry(victim, tmp_path / "nfs")  # no daemon: the CLI loads the rules and blocks
    try:
        d.cli("rules", "load")
        d.cli("block", src, "--for", "1h")
        d.cli("block", "198.18.0.99", "--for", "1h")  # another block, which nobody uses

        def packets() -> dict[str, int | None]:
            return {r["network"]: r["packets"] for r in d.blocked()}

        start = packets()
        assert set(start) == {src, "198.18.0.99"} and start["198.18.0.99"] == 0 and start[src] is not None
        if family == 4:
            attacker.hping3(f"-S -p {OPEN_PORT} -c 20 -i u20000 {target}")
            first = packets()[src]
            assert first >= start[src] + 20
            attacker.hping3(f"-S -p {OPEN_PORT} -c 15 -i u20000 {target}")
            assert packets()[src] >= first + 15
        else:
            assert attacker.connect(target, OPEN_PORT, timeout=1.5) == "timeout"
            first = packets()[src]
            assert first >= 1
            assert attacker.connect(target, OPEN_PORT, timeout=1.5) == "timeout"
            assert packets()[src] > first
        assert packets()["198.18.0.99"] == 0
        human = d.cli("blocked", "-o", "human").stdout.splitlines()
        assert human[1].split()[:4] == ["address/prefix", "expires", "in", "packets"]
        row = next(ln.split() for ln in human if ln.startswith(src + " "))
        assert row[2] == str(packets()[src])
        tsv = d.cli("blocked", "-o", "tsv").stdout.splitlines()
        assert tsv[0].split("\t")[2] == "packets"
    finally:
        d.close()
