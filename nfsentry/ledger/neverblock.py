"""The never-block list: everything nfsentry must never block (the block-safety policy the ledger's
callers apply), from the configuration's ignore list and facts about this host: its own addresses,
default gateways, resolvers and the SSH session running the command.

Used by the daemon (at start-up, then refreshed by its worker thread) and by the CLI (``block``
without a daemon, ``rules``). Runs ``ip -j``; no state.
"""

from __future__ import annotations

import ipaddress
import json
import os
import subprocess
from pathlib import Path

from nfsentry.config.schema import Config


def _ip_json(args: list[str]) -> list[dict]:
    try:
        out = subprocess.run(["ip", "-j", *args], capture_output=True, text=True, timeout=5).stdout
        return json.loads(out or "[]")
    except (OSError, ValueError, subprocess.TimeoutExpired):
        return []


def own_addresses() -> set[str]:
    addrs = {"127.0.0.0/8", "::1/128"}
    for link in _ip_json(["addr", "show"]):
        for a in link.get("addr_info", []):
            local = a.get("local")
            if local and not local.startswith("fe80:"):
                addrs.add(local)
    return addrs


def gateways() -> set[str]:
    gws = set()
    for fam in ("-4", "-6"):
        for r in _ip_json([fam, "route", "show", "default"]):
            if r.get("gateway") and not r["gateway"].startswith("fe80:"):
                gws.add(r["gateway"])
    return gws


def resolvers(path: str = "/etc/resolv.conf") -> set[str]:
    out = set()
    try:
        for line in Path(path).read_text().splitlines():
            parts = line.split()
            if len(parts) >= 2 and parts[0] == "nameserver":
                try:
                    out.add(str(ipaddress.ip_address(parts[1].split("%")[0])))
                except ValueError:
                    pass
    except OSError:
        pass
    return out


def ssh_client() -> str | None:
    """The address of the SSH session running this command, if any (never block the admin)."""
    for var in ("SSH_CONNECTION", "SSH_CLIENT"):
        v = os.environ.get(var, "").split()
        if v:
            try:
                return str(ipaddress.ip_address(v[0]))
            except ValueError:
                pass
    return None


def never_block_networks(cfg: Config) -> list[str]:
    """Everything nfsentry must never block: config ignore list + host facts."""
    nets = {str(n) for n in cfg.ignore}
    ig = cfg["ignore"]
    if ig["own_addresses"]:
        nets |= own_addresses()
    if ig["gateways"]:
        nets |= gateways()
    if ig["resolvers"]:
        nets |= resolvers(ig.get("resolv_conf", "/etc/resolv.conf"))
    ssh = ssh_client()
    if ssh:
        nets.add(ssh)
    return sorted({str(ipaddress.ip_network(n, strict=False)) for n in nets})
