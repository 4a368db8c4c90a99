"""Prometheus metrics (issue 19): the figures a scrape and the node-exporter textfile carry, read
from a daemon's counters (nothing counted twice), and [metrics] validation."""

from __future__ import annotations

import collections
import socket
import time
import urllib.request
from types import SimpleNamespace

import pytest
from prometheus_client.parser import text_string_to_metric_families

from nfsentry.config import schema as C
from nfsentry.daemon import daemon as D
from nfsentry.daemon.counters import Counters
from nfsentry.daemon.metrics import Metrics, open_metrics


class FakeNft:
    def counters(self):
        return {"blocked_pkts4": 40, "blocked_pkts6": 6, "queued_tcp": 90, "queued_udp": 10, "queued_ftp": 3, "kernel_blocks": 7}

    def blocked_sizes(self):
        return {"blocked4": 3, "blocked6_64": 1, "blocked4net": 0}


def fake_daemon(metrics: dict, degraded=None):
    cfg = C.validate({"metrics": metrics}, read_files=False)
    c = Counters()
    c.main.update(queued=100, dropped_by_verdict=4, detections=12, blocks=9, blocks_manual=2, blocks_rate_limited=1, alerts_suppressed=2)
    c.main.update(kernel_blocks_withdrawn=1, errors=1)
    c.worker.update(storage_errors=3, blocks_expired=5, ruleset_restored=1)
    c.nflog.update(nflog_packets=8)
    c.detections_by.update({("SYN", "tcp"): 7, ("UDP", "udp"): 2, ("[bold]:smile:", "tcp"): 1})
    verdicts = SimpleNamespace(loop_samples=collections.deque([20e-6, 3e-3, 2.0]), block_latency=collections.deque([0.001, 0.002, 0.004]))
    return SimpleNamespace(
        cfg=cfg,
        counters=c,
        verdicts=verdicts,
        engine_stats={"tracked": 5, "evicted": 2, "badsum": 1},
        started=1_700_000_000.0,
        degraded=degraded,
        backend="compat",
        inuse="socket",
        adopted=2,
        engine_kind=lambda: "compiled",
    )


@pytest.fixture(autouse=True)
def no_proc(monkeypatch):
    monkeypatch.setattr(D, "queue_drops", lambda: {"queue0": {"waiting": 2, "queue_dropped": 11, "user_dropped": 1}})


def samples(text: str) -> dict[tuple, float]:
    out = {}
    for fam in text_string_to_metric_families(text):
        for s in fam.samples:
            out[(s.name, tuple(sorted(s.labels.items())))] = s.value
    return out


