"""A CrowdSec Local API client: the standard library's http.client, one kept-alive connection.

As a watcher (machine login/password, or a TLS client certificate): ``POST /v1/watchers/login``
for a token (renewed on 401), ``POST /v1/alerts`` (a list of alerts carrying their decisions),
``DELETE /v1/decisions?ip=|range=``. As a bouncer (``X-Api-Key``): ``GET
/v1/decisions/stream[?startup=true]``. Not thread-safe: one object per thread.
"""

from __future__ import annotations

import http.client
import ipaddress
import json
import math
import ssl
import time
import urllib.parse
from typing import Any

# The LAPI refuses a watcher login whose User-Agent is not NAME/VERSION ("bad user agent").
USER_AGENT = "nfsentry/0.1"
FOREVER_S = 10 * 365 * 86400  # a permanent block pushed as ten years (a decision needs a duration)


class LapiError(Exception):
    """The LAPI could not be reached or refused a request; str() is one line. ``status``: the
    HTTP status (0: no answer)."""

    def __init__(self, msg: str, status: int = 0) -> None:
        super().__init__(msg)
        self.status = status


class Lapi:
    def __init__(
        self,
        url: str,
        machine_id: str = "",
        password: str = "",
        api_key: str = "",
        scenarios: list[str] | None = None,
        timeout: float = 5.0,
        cert: str = "",
        key: str = "",
        ca: str = "",
    ) -> None:
        u = urllib.parse.urlsplit(url)
        if u.scheme not in ("http", "https") or not u.hostname:
            raise LapiError(f"bad LAPI url {url!r}")
        self.url = url.rstrip("/")
        self.https = u.scheme == "https"
        self.host, self.port = u.hostname, u.port or (443 if self.https else 80)
        self.machine_id, self.password, self.api_key = machine_id, password, api_key
        self.scenarios = scenarios or []
        self.timeout = timeout
        self.cert, self.key, self.ca = cert, key, ca
        self.token: str | None = None
        self.token_expires = 0.0
        self.logins = 0
        self.requests = 0
        self.last_times = (0.0, 0.0)  # the last request's (answer read, JSON parsed) in seconds
        self._conn: http.client.HTTPConnection | None = None

    # -- transport -------------------------------------------------------------------------------
    def _connect(self) -> http.client.HTTPConnection:
        if self._conn is None:
            if self.https:
                ctx = ssl.create_default_context(cafile=self.ca or None)
                if self.cert:
                    ctx.load_cert_chain(self.cert, self.key)
                self._conn = http.client.HTTPSConnection(self.host, self.port, timeout=self.timeout, context=ctx)
            else:
                self._conn = http.client.HTTPConnection(self.host, self.port, timeout=self.timeout)
        return self._conn

    def close(self) -> None:
        if self._conn is not None:
            try:
                self._conn.close()
            except OSError:
                pass
            self._conn = None

    def _raw(self, method: str, path: str, body: Any = None, headers: dict[str, str] | None = None) -> tuple[int, Any]:
        """One request (a kept-alive connection that went stale is opened again once)."""
        data = None if body is None else json.dumps(body).encode()
        hdrs = {"Content-Type": "application/json", "User-Agent": USER_AGENT, **(headers or {})}
        t0 = time.monotonic()
        for attempt in (0, 1):
            conn = self._connect()
            try:
                conn.request(method, path, body=data, headers=hdrs)
                resp = conn.getresponse()
                raw = resp.read()
                self.requests += 1
                break
            except (TimeoutError, http.client.HTTPException, OSError) as e:
                self.close()
                if attempt or isinstance(e, (TimeoutError, ConnectionRefusedError)):
                    raise LapiError(f"LAPI {self.url} unreachable: {e or type(e).__name__}") from None
        t1 = time.monotonic()
        try:
            payload = json.loads(raw) if raw.strip() else None
        except ValueError:
            payload = raw.decode("utf-8", "replace")[:200]
        self.last_times = (t1 - t0, time.monotonic() - t1)
        return resp.status, payload

    @staticmethod
    def _error(what: str, status: int, payload: Any) -> LapiError:
        msg = payload.get("message") if isinstance(payload, dict) else payload
        return LapiError(f"{what}: HTTP {status}{f': {msg}' if msg else ''}", status)

    # -- watcher ---------------------------------------------------------------------------------
    def login(self) -> None:
        body: dict[str, Any] = {"scenarios": self.scenarios}
        if self.machine_id:
            body["machine_id"] = self.machine_id
        if self.password:
            body["password"] = self.password
        status, payload = self._raw("POST", "/v1/watchers/login", body)
        if status != 200 or not isinstance(payload, dict) or not payload.get("token"):
            raise self._error("LAPI login", status, payload)
        self.token = payload["token"]
        self.token_expires = time.time() + 3000  # the LAPI's tokens last an hour
        self.logins += 1

    def _watcher(self, method: str, path: str, body: Any = None) -> tuple[int, Any]:
        if self.token is None or time.time() >= self.token_expires:
            self.login()
        status, payload = self._raw(method, path, body, {"Authorization": f"Bearer {self.token}"})
        if status == 401:  # the token expired or the LAPI restarted with a new secret: once more
            self.login()
            status, payload = self._raw(method, path, body, {"Authorization": f"Bearer {self.token}"})
        return status, payload

    def push(self, alerts: list[dict[str, Any]]) -> list[str]:
        """POST /v1/alerts -> the alerts' ids."""
        status, payload = self._watcher("POST", "/v1/alerts", alerts)
        if status not in (200, 201):
            raise self._error("LAPI push", status, payload)
        return list(payload or [])

    def delete(self, network: str, ids: list[int] | None = None) -> int:
        """Delete every live decision for exactly ``network`` (an address or a prefix; not the
        broader ranges holding it, which ``cscli decisions delete --ip`` would take too): the
        ``ids`` known and whatever the LAPI's alerts list for that value. Returns how many the
        LAPI deleted."""
        want = _canon(network)
        q = urllib.parse.urlencode({"range" if "/" in network else "ip": network, "has_active_decision": "true"})
        status, payload = self._watcher("GET", f"/v1/alerts?{q}")
        if status != 200:
            raise self._error("LAPI alerts", status, payload)
        found = set(ids or ())
        for alert in payload or []:
            for d in alert.get("decisions") or []:
                try:
                    if _canon(str(d["value"])) == want and not str(d.get("duration", "")).startswith("-"):
                        found.add(int(d["id"]))
                except (KeyError, TypeError, ValueError):
                    continue
        return sum(self._delete(f"/v1/decisions/{i}") for i in sorted(found))

    def _delete(self, path: str) -> int:
        status, payload = self._watcher("DELETE", path)
        if status != 200:
            raise self._error("LAPI delete", status, payload)
        try:
            return int((payload or {}).get("nbDeleted", 0))
        except (TypeError, ValueError, AttributeError):
            return 0

    # -- bouncer ---------------------------------------------------------------------------------
    def stream(self, startup: bool = False) -> dict[str, Any]:
        path = "/v1/decisions/stream" + ("?startup=true" if startup else "")
        # with a TLS client certificate the LAPI authenticates the bouncer by it (OU, CN@address)
        status, payload = self._raw("GET", path, None, {"X-Api-Key": self.api_key} if self.api_key else None)
        if status != 200 or not isinstance(payload, dict):
            raise self._error("LAPI decision stream", status, payload)
        return payload


