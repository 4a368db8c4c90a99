"""Fleet push (issue 18): the outbox. Every block the ledger records (but a pulled one) is queued
in the same database; the fleet thread's push delivers it to a LAPI stand-in (a small HTTP server
in the test) in order, renews its token on 401, keeps everything through an outage and a restart,
and never sends a block twice."""

from __future__ import annotations

import json
import threading
import time
from http.server import BaseHTTPRequestHandler, ThreadingHTTPServer
from types import SimpleNamespace

import pytest

from nfsentry.config import schema as C
from nfsentry.daemon.fleet import Fleet
from nfsentry.ledger.ledger import Ledger, block_event
from nfsentry.sinks.store import Store


class Lapi(BaseHTTPRequestHandler):
    """POST /v1/watchers/login and /v1/alerts as the real LAPI answers them."""

    def log_message(self, *a):
        pass

    def do_POST(self):
        srv = self.server
        body = json.loads(self.rfile.read(int(self.headers["Content-Length"])))
        if srv.down:
            return self._send(503, {"message": "down"})
        if self.path == "/v1/watchers/login":
            if body.get("password") != "pw" or not self.headers["User-Agent"].count("/"):
                return self._send(401, {"message": "incorrect Username or Password"})
            srv.tokens += 1
            return self._send(200, {"token": f"t{srv.tokens}", "expire": "x"})
        if self.path == "/v1/alerts":
            if self.headers.get("Authorization") != f"Bearer t{srv.tokens}" or srv.expire_next:
                srv.expire_next = False
                return self._send(401, {"message": "token expired"})
            srv.alerts += body
            return self._send(201, [str(len(srv.alerts) - i) for i in range(len(body))])
        self._send(404, {})

    def _send(self, code, obj):
        data = json.dumps(obj).encode()
        self.send_response(code)
        self.send_header("Content-Length", str(len(data)))
        self.end_headers()
        self.wfile.write(data)


@pytest.fixture()
def lapi():
    srv = ThreadingHTTPServer(("127.0.0.1", 0), Lapi)
    srv.down, srv.tokens, srv.alerts, srv.expire_next = False, 0, [], False
    t = threading.Thread(target=srv.serve_forever, daemon=True)
    t.start()
    yield srv
    srv.shutdown()
    srv.server_close()


def fleet_for(tmp_path, port):
    cfg = C.validate(
        {
            "storage": {"state_dir": str(tmp_path)},
            "fleet": {"enabled": True, "url": f"http://127.0.0.1:{port}", "machine_id": "h1", "password": "pw", "pull": False},
        },
        read_files=False,
    )
    f = Fleet(SimpleNamespace(cfg=cfg, nft=None))
    f.store = Store(cfg.db_path)
    return cfg, f


def record_blocks(cfg, nets, origin="manual"):
    store = Store(cfg.db_path)
    store.fleet_push = True
    now = time.time()
    for n in nets:
        Ledger.persist(store, "block", block_event(n, 3600, "test", origin, now))
    store.close()


def test_outbox_in_order_through_outage_token_renewal_and_restart(tmp_path, lapi):
    cfg, f = fleet_for(tmp_path, lapi.server_port)
    record_blocks(cfg, ["198.18.0.1", "198.18.0.2"])
    record_blocks(cfg, ["198.18.0.9"], origin="fleet")  # a pulled block is never pushed back
    assert f.store.outbox_depth() == 2
    lapi.down = True  # the LAPI is down: nothing leaves the outbox
    f.push_pending()
    assert f.store.outbox_depth() == 2 and f.reachable is False and lapi.alerts == []
    # a restart meanwhile: more blocks queue behind, a new fleet thread on the same database
    f.store.close()
    record_blocks(cfg, ["198.18.0.3"] + [f"198.18.1.{i}" for i in range(150)])
    cfg, f = fleet_for(tmp_path, lapi.server_port)
    lapi.down = False
    f.push_pending()
    sent = [a["decisions"][0]["value"] for a in lapi.alerts]
    assert sent == ["198.18.0.1", "198.18.0.2", "198.18.0.3"] + [f"198.18.1.{i}" for i in range(150)]  # in order, once each
    assert f.store.outbox_depth() == 0 and f.reachable is True and f.counts["pushed"] == 153
    assert all(a["decisions"][0]["origin"] == "nfsentry/h1" and a["scenario"] == "nfsentry/portscan" for a in lapi.alerts)
    # the token expires: logged in again once, the block delivered, nothing twice
    lapi.expire_next = True
    record_blocks(cfg, ["198.18.0.4"])
    f.push_pending()
    assert lapi.tokens == 2 and [a["decisions"][0]["value"] for a in lapi.alerts[-1:]] == ["198.18.0.4"] and len(lapi.alerts) == 154
    f.push_pending()
    assert len(lapi.alerts) == 154


def test_a_block_whose_time_ran_out_is_not_pushed(tmp_path, lapi):
    cfg, f = fleet_for(tmp_path, lapi.server_port)
    store = Store(cfg.db_path)
    store.fleet_push = True
    Ledger.persist(store, "block", block_event("198.18.0.5", 1, "short", "manual", time.time() - 10))
    store.close()
    f.push_pending()
    assert lapi.alerts == [] and f.store.outbox_depth() == 0 and f.counts["push_expired"] == 1


class StreamStandIn:
    """The bouncer side of a LAPI: answers stream() from a script, records startup flags."""

    def __init__(self, answers):
        self.answers, self.calls = list(answers), []

    def stream(self, startup=False):
        self.calls.append(startup)
        return self.answers.pop(0) if self.answers else {"new": None, "deleted": None}


def test_pull_resyncs_at_start_and_again_once_new_decisions_stop_coming(tmp_path, monkeypatch):
    """The LAPI 1.4.6 may commit a decision after a delta taken since it was stamped: that delta
    never lists it. A delta that brings new decisions is followed by a full resync (startup=true)
    once they stop coming, which brings the missed ones in."""
    from test_fleet_state import FakeFleetSets

    from nfsentry.ledger.fleet import FleetGuard, FleetLedger

    cfg, f = fleet_for(tmp_path, 9)
    clock = [1000.0]
    monkeypatch.setattr("nfsentry.daemon.fleet.time.monotonic", lambda: clock[0])
    nft = FakeFleetSets(type("C", (), {"t": property(lambda self: time.time())})())
    f.ledger = FleetLedger(nft, f.store, FleetGuard([]))
    one = {"id": 1, "value": "198.18.0.1", "duration": "1h", "scope": "Ip", "origin": "cscli", "type": "ban"}
    two = {**one, "id": 2, "value": "198.18.0.2"}
    f.lapi = StreamStandIn([{"new": []}, {"new": [one]}, {"new": None}, {"new": [one, two]}])
    f.pull()  # the first pull: a full resync
    f.pull()  # a delta with a new decision (its neighbour, committed late, is not in it)
    clock[0] += 0.1
    f.pull()  # nothing new; the resync waits for 0.5 s of quiet and 2 s after the last one
    clock[0] += 2.0
    f.pull()  # the resync: the late one comes in
    assert f.lapi.calls == [True, False, False, True]
    assert set(nft.sets) == {"198.18.0.1", "198.18.0.2"}
    clock[0] += 10
    f.pull()
    assert f.lapi.calls[-1] is False  # no new decisions since: deltas again