def test_textfile_carries_every_figure(tmp_path):
    path = tmp_path / "nfsentry.prom"
    m = Metrics(fake_daemon({"textfile": str(path)}), nft=FakeNft())
    m.write_textfile()
    got = samples(path.read_text())
    expect = {
        ("nfsentry_verdict_loop_packets_total", ()): 100,
        ("nfsentry_verdict_drops_total", ()): 4,
        ("nfsentry_detections_total", (("label", "SYN"), ("proto", "tcp"))): 7,
        ("nfsentry_detections_total", (("label", "UDP"), ("proto", "udp"))): 2,
        ("nfsentry_detections_total", (("label", "[bold]:smile:"), ("proto", "tcp"))): 1,
        ("nfsentry_alerts_suppressed_total", ()): 2,
        ("nfsentry_blocks_total", (("origin", "detection"),)): 7,  # blocks less the manual ones
        ("nfsentry_blocks_total", (("origin", "manual"),)): 2,
        ("nfsentry_blocks_total", (("origin", "kernel"),)): 2,
        ("nfsentry_blocks_refused_total", (("reason", "max_blocks_per_minute"),)): 1,
        ("nfsentry_kernel_side_blocks_total", ()): 7,
        ("nfsentry_kernel_side_blocks_withdrawn_total", ()): 1,
        ("nfsentry_blocked_entries", (("set", "blocked4"),)): 3,
        ("nfsentry_blocked_entries", (("set", "blocked6_64"),)): 1,
        ("nfsentry_blocked_packets_total", (("family", "4"),)): 40,
        ("nfsentry_blocked_packets_total", (("family", "6"),)): 6,
        ("nfsentry_kernel_queued_packets_total", (("queue", "tcp"),)): 90,
        ("nfsentry_kernel_queued_packets_total", (("queue", "ftp"),)): 3,
        ("nfsentry_queue_dropped_total", (("queue", "queue0"), ("reason", "queue_full"))): 11,
        ("nfsentry_queue_dropped_total", (("queue", "queue0"), ("reason", "user"))): 1,
        ("nfsentry_queue_waiting", (("queue", "queue0"),)): 2,
        ("nfsentry_block_commit_seconds", (("quantile", "0.5"),)): 0.002,
        ("nfsentry_block_commit_seconds", (("quantile", "1"),)): 0.004,
        ("nfsentry_errors_total", (("kind", "internal"),)): 1,
        ("nfsentry_errors_total", (("kind", "storage"),)): 3,
        ("nfsentry_blocks_expired_total", ()): 5,
        ("nfsentry_ruleset_restored_total", ()): 1,
        ("nfsentry_engine_tracked_sources", ()): 5,
        ("nfsentry_engine_evicted_sources_total", ()): 2,
        ("nfsentry_bad_checksums_total", ()): 1,
        ("nfsentry_before_input_packets_total", ()): 8,
        ("nfsentry_degraded", ()): 0,
        ("nfsentry_start_time_seconds", ()): 1_700_000_000.0,
        # the sampled loop times: 20 us, 3 ms, 2 s
        ("nfsentry_verdict_loop_packet_seconds_count", ()): 3,
        ("nfsentry_verdict_loop_packet_seconds_bucket", (("le", "2.5e-05"),)): 1,
        ("nfsentry_verdict_loop_packet_seconds_bucket", (("le", "0.005"),)): 2,
        ("nfsentry_verdict_loop_packet_seconds_bucket", (("le", "1.0"),)): 2,
        ("nfsentry_verdict_loop_packet_seconds_bucket", (("le", "+Inf"),)): 3,
    }
    for key, value in expect.items():
        assert got.get(key) == pytest.approx(value), (key, got.get(key))
    assert got[("nfsentry_verdict_loop_packet_seconds_sum", ())] == pytest.approx(2.00302)
    info = [k for k in got if k[0] == "nfsentry_info"]
    assert dict(info[0][1])["backend"] == "compat" and dict(info[0][1])["engine"] == "compiled"
    # the samples moved into the histogram once: the next write keeps them, adds none
    m.d.verdicts.loop_samples.append(50e-6)
    m.write_textfile()
    again = samples(path.read_text())
    assert again[("nfsentry_verdict_loop_packet_seconds_count", ())] == 4 and not m.d.verdicts.loop_samples
    assert not list(tmp_path.glob("nfsentry.prom.*"))  # the temporary file was renamed over it


def test_textfile_thread_writes_and_a_clean_stop_removes_the_file(tmp_path):
    path = tmp_path / "nfsentry.prom"
    d = fake_daemon({"textfile": str(path), "textfile_interval": "1s"})
    m = Metrics(d, nft=FakeNft())
    m.open()
    m.start()
    try:
        deadline = time.monotonic() + 30
        while not path.exists() and time.monotonic() < deadline:
            time.sleep(0.05)
        assert samples(path.read_text())[("nfsentry_blocks_total", (("origin", "manual"),))] == 2
        d.counters.main["blocks_manual"] += 1
        d.counters.main["blocks"] += 1
        while samples(path.read_text()).get(("nfsentry_blocks_total", (("origin", "manual"),))) != 3 and time.monotonic() < deadline:
            time.sleep(0.1)
        assert samples(path.read_text())[("nfsentry_blocks_total", (("origin", "manual"),))] == 3  # rewritten each interval
    finally:
        m.close()
    assert not path.exists()


def test_a_missing_textfile_directory_is_refused_before_anything_runs(tmp_path):
    d = fake_daemon({"textfile": str(tmp_path / "nope" / "n.prom")})
    with pytest.raises(ValueError, match=r"^\[metrics\] textfile .*nope/n.prom: directory .* missing or not writable$"):
        open_metrics(d)
    assert open_metrics(fake_daemon({})) is None  # off by default


def free_port() -> int:
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return s.getsockname()[1]


