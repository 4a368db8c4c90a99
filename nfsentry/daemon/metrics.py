"""Prometheus metrics (``[metrics]``, off by default), with ``prometheus_client``.

Served at ``http://[metrics] listen/metrics`` (the ``nfsentry-metrics`` thread) and/or written to a
node-exporter textfile every ``textfile_interval`` (the ``nfsentry-textfile`` thread, atomically:
a temporary file renamed over it; removed on a clean stop so a stopped daemon leaves no frozen
figures behind).

Nothing is counted twice and nothing here runs on the packet thread: a scrape (or a textfile
write) reads what the daemon keeps anyway, on the scraping thread: the per-thread counters
(:mod:`counters`; detections by label and protocol are the worker's breakdown of what it
reports), the engine's stats snapshot, the kernel's named counters and set sizes through a
libnftables session of its own (a slow listing of a big set never holds the daemon's session
lock), and ``/proc/net/netfilter/nfnetlink_queue``. The verdict loop's latency is sampled there
(``Verdicts.loop_samples``: the packet in hand when the main thread's duties are due, about one a
second under load) and the samples are moved into a histogram here.

Metric names (all ``nfsentry_*``; ``examples/grafana-nfsentry.json`` draws them):

- ``info{version,backend,inuse,mode,engine}`` 1; ``start_time_seconds``; ``degraded`` 0/1
- ``verdict_loop_packets_total``: packets the scan verdict loop took;
  ``verdict_drops_total``: of them dropped by verdict (a blocked source still in the queue)
- ``verdict_loop_packet_seconds``: histogram of the sampled per-packet time (callback to verdict
  and reaction done)
- ``detections_total{label,proto}``: detections reported; ``alerts_suppressed_total``,
  ``events_lost_total``: detections counted but not reported one by one
- ``blocks_total{origin}``: blocks made: ``detection`` (the packet path), ``manual`` (``nfsentry
  block`` through the daemon), ``kernel`` (entries found in the kernel at start-up and adopted)
- ``blocks_refused_total{reason}``: ``max_blocks_per_minute``, ``max_blocked``, ``never_block``
- ``kernel_side_blocks_total``, ``kernel_side_blocks_withdrawn_total``: first probes the kernel
  blocked itself, and those the daemon withdrew
- ``blocked_entries{set}``: entries in each blocked set now
- ``blocked_packets_total{family}``: packets from blocked sources the kernel dropped (named
  counters ``blocked_pkts4``/``blocked_pkts6``)
- ``kernel_queued_packets_total{queue}``: packets the rules queued (``tcp``, ``udp``, ``ftp``)
- ``queue_dropped_total{queue,reason}``: packets the kernel could not queue (``queue_full``) or
  the daemon's socket could not take (``user``); ``queue_waiting{queue}``: packets awaiting a verdict
- ``block_commit_seconds{quantile}``: decision to set element committed, median and max of the
  last 256 blocks
- ``errors_total{kind}``: ``internal``, ``storage``; ``blocks_expired_total``;
  ``ruleset_restored_total``; ``engine_tracked_sources``; ``engine_evicted_sources_total``;
  ``bad_checksums_total``; ``before_input_packets_total``
"""

from __future__ import annotations

import logging
import os
import socket
import threading
from collections.abc import Iterator
from pathlib import Path
from typing import Any
from wsgiref.simple_server import WSGIRequestHandler, make_server

from prometheus_client import CollectorRegistry, write_to_textfile
from prometheus_client.core import CounterMetricFamily, GaugeMetricFamily, HistogramMetricFamily, Metric
from prometheus_client.exposition import ThreadingWSGIServer, make_wsgi_app

from nfsentry import __version__
from nfsentry.config.schema import parse_listen
from nfsentry.core.events import latency_summary

log = logging.getLogger("nfsentry")

