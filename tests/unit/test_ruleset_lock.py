"""`rules unload --force` against the worker's watchers (issue 14, run 3 of the busy evidence).

The worker checks every second that the table is there and that table netdev hooks every
interface. While the main thread was unloading for the admin, the worker could see the netdev
table (or the inet table) gone before ``unloaded_by_admin`` was set, and load it straight back: the
admin's unload silently undone. The daemon's ``ruleset_lock`` makes the unload and each watcher's
check-and-act exclusive; this test parks the unload halfway and runs both watchers meanwhile.
"""

from __future__ import annotations

import threading

from test_reliability_unit import FakeNft, make_daemon


class UnloadingNft(FakeNft):
    """The kernel side, with an unload that stops halfway (inet table gone, netdev table still
    there) until the test lets it finish."""

    def __init__(self) -> None:
        super().__init__()
        self.inet = self.netdev = True
        self.halfway, self.finish = threading.Event(), threading.Event()
        self.reloads: list[str] = []
        self.ingress_error = None
        self.table = "nfsentry"

    def loaded(self) -> bool:
        return self.inet

    def unload(self) -> None:
        self.inet = False
        self.halfway.set()
        assert self.finish.wait(30), "the test never let the unload finish"
        self.netdev = False

    def load(self, spec, backend=None) -> dict:
        self.reloads.append("inet")
        self.inet = True
        return {}

    def sync_ingress(self, devices=None, spec=None) -> bool:
        if self.netdev and self.inet:
            return False
        self.reloads.append("netdev")
        self.netdev = True
        return True

    def ingress_listed(self):
        return {"eth0"} if self.netdev else None


def test_a_forced_unload_is_never_undone_by_the_worker_watching_meanwhile(tmp_path):
    d = make_daemon(tmp_path, monitor={"before_input": True})
    nft = UnloadingNft()
    d.use_nft(nft)
    replies: list[dict] = []
    unload = threading.Thread(target=lambda: replies.append(d.commands.execute({"cmd": "unload"})))
    unload.start()
    assert nft.halfway.wait(30)
    # the worker's duties run while the unload is halfway
    watchers = threading.Thread(target=lambda: (d.worker.watch_ruleset(), d.worker.watch_interfaces()))
    watchers.start()
    watchers.join(0.3)  # without the lock they would be done (and would have reloaded) by now
    nft.finish.set()
    unload.join(30)
    watchers.join(30)
    assert not unload.is_alive() and not watchers.is_alive()
    assert replies == [{"ok": True, "table": "nfsentry"}]
    assert nft.reloads == [], f"the worker put back what the admin unloaded: {nft.reloads}"
    assert not nft.inet and not nft.netdev and d.unloaded_by_admin and d.degraded
    # once the admin loads it again (another process), the watcher takes it back up
    nft.inet = True
    d.worker.watch_ruleset()
    assert not d.unloaded_by_admin and d.degraded is None