def test_endpoint_serves_the_same_figures_and_a_taken_port_is_one_line(tmp_path):
    port = free_port()
    m = open_metrics(fake_daemon({"listen": f"127.0.0.1:{port}"}))
    m.collector.nft = FakeNft()
    m.start()
    try:
        text = urllib.request.urlopen(f"http://127.0.0.1:{port}/metrics", timeout=10).read().decode()
        got = samples(text)
        assert got[("nfsentry_detections_total", (("label", "SYN"), ("proto", "tcp")))] == 7
        assert got[("nfsentry_blocked_packets_total", (("family", "4"),))] == 40
        with pytest.raises(OSError, match=rf"^\[metrics\] listen 127.0.0.1:{port}: .*in use"):
            open_metrics(fake_daemon({"listen": f"127.0.0.1:{port}"}))
    finally:
        m.close()


@pytest.mark.parametrize(
    "section, message",
    [
        ({"listen": "localhost:9467"}, "[metrics] listen: 'localhost:9467' is not ADDRESS:PORT"),
        ({"listen": "127.0.0.1"}, "[metrics] listen: '127.0.0.1' is not ADDRESS:PORT"),
        ({"listen": "127.0.0.1:70000"}, "[metrics] listen: port 70000 outside 1-65535"),
        ({"listen": "300.0.0.1:9467"}, "[metrics] listen: '300.0.0.1' is not an IP address"),
        ({"listen": "::1:9467"}, "[metrics] listen: '::1:9467' is not ADDRESS:PORT"),
        ({"textfile": "nfsentry.prom"}, "[metrics] textfile: 'nfsentry.prom' must be an absolute path ending in .prom"),
        ({"textfile": "/tmp/nfsentry.txt"}, "[metrics] textfile: '/tmp/nfsentry.txt' must be an absolute path ending in .prom"),
        ({"textfile_interval": "0"}, "[metrics] textfile_interval: must be between 1s and 1h"),
        ({"textfile_interval": "2h"}, "[metrics] textfile_interval: must be between 1s and 1h"),
        ({"listen": 9467}, "[metrics] listen: expected a string, got 9467"),
        ({"port": 9467}, "[metrics] unknown key 'port'"),
    ],
)
def test_metrics_configuration_is_validated_in_one_line(section, message):
    with pytest.raises(C.ConfigError) as e:
        C.validate({"metrics": section}, read_files=False)
    assert str(e.value).startswith(message) and "\n" not in str(e.value)


def test_metrics_configuration_accepts_addresses_and_needs_a_restart_to_move():
    assert C.parse_listen("[::1]:9467") == ("::1", 9467) and C.parse_listen("127.0.0.1:9467") == ("127.0.0.1", 9467)
    old = C.validate({}, read_files=False)
    new = C.validate({"metrics": {"listen": "127.0.0.1:9467", "textfile_interval": "30s"}}, read_files=False)
    assert D.restart_only_changes(old, new) == ["metrics.listen"]


def test_the_grafana_dashboard_draws_only_metrics_that_exist():
    import json
    import re
    from pathlib import Path

    dash = json.loads((Path(__file__).resolve().parents[2] / "examples" / "grafana-nfsentry.json").read_text())
    exprs = [t["expr"] for p in dash["panels"] for t in p.get("targets", [])]
    exprs.append(dash["templating"]["list"][1]["definition"])
    used = {m for e in exprs for m in re.findall(r"\b(nfsentry_[a-z0-9_]+)", e)}
    m = Metrics(fake_daemon({}), nft=FakeNft())
    from prometheus_client import generate_latest

    exposed = {s.name for f in text_string_to_metric_families(generate_latest(m.registry).decode()) for s in f.samples}
    assert used and used <= exposed, used - exposed
    # every metric family is drawn somewhere (histogram and info samples by their family)
    families = {f.name for f in text_string_to_metric_families(generate_latest(m.registry).decode())}
    drawn = {re.sub(r"_(total|bucket|count|sum)$", "", u) for u in used}
    missing = (
        families
        - drawn
        - {
            "nfsentry_info",
            "nfsentry_start_time_seconds",
            "nfsentry_ruleset_restored",
            "nfsentry_blocks_expired",
            "nfsentry_bad_checksums",
            "nfsentry_before_input_packets",
            "nfsentry_verdict_drops",
            "nfsentry_queue_waiting",
        }
    )
    assert not missing, missing