# seconds; a queued packet takes ~2-20 us in the loop, a reaction (an nft transaction) ~1 ms
BUCKETS = (10e-6, 25e-6, 50e-6, 100e-6, 250e-6, 500e-6, 1e-3, 2.5e-3, 5e-3, 10e-3, 25e-3, 100e-3, 1.0)


class Histogram:
    """Cumulative bucket counts and sum of the samples moved in so far (under the collector's lock)."""

    def __init__(self, buckets: tuple[float, ...] = BUCKETS) -> None:
        self.bounds = buckets
        self.counts = [0] * (len(buckets) + 1)  # the last: above every bound
        self.sum = 0.0

    def observe(self, v: float) -> None:
        for i, b in enumerate(self.bounds):
            if v <= b:
                self.counts[i] += 1
                break
        else:
            self.counts[-1] += 1
        self.sum += v

    def family(self, name: str, doc: str) -> HistogramMetricFamily:
        cum, out = 0, []
        for b, n in zip([*(repr(float(b)) for b in self.bounds), "+Inf"], self.counts):
            cum += n
            out.append((b, cum))
        return HistogramMetricFamily(name, doc, buckets=out, sum_value=self.sum)


class DaemonCollector:
    """Reads the daemon's figures at each collection (a scrape or a textfile write)."""

    def __init__(self, daemon: Any, nft: Any = None) -> None:
        self.d = daemon
        self.nft = nft  # a libnftables session of the metrics' own (None: made on first use)
        self.loop = Histogram()
        self.lock = threading.Lock()

    def _kernel(self) -> tuple[dict[str, int], dict[str, int]]:
        """(named counters, blocked set sizes); empty when the table cannot be read."""
        try:
            if self.nft is None:
                from nfsentry import nft as N

                self.nft = N.Nft(table=self.d.cfg["nft"]["table"])
            return self.nft.counters(), self.nft.blocked_sizes()
        except Exception as e:  # table gone (the worker puts it back), bindings missing: no kernel figures
            log.debug("metrics: cannot read the kernel's counters: %s", e)
            return {}, {}

    def collect(self) -> Iterator[Metric]:
        with self.lock:
            return iter(list(self._families()))

    def _families(self) -> Iterator[Metric]:
        from nfsentry.daemon.daemon import queue_drops

        d = self.d
        c = d.counters.total()
        by_label = dict(d.counters.detections_by)
        samples = d.verdicts.loop_samples
        while samples:
            self.loop.observe(samples.popleft())
        eng = d.engine_stats or {}
        kc, sizes = self._kernel()

        def counter(name: str, doc: str, value: float | None = None, labels: list[str] | None = None, rows: Any = ()) -> Metric:
            m = CounterMetricFamily(name, doc, value=value, labels=labels)
            for key, v in rows:
                m.add_metric(list(key), v)
            return m

        def gauge(name: str, doc: str, value: float | None = None, labels: list[str] | None = None, rows: Any = ()) -> Metric:
            m = GaugeMetricFamily(name, doc, value=value, labels=labels)
            for key, v in rows:
                m.add_metric(list(key), v)
            return m

        info = [(getattr(d, "backend", None) or "-", getattr(d, "inuse", None) or "-", d.cfg["monitor"]["mode"], d.engine_kind())]
        yield gauge(
            "nfsentry_info",
            "the running daemon",
            labels=["version", "backend", "inuse", "mode", "engine"],
            rows=[((__version__, *info[0]), 1)],
        )
        yield gauge("nfsentry_start_time_seconds", "when the daemon started (epoch seconds)", d.started)
        yield gauge("nfsentry_degraded", "1 when protection is not what it should be (see nfsentry status)", 1 if d.degraded else 0)
        yield counter("nfsentry_verdict_loop_packets", "packets the scan verdict loop took from the queue", c["queued"])
        yield counter(
            "nfsentry_verdict_drops", "queued packets dropped by verdict (a blocked source still in the queue)", c["dropped_by_verdict"]
        )
        yield self.loop.family(
            "nfsentry_verdict_loop_packet_seconds",
            "time from a packet's callback to its verdict and reaction done (sampled, ~1/s under load)",
        )
        yield counter(
            "nfsentry_detections",
            "detections reported, by scan label and protocol",
            labels=["label", "proto"],
            rows=sorted(by_label.items()),
        )
        yield counter(
            "nfsentry_alerts_suppressed",
            "detections refused a block and not reported one by one (over 60 a minute)",
            c["alerts_suppressed"],
        )
        yield counter("nfsentry_events_lost", "events lost because the worker's queue was full", c["events_lost"])
        origins = [
            (("detection",), c["blocks"] - c["blocks_manual"]),
            (("manual",), c["blocks_manual"]),
            (("kernel",), getattr(d, "adopted", 0)),
        ]
        yield counter("nfsentry_blocks", "blocks made, by origin", labels=["origin"], rows=origins)
        refused = [
            (("max_blocks_per_minute",), c["blocks_rate_limited"]),
            (("max_blocked",), c["blocks_capped"]),
            (("never_block",), c["never_block_refused"]),
        ]
        yield counter("nfsentry_blocks_refused", "blocks refused by a safety valve", labels=["reason"], rows=refused)
        yield counter("nfsentry_kernel_side_blocks", "first probes whose source the kernel blocked itself", kc.get("kernel_blocks", 0))
        yield counter("nfsentry_kernel_side_blocks_withdrawn", "kernel-side blocks the daemon withdrew", c["kernel_blocks_withdrawn"])
        yield gauge(
            "nfsentry_blocked_entries",
            "entries in each blocked set now",
            labels=["set"],
            rows=[((k,), v) for k, v in sorted(sizes.items())],
        )
        dropped = [((fam,), kc[f"blocked_pkts{fam}"]) for fam in ("4", "6") if f"blocked_pkts{fam}" in kc]
        yield counter("nfsentry_blocked_packets", "packets from blocked sources the kernel dropped", labels=["family"], rows=dropped)
        queued = [((q,), kc[f"queued_{q}"]) for q in ("tcp", "udp", "ftp") if f"queued_{q}" in kc]
        yield counter("nfsentry_kernel_queued_packets", "packets the rules handed to a queue", labels=["queue"], rows=queued)
        qd = queue_drops()
        rows = [((q, "queue_full"), v["queue_dropped"]) for q, v in sorted(qd.items())] + [
            ((q, "user"), v["user_dropped"]) for q, v in sorted(qd.items())
        ]
        yield counter(
            "nfsentry_queue_dropped",
            "packets the kernel could not queue (queue_full) or deliver (user)",
            labels=["queue", "reason"],
            rows=rows,
        )
        yield gauge(
            "nfsentry_queue_waiting",
            "packets waiting for a verdict",
            labels=["queue"],
            rows=[((q,), v["waiting"]) for q, v in sorted(qd.items())],
        )
        lat = latency_summary(d.verdicts.block_latency)
        rows = [(("0.5",), lat["median"] / 1000), (("1",), lat["max"] / 1000)] if lat.get("n") else []
        yield gauge(
            "nfsentry_block_commit_seconds", "decision to set element committed, over the last 256 blocks", labels=["quantile"], rows=rows
        )
        yield counter(
            "nfsentry_errors", "errors", labels=["kind"], rows=[(("internal",), c["errors"]), (("storage",), c["storage_errors"])]
        )
        yield counter("nfsentry_blocks_expired", "blocks the kernel timed out", c["blocks_expired"])
        yield counter("nfsentry_ruleset_restored", "times the table was removed outside nfsentry and loaded again", c["ruleset_restored"])
        yield gauge("nfsentry_engine_tracked_sources", "sources the engine tracks now", eng.get("tracked", 0))
        yield counter("nfsentry_engine_evicted_sources", "sources evicted at max_sources", eng.get("evicted", 0))
        yield counter("nfsentry_bad_checksums", "probes with a bad TCP/UDP checksum (counted, never reacted to)", eng.get("badsum", 0))
        yield counter("nfsentry_before_input_packets", "packets the rules logged before the input hook (NFLOG)", c["nflog_packets"])


