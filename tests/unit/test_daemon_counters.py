"""The daemon's counters: one dict per writing thread, summed for status; and the worker hands
what the main thread owns (the blocked count) over as a duty instead of writing it."""

from __future__ import annotations

import threading

from nfsentry.config import schema as C
from nfsentry.daemon import daemon as D
from nfsentry.daemon.counters import FTP, MAIN, NFLOG, WORKER, Counters


def test_each_thread_has_its_own_dict_and_status_sums_them():
    c = Counters()
    assert set(c.total()) == set(MAIN) | set(FTP) | set(WORKER) | set(NFLOG)
    c.main["errors"] += 1
    c.ftp["errors"] += 2
    c.worker["errors"] += 3
    c.ftp["ftp_packets"] += 5
    assert c["errors"] == 6 and c.total()["ftp_packets"] == 5 and c["queued"] == 0


def test_concurrent_writers_lose_no_increment():
    c = Counters()
    n = 200_000

    def bump(part):
        for _ in range(n):
            part["errors"] += 1

    threads = [threading.Thread(target=bump, args=(p,)) for p in (c.main, c.ftp, c.worker)]
    for t in threads:
        t.start()
    for t in threads:
        t.join()
    assert c["errors"] == 3 * n


def test_the_worker_hands_the_blocked_count_to_the_main_thread(monkeypatch):
    monkeypatch.setattr(D, "never_block_networks", lambda cfg: [])
    d = D.Daemon(C.defaults())
    d.build_core()

    class Nft:
        def blocked_count(self):
            return 7

    d.nft = Nft()
    d.verdicts.kernel_blocked = 3
    d.worker.refresh_blocked_count()
    assert d.verdicts.kernel_blocked == 3 and d.verdicts.pending  # not written from the worker
    d.service()
    assert d.verdicts.kernel_blocked == 7 and not d.verdicts.pending
    assert d.make_valves(d.cfg).blocked_count() == 7