def _canon(text: str) -> str:
    net = ipaddress.ip_network(text.strip(), strict=False)
    return str(net.network_address) if net.prefixlen == net.max_prefixlen else str(net)


def rfc3339(ts: float) -> str:
    return time.strftime("%Y-%m-%dT%H:%M:%SZ", time.gmtime(ts))


def alert_for(ev: dict[str, Any], scenario: str, machine_id: str, host: str, now: float) -> dict[str, Any] | None:
    """The alert (with its decision) pushed for a block event; None when its time is up already.
    The decision lasts what the block has left (the escalated local duration when pushed at once)."""
    net = ev["network"]
    scope = "Range" if "/" in net else "Ip"
    if ev.get("expires") is None:
        left = FOREVER_S
    else:
        left = ev["expires"] - now
        if left < 1:
            return None
    duration = f"{math.ceil(left)}s"
    label = ev.get("label") or ",".join(ev.get("labels") or []) or ev.get("action") or "block"
    ports = ",".join(str(p) for p in ev.get("ports") or ([ev["port"]] if ev.get("port") else []))
    ts = rfc3339(ev.get("ts") or now)
    meta = [{"key": "label", "value": str(label)}, {"key": "host", "value": host}]
    if ports:
        meta.append({"key": "ports", "value": ports})
    if ev.get("reason"):
        meta.append({"key": "reason", "value": str(ev["reason"])[:200]})
    source: dict[str, Any] = {"scope": scope, "value": net}
    source["range" if scope == "Range" else "ip"] = net
    return {
        "scenario": scenario,
        "scenario_hash": "",
        "scenario_version": "",
        "message": f"nfsentry on {host}: {label} from {net}" + (f" (ports {ports})" if ports else ""),
        "events_count": int(ev.get("hits") or 1),
        "start_at": ts,
        "stop_at": ts,
        "capacity": 0,
        "leakspeed": "0",
        "simulated": False,
        "remediation": True,
        "source": source,
        "events": [{"timestamp": ts, "meta": meta}],
        "decisions": [
            {
                "duration": duration,
                "origin": f"nfsentry/{machine_id}",
                "scenario": scenario,
                "scope": scope,
                "type": "ban",
                "value": net,
                "simulated": False,
            }
        ],
    }
