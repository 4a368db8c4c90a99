"""A CrowdSec Local API (Debian's ``crowdsec``) private to a test, in a lab namespace, offline.

Its own configuration under the test's tmp dir (no Central API, no log-processing agent:
``crowdsec -c CONFIG -no-cs -no-capi``), bound to the namespace's lab address so the nfsentry
hosts reach it over the lab bridge; machines and bouncers registered with ``cscli -c CONFIG``
(straight into its SQLite database: the LAPI need not run).
"""

from __future__ import annotations

import json
import os
import shutil
import signal
import subprocess
import time
from pathlib import Path
from typing import Any

from daemon_util import set_elements
from lab import Host

PROFILES = """\
name: default_ip_remediation
filters:
 - Alert.Remediation == true && Alert.GetScope() == "Ip"
decisions:
 - type: ban
   duration: 4h
on_success: break
"""


def crowdsec_unavailable_reason() -> str | None:
    """Why a LAPI cannot run here (`make deps-test` installs Debian's crowdsec offline), or None."""
    for tool in ("crowdsec", "cscli"):
        if shutil.which(tool) is None:
            return f"{tool} is not installed (make deps-test installs Debian's crowdsec, offline)"
    if not Path("/var/lib/crowdsec/hub").is_dir():
        return "crowdsec's hub directory /var/lib/crowdsec/hub is missing (a broken crowdsec install)"
    return None


def make_pki(d: Path, server_ip: str, clients: dict[str, tuple[str, ...]]) -> dict[str, Path]:
    """A throw-away CA (openssl, P-256, valid two days), the LAPI's server certificate for
    ``server_ip`` and a client certificate (CN=NAME) per entry of ``clients``, NAME -> its OUs
    (Lapi(tls=...) allows agent-ou for watchers, bouncer-ou for bouncers). Returns {"ca",
    "server", "server-key", NAME, NAME-key} (PEM files)."""
    d.mkdir(parents=True, exist_ok=True)
    key = ["-newkey", "ec", "-pkeyopt", "ec_paramgen_curve:prime256v1", "-nodes"]

    def ssl(*args: str) -> None:
        subprocess.run(["openssl", *args], check=True, capture_output=True, timeout=30)

    ssl("req", "-x509", *key, "-keyout", str(d / "ca.key"), "-out", str(d / "ca.pem"), "-days", "2", "-subj", "/CN=nfsentry test CA")
    out = {"ca": d / "ca.pem"}
    subjects = {"server": ("/CN=lapi", f"subjectAltName=IP:{server_ip}\nextendedKeyUsage=serverAuth")}
    for name, ous in clients.items():
        subjects[name] = ("".join(f"/OU={ou}" for ou in ous) + f"/CN={name}", "extendedKeyUsage=clientAuth")
    for name, (subj, ext) in subjects.items():
        ssl("req", *key, "-keyout", str(d / f"{name}-key.pem"), "-out", str(d / f"{name}.csr"), "-subj", subj)
        (d / f"{name}.ext").write_text(ext + "\n")
        ssl(
            "x509",
            "-req",
            "-in",
            str(d / f"{name}.csr"),
            "-CA",
            str(d / "ca.pem"),
            "-CAkey",
            str(d / "ca.key"),
            "-CAcreateserial",
            "-days",
            "2",
            "-extfile",
            str(d / f"{name}.ext"),
            "-out",
            str(d / f"{name}.pem"),
        )
        out[name], out[f"{name}-key"] = d / f"{name}.pem", d / f"{name}-key.pem"
    return out