class _Quiet(WSGIRequestHandler):
    def log_message(self, format: str, *args: Any) -> None:
        pass


class Metrics:
    """The registry, the HTTP endpoint and the textfile writer of one daemon."""

    def __init__(self, daemon: Any, nft: Any = None) -> None:
        self.d = daemon
        self.registry = CollectorRegistry(auto_describe=False)
        self.collector = DaemonCollector(daemon, nft)
        self.registry.register(self.collector)  # type: ignore[arg-type]
        self.httpd: Any = None
        self.textfile = daemon.cfg["metrics"]["textfile"] or None
        self._stop = threading.Event()
        self._threads: list[threading.Thread] = []
        self._write_problem: str | None = None

    # -- start / stop -------------------------------------------------------------------------------
    def open(self) -> None:
        """Bind the endpoint and check the textfile's directory; raise OSError/ValueError with one
        line naming the key (the caller turns it into a start-up error, before the kernel is touched)."""
        m = self.d.cfg["metrics"]
        if m["listen"]:
            addr, port = parse_listen(m["listen"])

            class Server(ThreadingWSGIServer):
                address_family = socket.AF_INET6 if ":" in addr else socket.AF_INET

            try:
                self.httpd = make_server(addr, port, make_wsgi_app(self.registry), Server, handler_class=_Quiet)
            except OSError as e:
                raise OSError(f"[metrics] listen {m['listen']}: {e.strerror or e}") from None
        if self.textfile:
            parent = Path(self.textfile).parent
            if not parent.is_dir() or not os.access(parent, os.W_OK):
                raise ValueError(f"[metrics] textfile {self.textfile}: directory {parent} is missing or not writable")

    def start(self) -> None:
        if self.httpd is not None:
            self._threads.append(threading.Thread(target=self.httpd.serve_forever, name="nfsentry-metrics", daemon=True))
        if self.textfile:
            self._threads.append(threading.Thread(target=self._textfile_loop, name="nfsentry-textfile", daemon=True))
        for t in self._threads:
            t.start()

    def close(self) -> None:
        self._stop.set()
        if self.httpd is not None:
            self.httpd.shutdown()
            self.httpd.server_close()
        for t in self._threads:
            t.join(timeout=5)
        if self.textfile:
            try:
                os.unlink(self.textfile)
            except OSError:
                pass

    # -- the textfile -------------------------------------------------------------------------------
    def write_textfile(self) -> None:
        """Write the metrics to the textfile now (a temporary file in its directory, renamed over it)."""
        assert self.textfile
        write_to_textfile(self.textfile, self.registry)

    def _textfile_loop(self) -> None:
        while not self._stop.is_set():
            try:
                self.write_textfile()
                self._write_problem = None
            except Exception as e:  # a full disk, a removed directory: logged once each, retried
                msg = f"[metrics] textfile {self.textfile}: {e}"
                if msg != self._write_problem:
                    self._write_problem = msg
                    log.error("cannot write the metrics: %s (retrying every %gs)", msg, self.interval())
            self._stop.wait(self.interval())

    def interval(self) -> float:
        return float(self.d.cfg.durations.get("textfile_interval", 15.0))


def open_metrics(daemon: Any) -> Metrics | None:
    """The daemon's metrics per ``[metrics]``, bound (``start()`` serves them); None when off."""
    m = daemon.cfg["metrics"]
    if not m["listen"] and not m["textfile"]:
        return None
    metrics = Metrics(daemon)
    metrics.open()
    return metrics


def scrape(metrics: Metrics) -> bytes:
    """The exposition text now (tests, debugging)."""
    from prometheus_client import generate_latest

    return generate_latest(metrics.registry)


__all__ = ["Metrics", "DaemonCollector", "Histogram", "open_metrics", "scrape", "BUCKETS"]
