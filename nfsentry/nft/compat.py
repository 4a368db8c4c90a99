"""The compat backend's iptables-nft / ip6tables-nft rules in the kernel: install, list, remove.

The rules themselves (one per family, hook and queue, tagged ``-m comment --comment nfsentry``)
come from :func:`nfsentry.nft.render.compat_rules`. They queue only packets our chains marked, so
they are installed before the nft transaction and removed after the table is gone; removal
deletes exactly our tagged rules, never a table or chain (except, after a failed install, the
empty ones the install made iptables-nft create: see ``Nft._compat_rollback``).
"""

from __future__ import annotations

import shutil
import subprocess
from collections.abc import Callable

from nfsentry.nft.errors import NftError, NftUnavailable
from nfsentry.nft.render import compat_key, compat_listed, compat_rules, compat_tag
from nfsentry.nft.spec import RulesetSpec

__all__ = ["BINARIES", "install", "installed", "remove"]

BINARIES = ("iptables-nft", "ip6tables-nft")

Rule = tuple[str, str, list[str]]  # (binary, chain, rulespec)


def _run(argv: list[str]) -> subprocess.CompletedProcess:
    return subprocess.run(argv, capture_output=True, text=True, timeout=30)


def install(spec: RulesetSpec, rollback: Callable[[list[Rule]], None]) -> list[Rule]:
    """Insert the rules ``spec`` needs that are not there yet; returns those added. On any failure
    ``rollback(added so far)`` runs, then the error propagates."""
    added: list[Rule] = []
    try:
        for binary, chain, args in compat_rules(spec):
            if shutil.which(binary) is None:
                raise NftUnavailable(f"the compat queue backend needs {binary} (Debian package iptables)")
            if _run([binary, "-C", chain, *args]).returncode == 0:
                continue
            res = _run([binary, "-I", chain, "1", *args])
            if res.returncode != 0:
                raise NftError(f"{binary} -I {chain} failed", res.stderr or res.stdout)
            added.append((binary, chain, args))
    except Exception:
        rollback(added)
        raise
    return added


def installed(table: str) -> list[Rule]:
    """The tagged iptables-nft/ip6tables-nft rules of ``table``: (binary, chain, rulespec)."""
    tag = compat_tag(table)
    found = []
    for binary in BINARIES:
        if shutil.which(binary) is None:
            continue
        res = _run([binary, "-S"])  # lists without creating anything
        found += compat_listed(binary, res.stdout, tag)
    return found


def remove(table: str, only: list[Rule] | None = None, keep: list[Rule] | None = None) -> None:
    """Delete the tagged rules of ``table`` (all, or ``only`` these, except ``keep``). Never a table or
    chain. Failures raise NftError, except with ``only`` (a rollback: best effort)."""
    targets = only if only is not None else installed(table)
    keep_keys = {compat_key(*r) for r in (keep or [])}
    errors = []
    for binary, chain, args in targets:
        if compat_key(binary, chain, args) in keep_keys:
            continue
        res = _run([binary, "-D", chain, *args])
        if res.returncode != 0 and only is None:
            errors.append(f"{binary} -D {chain}: {res.stderr.strip()}")
    if errors:
        raise NftError("removing the compat iptables-nft rules", "\n".join(errors))
