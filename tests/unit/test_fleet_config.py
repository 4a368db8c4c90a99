"""[fleet] (issue 18): off by default, every key validated with one line naming it, secrets never
printed; `fleet status` without a daemon reads the database and says whether the LAPI answers."""

from __future__ import annotations

import json

import pytest
from typer.testing import CliRunner

from nfsentry.cli import app as A
from nfsentry.config import schema as C
from nfsentry.config.schema import ConfigError
from nfsentry.ledger.ledger import Ledger, block_event
from nfsentry.sinks.store import Store

GOOD = {"enabled": True, "url": "http://198.18.0.100:8080", "machine_id": "web1", "password": "pw", "api_key": "k"}


def test_a_tls_client_certificate_stands_for_password_and_api_key():
    tls = {**GOOD, "url": "https://198.18.0.100:8080", "password": "", "api_key": "", "cert": "/c.pem", "key": "/k.pem", "ca": "/ca.pem"}
    cfg = C.validate({"fleet": tls}, read_files=False)
    assert cfg["fleet"]["cert"] == "/c.pem" and cfg["fleet"]["machine_id"] == GOOD["machine_id"]


def test_off_by_default_and_a_good_section_loads():
    assert C.defaults()["fleet"]["enabled"] is False
    cfg = C.validate({"fleet": {**GOOD, "pull_interval": "100ms"}}, read_files=False)
    assert cfg.durations["pull_interval"] == 0.1 and cfg["fleet"]["scenario"] == "nfsentry/portscan"
    eff = cfg.effective()["fleet"]
    assert eff["password"] == "(set)" and eff["api_key"] == "(set)"


@pytest.mark.parametrize(
    ("fleet", "message"),
    [
        ({"url": "198.18.0.100:8080"}, r"^\[fleet\] url: '198.18.0.100:8080' is not a LAPI URL"),
        ({"url": "ftp://198.18.0.100"}, r"^\[fleet\] url:"),
        ({"password": ""}, r"^\[fleet\] machine_id: push needs machine_id and password"),
        ({"api_key": ""}, r"^\[fleet\] api_key: pull needs a bouncer api_key"),
        ({"push": False, "pull": False}, r"^\[fleet\] enabled: push and pull are both off"),
        ({"pull_interval": "5ms"}, r"^\[fleet\] pull_interval: must be between 10ms and 1h"),
        ({"pull_interval": "soon"}, r"^\[fleet\] pull_interval: bad duration"),
        ({"min_prefix4": 33}, r"^\[fleet\] min_prefix4: 33 outside 1-32"),
        ({"min_prefix6": 0}, r"^\[fleet\] min_prefix6: 0 outside 1-128"),
        ({"max_pulled": -1}, r"^\[fleet\] max_pulled: -1 outside"),
        ({"cert": "/etc/c.pem"}, r"^\[fleet\] cert: a TLS client certificate needs both cert and key"),
        ({"cert": "c.pem", "key": "/k"}, r"^\[fleet\] cert: 'c.pem' must be an absolute path"),
        ({"cert": "/c.pem", "key": "/k.pem"}, r"^\[fleet\] cert: a TLS client certificate needs an https url"),
        (
            {"url": "https://198.18.0.100:8080", "password": "", "api_key": "", "cert": "/c.pem", "key": "/k.pem", "machine_id": ""},
            r"^\[fleet\] machine_id: push needs machine_id and password \(or machine_id, cert and key\)",
        ),
        ({"machine_id": "a b"}, r"^\[fleet\] machine_id: bad machine name"),
        ({"scenario": "x y"}, r"^\[fleet\] scenario: bad scenario name"),
        ({"pull_interval": True}, r"^\[fleet\] pull_interval: expected a duration"),
        ({"urll": "x"}, r"^\[fleet\] unknown key 'urll' \(did you mean 'url'\?\)"),
    ],
)
def test_bad_keys_are_one_line_naming_the_key(fleet, message):
    with pytest.raises(ConfigError, match=message) as e:
        C.validate({"fleet": {**GOOD, **fleet}}, read_files=False)
    assert "\n" not in str(e.value)


def test_fleet_status_without_a_daemon_reads_the_database(tmp_path):
    state = tmp_path / "state"
    conf = tmp_path / "c.toml"
    conf.write_text(
        f'[storage]\nstate_dir = "{state}"\n[daemon]\ncontrol_socket = "{tmp_path}/c.sock"\n'
        '[fleet]\nenabled = true\nurl = "http://127.0.0.1:9"\nmachine_id = "h1"\npassword = "pw"\napi_key = "k"\ntimeout = "1s"\n'
    )
    store = Store(state / "nfsentry.db")
    store.fleet_push = True
    import time

    now = time.time()
    Ledger.persist(store, "block", block_event("198.18.0.7", 600, "x", "manual", now))
    store.fleet_put(
        [{"network": "198.18.0.9", "expires": now + 60, "created": now, "decision_id": 4, "origin": "nfsentry/h2", "machine": "h2"}]
    )
    store.close()
    res = CliRunner().invoke(A.app, ["fleet", "status", "-o", "json", "--config", str(conf)])
    st = json.loads(res.stdout)
    assert st["running"] is False and st["outbox"] == 1 and st["pulled"]["in_force"] == 1
    assert st["reachable"] is False and res.exit_code == 1  # nothing listens on port 9
    res = CliRunner().invoke(A.app, ["fleet", "status", "--config", str(conf)])
    assert "UNREACHABLE (daemon not running)" in res.stdout and "outbox:       1 block(s) waiting" in res.stdout