class Lapi:
    def __init__(self, host: Host, tmp: Path, port: int = 8080, db_extra: str = "", tls: dict[str, Path] | None = None) -> None:
        """``tls``: make_pki()'s files: the LAPI serves https and accepts client certificates
        whose OU is agent-ou (watchers) or bouncer-ou (bouncers)."""
        self.host, self.tmp, self.port = host, tmp, port
        self.url = f"{'https' if tls else 'http'}://{host.ip4}:{port}"
        tls_conf = (
            f"""
    tls:
      cert_file: {tls["server"]}
      key_file: {tls["server-key"]}
      ca_cert_path: {tls["ca"]}
      agents_allowed_ou: [agent-ou]
      bouncers_allowed_ou: [bouncer-ou]"""
            if tls
            else ""
        )
        etc, data = tmp / "etc", tmp / "data"
        for d in (etc, data, etc / "notifications"):
            d.mkdir(parents=True, exist_ok=True)
        (etc / "profiles.yaml").write_text(PROFILES)
        self.config = tmp / "config.yaml"
        self.config.write_text(
            f"""\
common: {{daemonize: false, log_media: stdout, log_level: info, working_dir: {tmp}}}
config_paths:
  config_dir: {etc}/
  data_dir: {data}/
  simulation_path: /etc/crowdsec/simulation.yaml
  hub_dir: /var/lib/crowdsec/hub/
  index_path: /var/lib/crowdsec/hub/.index.json
  plugin_dir: /usr/lib/crowdsec/plugins/
  notification_dir: {etc}/notifications/
db_config: {{type: sqlite, db_path: {data}/crowdsec.db, use_wal: true{db_extra}}}
api:
  client: {{credentials_path: {etc}/local_api_credentials.yaml}}
  server:
    listen_uri: {host.ip4}:{port}
    profiles_path: {etc}/profiles.yaml{tls_conf}
prometheus: {{enabled: false}}
"""
        )
        self.log = tmp / "lapi.log"
        self.proc: subprocess.Popen | None = None
        # cscli's own machine (decisions add/delete go through the LAPI's API)
        self.cscli(
            "machines",
            "add",
            "cscli-admin",
            "--password",
            "cscli-admin-pw",
            "-f",
            str(etc / "local_api_credentials.yaml"),
            "--url",
            self.url,
        )

    def cscli(self, *args: str, check: bool = True) -> subprocess.CompletedProcess:
        return self.host.run(["cscli", "-c", str(self.config), *args], check=check, timeout=60)

    def add_machine(self, name: str, password: str) -> None:
        self.cscli("machines", "add", name, "--password", password, "-f", os.devnull)

    def add_bouncer(self, name: str, key: str) -> None:
        self.cscli("bouncers", "add", name, "-k", key)

    def start(self, timeout: float = 60) -> Lapi:
        out = open(self.log, "ab")
        self.proc = self.host.popen(["crowdsec", "-c", str(self.config), "-no-cs", "-no-capi"], stdout=out, stderr=subprocess.STDOUT)
        out.close()
        deadline = time.monotonic() + timeout
        while time.monotonic() < deadline:
            if self.proc.poll() is not None:
                raise RuntimeError(f"crowdsec exited rc={self.proc.returncode}:\n{self.log.read_text()[-3000:]}")
            if "CrowdSec Local API listening" in self.log.read_text(errors="replace"):
                return self
            time.sleep(0.05)
        raise RuntimeError(f"the LAPI did not start:\n{self.log.read_text()[-3000:]}")

    def stop(self) -> None:
        if self.proc is not None and self.proc.poll() is None:
            os.killpg(self.proc.pid, signal.SIGTERM)
            try:
                self.proc.wait(timeout=20)
            except subprocess.TimeoutExpired:
                os.killpg(self.proc.pid, signal.SIGKILL)
                self.proc.wait(timeout=5)
        self.proc = None

    def add_decision(self, *args: str) -> None:
        """`cscli decisions add ARGS` (e.g. "--ip", "198.18.0.7", "--duration", "1h")."""
        self.cscli("decisions", "add", *args)

    def delete_decisions(self, *args: str) -> str:
        return self.cscli("decisions", "delete", *args).stderr

    def decisions(self) -> list[dict[str, Any]]:
        out = self.cscli("decisions", "list", "-a", "-o", "json").stdout
        return [d for a in (json.loads(out) or []) for d in a.get("decisions") or []]


def fleet_sets(host: Host) -> dict[str, int | float | None]:
    """network -> seconds left (None: no timeout) of the fleet sets in ``host``'s namespace."""
    return set_elements(host, "fleet")


def fleet_counter(host: Host) -> int:
    """Packets the fleet sets dropped in ``host``'s namespace (fleet_pkts4 + fleet_pkts6)."""
    res = host.nft(["-j", "list", "counters", "table", "inet", "nfsentry"], check=False)
    if res.returncode != 0:
        return 0
    return sum(
        i["counter"].get("packets", 0)
        for i in json.loads(res.stdout)["nftables"]
        if i.get("counter", {}).get("name", "").startswith("fleet_pkts")
    )


def fleet_section(lapi: Lapi, n: int, interval: str = "100ms", **extra: Any) -> dict[str, Any]:
    """[fleet] of host ``n`` (machine host<n>, bouncer bouncer<n>, registered beforehand)."""
    return {
        "enabled": True,
        "url": lapi.url,
        "machine_id": f"host{n}",
        "password": f"pw-host{n}-secret",
        "api_key": f"key-bouncer{n}-0123456789",
        "pull_interval": interval,
        **extra,
    }


def register_hosts(lapi: Lapi, count: int) -> None:
    for n in range(1, count + 1):
        lapi.add_machine(f"host{n}", f"pw-host{n}-secret")
        lapi.add_bouncer(f"bouncer{n}", f"key-bouncer{n}-0123456789")
