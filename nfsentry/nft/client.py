"""One libnftables session on nfsentry's table: load it atomically, and manage its sets.

Everything nfsentry does in the kernel lives in one table, ``inet nfsentry`` (see docs/DESIGN.md
and the commented files under ``rules/``, which are the output of ``nfsentry.nft.render``). This
module does the I/O; the nft text it sends is built by the pure modules ``render`` (the ruleset)
and ``elements`` (set elements), and the compat backend's iptables-nft rules are run by ``compat``.

Two queue backends:

* ``native``: the rules end in ``queue flags bypass to N`` (kernel module nft_queue).
* ``compat``: for kernels without nft_queue. Our chains keep all the policy and only *mark* the
  packets to queue (``meta mark set ...``, bits ``mark_mask``); one ``iptables-nft`` /
  ``ip6tables-nft`` rule per family, hook and queue (``-m mark --mark V/M -j NFQUEUE --queue-num N
  --queue-bypass``, tagged ``-m comment --comment nfsentry``) queues marked packets. Those rules
  are inert without our marks, so they are installed before the nft transaction and removed after
  the table is gone; unload removes exactly the tagged rules and never a table or chain.

``Nft.probe_backend()`` tries the native statement in a dry-run transaction (nothing is ever
committed) and ``Nft.probe_socket()`` does the same for the ``socket`` expression (in-use ports);
without it the ``poll`` fallback keeps the monitored port sets equal to "monitored minus in use"
from ``/proc/net`` (``nfsentry/nft/inuse.py``).

Blocked sources: single addresses live in hash sets (``blocked4``, ``blocked6``), the daemon's IPv6
prefixes in ``blocked6_<len>`` (a hash set of network addresses matched through a mask) and any
other prefix in the interval sets ``blocked4net`` / ``blocked6net``. Hash sets keep a block an
O(1) update: libnftables 1.0.6 re-reads the content of every interval set in the ruleset before
each element change, which made one block cost ~0.6 s with 100,000 blocks in an interval set.
"""

from __future__ import annotations

import ipaddress
import json
import logging
import socket
import threading
import time
from collections.abc import Iterable
from dataclasses import replace
from typing import Any

try:  # the Debian package python3-nftables (libnftables' own bindings)
    import nftables as _nftables
except ImportError:  # pragma: no cover - depends on the machine
    _nftables = None

from nfsentry.nft import compat as _compat
from nfsentry.nft import elements as E
from nfsentry.nft import inuse as _inuse
from nfsentry.nft.errors import NftError, NftInconsistent, NftUnavailable, SpecError
from nfsentry.nft.render import (
    cleanup_commands,
    compat_rules,
    filter_chains,
    format_ingress,
    format_table,
    ingress_devices,
    model,
    near_prefixes,
    reload_plan,
)
from nfsentry.nft.spec import COUNTERS, FLEET_SETS, TABLE_NAME, RulesetSpec, check_backend

__all__ = ["Nft", "Session", "probe_backend", "MISSING_BINDINGS", "LIST_ATTEMPTS", "ONE_MESSAGE", "EXPIRY_SLACK"]

log = logging.getLogger("nfsentry.nft")

MISSING_BINDINGS = "the nftables Python bindings are missing: install the Debian package python3-nftables (apt install python3-nftables)"

PROBE_TABLE = "nfsentry_probe"
# A set listing is taken until it is provably complete (Nft._set_items), at most this often.
LIST_ATTEMPTS = 8
# Fewer elements than this come in one netlink message, dumped at once: no second listing needed.
ONE_MESSAGE = 32
# An element whose time left was below (start of one listing to the end of the next + this) may
# vanish between them (the end, not the start: where in a listing an element is read depends on how
# fast the dump ran, and a busy machine can make one listing seconds slower than the one before).
EXPIRY_SLACK = 1.5


class Session:
    """One libnftables context on one table (``inet TABLE``): raw commands, dry runs, JSON
    listings and complete text listings of its sets. :class:`Nft` builds nfsentry's operations on it.

    A lock makes the object safe to share between threads. Methods raise :class:`NftError` with
    nft's error text.
    """

    def __init__(self, table: str = "nfsentry") -> None:
        if _nftables is None:
            raise NftUnavailable(MISSING_BINDINGS)
        if not TABLE_NAME.fullmatch(table):
            raise ValueError(f"bad table name {table!r}")
        self.table = table
        try:
            self._n = _nftables.Nftables()
        except OSError as e:  # libnftables.so.1 itself missing
            raise NftUnavailable(f"{MISSING_BINDINGS} ({e})") from None
        self._n.set_json_output(True)
        self._lock = threading.RLock()
        self.listing_retries_exhausted = 0

    # -- commands -------------------------------------------------------------------------------
    def _cmd(self, text: str, what: str) -> str:
        with self._lock:
            rc, out, err = self._n.cmd(text)
        if rc != 0:
            raise NftError(what, err, text[:2000])
        return out

    def _json(self, text: str, what: str, terse: bool = False) -> list[dict]:
        with self._lock:
            self._n.set_terse_output(terse)
            try:
                rc, out, err = self._n.cmd(text)
            finally:
                self._n.set_terse_output(False)
        if rc != 0:
            raise NftError(what, err, text)
        return json.loads(out).get("nftables", []) if out.strip() else []

    def _dry(self, text: str) -> tuple[int, str]:
        with self._lock:
            self._n.set_dry_run(True)
            try:
                rc, _, err = self._n.cmd(text)
            finally:
                self._n.set_dry_run(False)
        return rc, err

    # libnftables 1.0.6 fills its cache with every set element before most list commands
    # (~0.35 s per 100,000 blocks); `list chains`, terse `list sets table` and `list set X` do not,
    # so the frequent paths use only those.
    def _sets(self) -> dict[str, tuple[str, tuple[str, ...], int, int]] | None:
        """{set name: (type, flags, timeout, size)} of our table, without contents; None when the table is absent."""
        with self._lock:
            self._n.set_terse_output(True)
            try:
                rc, out, err = self._n.cmd(f"list sets table inet {self.table}")
            finally:
                self._n.set_terse_output(False)
        if rc != 0:
            if "No such file or directory" in err:
                return None
            raise NftError("listing the sets", err)
        return E.parse_sets(json.loads(out).get("nftables", []) if out.strip() else [])

    def loaded(self) -> bool:
        """Is our table in the kernel?"""
        return self._sets() is not None

    def _info(self, rules: bool = False) -> dict | None:
        """Our table's chains and sets (type, flags), optionally its rules (slow with big sets)."""
        sets = self._sets()
        if sets is None:
            return None
        chains = E.parse_chains(self._json("list chains inet", "listing the chains"), self.table)
        info: dict = {"chains": chains, "sets": sets, "rules": {}}
        if rules:
            info["rules"] = E.parse_rules(self._json(f"list table inet {self.table}", "listing the table", terse=True))
        return info

    # -- files ----------------------------------------------------------------------------------
    def load_file(self, path: str) -> None:
        """`nft -f path` through the bindings (a shipped file replaces the table, blocks included)."""
        with self._lock:
            rc, _, err = self._n.cmd_from_file(str(path))
        if rc != 0:
            raise NftError(f"loading {path}", err)

    def check_file(self, path: str) -> None:
        """`nft -c -f path`."""
        with self._lock:
            self._n.set_dry_run(True)
            try:
                rc, _, err = self._n.cmd_from_file(str(path))
            finally:
                self._n.set_dry_run(False)
        if rc != 0:
            raise NftError(f"checking {path}", err)

    # -- set listings ---------------------------------------------------------------------------
    def _text(self, command: str) -> tuple[int, str, str]:
        """A command with nft's text output and numeric times (big listings: twice as fast as JSON)."""
        with self._lock:
            self._n.set_json_output(False)
            self._n.set_numeric_time_output(True)
            try:
                return self._n.cmd(command)
            finally:
                self._n.set_numeric_time_output(False)
                self._n.set_json_output(True)

    def _set_items_once(self, name: str) -> list[str]:
        """One `list set` dump of a set: its element texts (numeric times)."""
        rc, out, err = self._text(f"list set inet {self.table} {name}")
        if rc != 0:
            raise NftError(f"reading set {name}", err)
        return E.set_item_texts(out)

    def _set_items(self, name: str) -> list[str]:
        """A set's element texts, from a listing proved complete (see :data:`LIST_ATTEMPTS`).

        The kernel dumps a big set over several netlink messages and resumes each one by skipping
        the elements it already sent. When the set changes in between (the hash table resizes
        after a bulk add, an element times out and is collected, another process adds or deletes),
        the dump silently repeats some elements and leaves others out, and libnftables does not
        notice. So a listing counts only when it has no repeated element and lost nothing the
        previous listing had (except elements that may have timed out in between); otherwise it is
        taken again, and after ``LIST_ATTEMPTS`` tries :class:`NftInconsistent` says so.
        """
        prev: dict[str, float | None] | None = None
        t_prev = 0.0
        for _ in range(LIST_ATTEMPTS):
            t = time.monotonic()
            items = self._set_items_once(name)
            t_end = time.monotonic()
            keys = {E.element_key(i): E.element_expires(i) for i in items}
            if len(keys) == len(items):  # no repeated element
                if prev is None and len(items) < ONE_MESSAGE:
                    return items
                if prev is not None:
                    lost = [k for k, exp in prev.items() if k not in keys and (exp is None or exp > t_end - t_prev + EXPIRY_SLACK)]
                    if not lost:
                        return items
                prev, t_prev = keys, t
        self.listing_retries_exhausted += 1
        raise NftInconsistent(
            f"set {name} changed while it was being listed, {LIST_ATTEMPTS} times in a row "
            "(a flood of changes?); its listing would be incomplete: try again"
        )

    def _list_set(self, name: str) -> list[dict]:
        """A set's entries as {"network", "timeout", "expires_in", "set"} (text listing: twice as
        fast as JSON for big sets), complete (see :meth:`_set_items`)."""
        return E.parse_set_items(name, self._set_items(name))

    def _networks(self, name: str) -> list:
        """An interval set's entries as networks."""
        return [ipaddress.ip_network(b["network"]) for b in self._list_set(name)]

    def _set_size(self, name: str) -> int:
        return len(self._set_items(name))


class Nft(Session):
    """nfsentry's table in the current network namespace, through the libnftables bindings.

    One ``nftables.Nftables`` context per object (reused by every call; a lock makes the object
    safe to share between threads). Methods raise :class:`NftError` with nft's error text.
    """

    def __init__(self, table: str = "nfsentry") -> None:
        super().__init__(table)
        self._spec: RulesetSpec | None = None
        self._backend: str | None = None
        self._inuse: str | None = None
        self._v6p: int | None = None
        self._probed: dict[str, bool] = {}
        self._applied_ports: tuple | None = None
        self._recent = _inuse.RecentPorts()  # poll: ports in use within recent_service_grace
        self._poller: threading.Thread | None = None
        self._poll_stop = threading.Event()
        self._ingress_text: str | None = None  # the netdev table as last loaded (rule 9)
        self.ingress_error: str | None = None  # why it could not be loaded, if it could not

    # -- the table's IPv6 prefix ----------------------------------------------------------------
    def _v6_prefix(self) -> int | None:
        if self._v6p is None:
            sets = self._sets()
            if sets is None:
                return None
            self._v6p = E.v6_prefix_of(sets)
        return self._v6p

    def _set_for(self, network: Any) -> tuple[str, str, Any]:
        """:func:`elements.set_for` with this table's IPv6 prefix, asked of the kernel only when it
        matters (an IPv6 prefix, and the session does not know it yet)."""
        found = E.set_for(network, self._v6p)
        if self._v6p is None and found[0] == "blocked6net":
            found = E.set_for(network, self._v6_prefix())
        return found

    # -- probes ---------------------------------------------------------------------------------
    def _probe(self, key: str, stmt: str) -> bool:
        if key not in self._probed:
            p = PROBE_TABLE
            rc, _ = self._dry(f"add table inet {p}\nadd chain inet {p} c\nadd rule inet {p} c {stmt}")
            self._probed[key] = rc == 0
        return self._probed[key]

    def probe_backend(self) -> str:
        """'native' when the kernel takes the `queue` statement, else 'compat'. Commits nothing."""
        return "native" if self._probe("queue", "queue flags bypass to 0") else "compat"

    def probe_socket(self) -> bool:
        """Does the kernel have the `socket` expression (in-use ports)? Commits nothing."""
        return self._probe("socket", "socket transparent 0 accept")

    def resolve(self, spec: RulesetSpec, backend: str | None = None) -> tuple[RulesetSpec, str]:
        """(normalized spec with inuse resolved, backend) for this kernel."""
        spec = spec.normalized()
        backend = backend or spec.backend
        check_backend(backend)
        if backend == "auto":
            backend = self.probe_backend()
        if spec.inuse == "auto":
            spec = replace(spec, inuse="socket" if self.probe_socket() else "poll")
        if spec.table != self.table:
            raise SpecError(f"spec is for table {spec.table!r}, this object manages {self.table!r}")
        return spec, backend

    # -- load / unload ---------------------------------------------------------------------------
    def _load_batch(self, spec: RulesetSpec, backend: str) -> str:
        if spec.inuse == "poll":
            self._recent.grace = spec.recent_service_grace
            tcp_in, udp_in = self._recent.seen(*_inuse.listening_ports(), time.monotonic())
            spec = replace(
                spec, tcp_ports=_inuse.subtract_ports(spec.tcp_ports, tcp_in), udp_ports=_inuse.subtract_ports(spec.udp_ports, udp_in)
            )
            self._applied_ports = (spec.tcp_ports, spec.udp_ports)
        m = model(spec, backend)
        info = self._info()
        pre, moved = reload_plan(m, info)
        migrate = [b for name in moved for b in self._list_set(name)]
        batch = "\n".join(pre + [format_table(m)])
        if m.set("served_tcp"):  # services listening now count as served from now on
            batch += E.served_commands(self.table, *_inuse.listening_ports(), (spec.tcp_ports, spec.udp_ports))
        if migrate:
            # Entries of a set that changed shape (e.g. a new ipv6_prefix) move to where the new
            # ruleset keeps them, with their remaining time, in the same transaction.
            self._v6p = m.spec.ipv6_prefix
            existing = {
                n: self._networks(n)
                for n in ("blocked4net", "blocked6net")
                if n in info["sets"] and m.set(n) and m.set(n).signature == info["sets"][n]
            }
            items = [(b["network"], max(1, b["expires_in"] or 0) if b["timeout"] else 0) for b in migrate]
            batch += "\n" + E.bulk_commands(self.table, items, existing, self._v6p)
        return batch

    def load(self, spec: RulesetSpec, backend: str | None = None, poll_interval: float = 1.0) -> dict:
        """Load (or replace) the ruleset in one transaction; blocked sets keep their contents.

        ``backend`` overrides ``spec.backend`` ("auto" probes the kernel). With the compat backend
        the iptables-nft rules are installed first (inert until our chains mark packets) and
        removed again if the nft transaction fails. Returns ``status()``-like facts.
        """
        spec, backend = self.resolve(spec, backend)
        self.stop_inuse_poller()
        batch = self._load_batch(spec, backend)
        added: list = []
        before: set = set()
        if backend == "compat":
            before = self._xt_chains()
            added = _compat.install(spec, lambda done: self._compat_rollback(done, before))
        try:
            self._cmd(batch, f"loading table inet {self.table}")
        except Exception:
            self._v6p = None
            self._compat_rollback(added, before)
            if self._inuse == "poll" and poll_interval > 0:  # the previous ruleset stays: keep serving it
                self.start_inuse_poller(poll_interval)
            raise
        try:  # stale rules (native now, or another mark/queue/variant) are inert: best effort
            _compat.remove(self.table, keep=compat_rules(spec) if backend == "compat" else [])
        except NftError as e:
            log.warning("%s", e)
        self._spec, self._backend, self._inuse, self._v6p = spec, backend, spec.inuse, spec.ipv6_prefix
        if spec.inuse == "poll" and poll_interval > 0:
            self.start_inuse_poller(poll_interval)
        self._load_ingress(spec)
        return {"table": self.table, "backend": backend, "inuse": spec.inuse, "variant": spec.variant}

    # -- table netdev <table>: IPv4 with a bad header, seen on ingress (rule 9) -------------------
    def _load_ingress(self, spec: RulesetSpec) -> None:
        """After the inet table, in a transaction of its own (a device that vanishes meanwhile or a
        kernel without netdev ingress must not cost the whole ruleset): table netdev <table> on
        every interface, or none when ``before_input`` is off. A failure is kept in
        ``ingress_error`` (and logged); :meth:`sync_ingress` tries again."""
        self._ingress_text = None
        try:
            if spec.before_input:
                self.sync_ingress()
            else:
                self.drop_ingress()
        except NftError as e:
            self.ingress_error = str(e)
            log.warning("table netdev %s (IPv4 with a bad header) not loaded: %s", self.table, e)

    def ingress_listed(self) -> set[str] | None:
        """The interfaces the chains of our netdev table hook now (None: no such table). Reads
        `list chains netdev` (text: libnftables 1.0.6 leaves the devices out of its JSON)."""
        rc, out, err = self._text("list chains netdev")
        if rc != 0:
            raise NftError("listing the netdev chains", err)
        head = f"table netdev {self.table} {{"
        lines = out.splitlines()
        if head not in lines:
            return None
        block = lines[lines.index(head) + 1 :]
        end = next((i for i, line in enumerate(block) if line.startswith("}")), len(block))
        return E.parse_ingress_devices("\n".join(block[:end]))

    def sync_ingress(self, devices: Iterable[str] | None = None, spec: RulesetSpec | None = None) -> bool:
        """Make our netdev table hook every interface there is (``devices``: the host's, by
        default), loading it again (one transaction) when it does not: the interfaces changed,
        a device went away and came back (its hook is gone), the table was deleted, the ruleset
        changed. Cheap when nothing changed (one chain listing). True when it was (re)loaded.
        ``spec``: the ruleset's (default: the one this session loaded; the daemon passes its own,
        since the table may have been loaded again by another process, `nfsentry rules load`)."""
        spec = spec or self._spec
        if spec is None or not spec.before_input:
            return False
        want = ingress_devices(devices if devices is not None else (name for _, name in socket.if_nameindex()))
        text = format_ingress(spec, want)
        if text == self._ingress_text and self.ingress_listed() == set(want):
            return False
        t = self.table
        self._cmd(f"add table netdev {t}\ndelete table netdev {t}\n{text}", f"loading table netdev {t}")
        self._ingress_text, self.ingress_error = text, None
        return True

    def drop_ingress(self) -> None:
        """Delete our netdev table (idempotent)."""
        self._ingress_text = None
        t = self.table
        self._cmd(f"add table netdev {t}\ndelete table netdev {t}", f"deleting table netdev {t}")

    def check(self, spec: RulesetSpec, backend: str | None = None) -> None:
        """Dry-run what load() would send (the kernel checks it; nothing is committed)."""
        spec, backend = self.resolve(spec, backend)
        saved = self._v6p, self._applied_ports
        try:
            batch = self._load_batch(spec, backend)
        finally:
            self._v6p, self._applied_ports = saved
        rc, err = self._dry(batch)
        if rc != 0:
            raise NftError("checking the ruleset", err, batch[:2000])

    def unload(self) -> None:
        """Remove our table and our compat rules; nothing else. Idempotent."""
        self.stop_inuse_poller()
        self._cmd(f"add table inet {self.table}\ndelete table inet {self.table}", f"deleting table inet {self.table}")
        self._drop_ingress_quietly()
        _compat.remove(self.table)
        self._spec = self._backend = self._inuse = None

    def _drop_ingress_quietly(self) -> None:
        try:
            self.drop_ingress()
        except NftError as e:  # a kernel without the netdev family never had the table
            log.warning("%s", e)

    def keep_blocks_only(self) -> None:
        """Daemon exit with blocks kept: leave the blocked sets and their drop chain, stop queueing."""
        self.stop_inuse_poller()
        self._drop_ingress_quietly()  # nobody listens to what it reports any more
        info = self._info()
        if info is None:
            return
        t = self.table
        chains = [c for c in info["chains"] if c != "prerouting"]
        if chains:
            self._cmd(
                "\n".join([f"flush chain inet {t} {c}" for c in chains] + [f"delete chain inet {t} {c}" for c in chains]),
                "removing the queue chains",
            )
        _compat.remove(self.table)

    # -- compat iptables-nft rules ----------------------------------------------------------------
    def _xt_chains(self) -> set[tuple[str, str]]:
        """(family, chain) of the iptables-nft filter tables now (cheap: no rules, no elements)."""
        return filter_chains(self._json("list chains", "listing the chains"))

    def _compat_rollback(self, added: list, before: set) -> None:
        """Undo a compat install: our rules, then the (empty) chains and tables it made iptables-nft
        create, so a failed load leaves nothing behind."""
        if not added:
            return
        _compat.remove(self.table, only=added)
        cmds = cleanup_commands(self._xt_chains() - before, before)
        if cmds:
            with self._lock:
                rc, _, err = self._n.cmd("\n".join(cmds))  # refused as a whole if anything is non-empty
            if rc != 0:
                log.warning("leaving empty iptables-nft chains behind: %s", err.strip())

    def compat_installed(self) -> list[tuple[str, str, list[str]]]:
        """Our tagged iptables-nft/ip6tables-nft rules: (binary, chain, rulespec)."""
        return _compat.installed(self.table)

    # -- blocked sets ----------------------------------------------------------------------------
    def block(self, network: Any, timeout_s: float | None = 0) -> bool:
        """Block a source address or prefix for ``timeout_s`` seconds (0 = until unblocked).

        Blocking again replaces the timeout. Returns False when a broader blocked prefix already
        covers ``network`` (nothing changed).
        """
        setname, elem, net = self._set_for(network)
        try:
            self._cmd(E.block_commands(self.table, setname, elem, timeout_s), f"blocking {elem}")
            return True
        except NftError:
            if net is None or not setname.endswith("net"):
                self._require_loaded()
                raise
        # Interval sets refuse overlapping entries: merge with what is there.
        adds, deletes = E.plan_nets({net: timeout_s}, self._networks(setname))
        if not adds:
            return False
        self._cmd(E.replace_commands(self.table, setname, deletes, elem + E.timeout_text(timeout_s)), f"blocking {elem}")
        return True

    def _require_loaded(self) -> None:
        if not self.loaded():
            raise NftError(f"table inet {self.table} is not loaded (start nfsentry or `nfsentry rules load`)")

    def bulk_block(self, items: Iterable[Any], replace: Iterable[Any] = ()) -> int:
        """Add many blocks in one transaction (restore, bulk block). Items: "net", (net, timeout_s)
        or {"network": net, "timeout"/"expires_in": s}; ``replace``: those already in the kernel
        (exactly) whose timeout is replaced. Returns how many entries were sent."""
        norm = E.block_items(items)
        if not norm:
            return 0
        existing: dict[str, list] = {}
        if any("/" in str(n) for n, _ in norm):  # prefixes: merge with the interval sets' content
            existing = {name: self._networks(name) for name in ("blocked4net", "blocked6net")}
        v6p = self._v6p
        if v6p is None and any("/" in str(n) and ":" in str(n) for n, _ in norm):  # IPv6 prefixes
            v6p = self._v6_prefix()
        text = E.bulk_commands(self.table, norm, existing, v6p, replace)
        if text:
            self._cmd(text, f"adding {len(norm)} blocks")
        return len(norm)

    def unblock(self, network: Any) -> bool:
        """Remove one block (exactly this address or prefix). False when it was not blocked."""
        setname, elem, _ = self._set_for(network)
        try:
            self._cmd(E.delete_command(self.table, setname, [elem]), f"unblocking {elem}")
            return True
        except NftError:
            self._require_loaded()
            return False

    def withdraw(self, networks: Iterable[Any]) -> None:
        """Remove these exact entries in one transaction, present or not (each is added, a no-op
        when present, then deleted: `delete` alone fails on a missing element)."""
        cmds = []
        for network in networks:
            setname, elem, _ = self._set_for(network)
            cmds.append(f"add element inet {self.table} {setname} {{ {elem} }}\n{E.delete_command(self.table, setname, [elem])}")
        if cmds:
            self._cmd("\n".join(cmds), f"withdrawing {len(cmds)} kernel-side block(s)")

    def _blocked_sets(self) -> list[str]:
        sets = self._sets()
        if sets is None:
            raise NftError(f"table inet {self.table} is not loaded")
        return [n for n in sets if n.startswith("blocked")]

    def unblock_all(self) -> int:
        """Empty every blocked set in one transaction. Returns how many entries were removed."""
        n = len(self.list_blocked())
        sets = self._blocked_sets()
        if sets:
            self._cmd(E.flush_commands(self.table, sets), "flushing the blocked sets")
        return n

    def list_blocked(self) -> list[dict]:
        """Every block: {"network", "timeout" (s, 0 = permanent), "expires_in" (s, None = permanent), "set"}."""
        out = []
        for name in self._blocked_sets():
            out += self._list_set(name)
        return out

    def _get_element(self, setname: str, elem: str) -> list[dict]:
        """`get element`: the entries of ``setname`` matching ``elem`` (an interval set answers
        with the interval that contains it); [] when none does."""
        rc, out, err = self._text(f"get element inet {self.table} {setname} {{ {elem} }}")
        if rc != 0:
            if "No such file or directory" in err:
                self._require_loaded()
                return []
            raise NftError(f"looking up {elem} in {setname}", err)
        return E.parse_set_text(setname, out)

    def find_blocks(self, network: Any) -> list[dict]:
        """The blocks that are exactly ``network`` or cover it (a prefix holding the address), as
        list_blocked() entries, without listing whole sets (except an interval set's own entry
        for its time left: libnftables' `get element` omits it)."""
        net = E.parse_network(network)
        found: list[dict] = []
        if net.prefixlen == net.max_prefixlen:
            found += self._get_element("blocked4" if net.version == 4 else "blocked6", str(net.network_address))
        v6p = self._v6_prefix() if net.version == 6 else None
        if v6p and v6p < 128 and net.prefixlen >= v6p:
            masked = ipaddress.ip_network(f"{net.network_address}/{v6p}", strict=False)
            found += self._get_element(f"blocked6_{v6p}", str(masked.network_address))
        netset = "blocked4net" if net.version == 4 else "blocked6net"
        covering = self._get_element(netset, str(net) if net.prefixlen < net.max_prefixlen else str(net.network_address))
        if covering:
            timed = {b["network"]: b for b in self._list_set(netset)}
            found += [timed.get(b["network"], b) for b in covering]
        return found

    def blocks_inside(self, network: Any) -> list[dict]:
        """The blocks that lie inside ``network`` (itself included): lists every blocked set."""
        net = E.parse_network(network)
        out = []
        for b in self.list_blocked():
            other = ipaddress.ip_network(b["network"])
            if other.version == net.version and other.subnet_of(net):
                out.append(b)
        return out

    def blocked_count(self) -> int:
        """How many entries the blocked sets hold (cheaper than len(list_blocked()))."""
        return sum(self._set_size(name) for name in self._blocked_sets())

    # -- fleet sets (decisions pulled from a CrowdSec LAPI; the ledger's fleet part) -------------
    def fleet_apply(self, put: Iterable[tuple[str, int, bool]], remove: Iterable[str] = ()) -> int:
        """One transaction on the fleet sets (see :func:`elements.fleet_commands`). Returns how
        many elements it touched."""
        put, remove = list(put), list(remove)
        text = E.fleet_commands(self.table, put, remove)
        if text:
            self._cmd(text, f"updating the fleet sets ({len(put)} put, {len(remove)} removed)")
        return len(put) + len(remove)

    def list_fleet(self) -> list[dict]:
        """Every fleet entry, as list_blocked() entries (``set`` names the fleet set)."""
        sets = self._sets()
        if sets is None:
            raise NftError(f"table inet {self.table} is not loaded")
        out = []
        for name in FLEET_SETS:
            if name in sets:
                out += self._list_set(name)
        return out

    def flush_fleet(self) -> None:
        """Empty the fleet sets (one transaction)."""
        sets = self._sets() or {}
        names = [n for n in FLEET_SETS if n in sets]
        if names:
            self._cmd(E.flush_commands(self.table, names), "flushing the fleet sets")

    def blocked_sizes(self) -> dict[str, int]:
        """How many entries each blocked set holds ({"blocked4": 3, ...})."""
        return {name: self._set_size(name) for name in self._blocked_sets()}

    # -- ignore sets / FTP expectations ----------------------------------------------------------
    def add_ignore(self, network: Any) -> bool:
        """Never queue this source (until the next load, which rewrites the ignore sets)."""
        net = E.parse_network(network)
        setname = "ignore4" if net.version == 4 else "ignore6"
        adds, deletes = E.plan_nets({net: 0}, self._networks(setname))
        if not adds:
            return False
        cmds = E.replace_commands(self.table, setname, deletes, str(net))
        v6p = self._v6_prefix() if net.version == 6 else None
        near = f"near6_{v6p}"
        if v6p and (sets := self._sets()) and near in sets:  # the kernel-side block narrows next to it too
            for prefix in near_prefixes([str(net)], v6p):
                n = ipaddress.ip_network(prefix)
                n_adds, n_deletes = E.plan_nets({n: 0}, self._networks(near))
                if n_adds:
                    cmds += "\n" + E.replace_commands(self.table, near, n_deletes, prefix)
        self._cmd(cmds, f"ignoring {E.network_text(net)}")
        return True

    def set_ignore(self, networks: Iterable[Any]) -> None:
        """The ignore sets (and the kernel-side block's ``near6_<len>``) hold exactly ``networks``
        from now on (`ignore del`): flushed and filled in one transaction."""
        v4, v6 = [], []
        for n in networks:
            net = E.parse_network(n)
            (v4 if net.version == 4 else v6).append(net)
        v4, v6 = list(ipaddress.collapse_addresses(v4)), list(ipaddress.collapse_addresses(v6))
        fill = {"ignore4": [str(n) for n in v4], "ignore6": [str(n) for n in v6]}
        v6p = self._v6_prefix()
        sets = self._sets() or {}
        if v6p and f"near6_{v6p}" in sets:
            fill[f"near6_{v6p}"] = near_prefixes([str(n) for n in v6], v6p)
        cmds = [E.flush_commands(self.table, list(fill))]
        cmds += [f"add element inet {self.table} {name} {{ {', '.join(elems)} }}" for name, elems in fill.items() if elems]
        self._cmd("\n".join(cmds), "replacing the ignore sets")

    def expect_ftp(self, peer: str, server: str, port: int, timeout: float, remove: Iterable[tuple[str, str, int]] = ()) -> None:
        """Let one FTP data connection in: from ``peer`` to ``server``:``port``, for ``timeout`` s.

        ``remove``: (peer, server, port) expectations this one supersedes, deleted in the same
        transaction (whether or not the kernel still holds them: an expired one is re-added for 1s
        and deleted, as ``delete`` alone fails on a missing element)."""
        a, b, _, _ = E.ftp_element(peer, server, port)
        self._cmd(E.expect_ftp_commands(self.table, peer, server, port, timeout, remove), f"adding an FTP expectation {a} -> {b}:{port}")

    # -- in-use ports by polling -----------------------------------------------------------------
    def refresh_inuse(self) -> bool:
        """inuse=poll: make tcp_ports/udp_ports = monitored minus ports in use now or within
        recent_service_grace (one transaction, only when something changed). Returns True when
        the sets were rewritten."""
        if self._spec is None or self._inuse != "poll":
            return False
        tcp_in, udp_in = self._recent.seen(*_inuse.listening_ports(), time.monotonic())
        ports = (_inuse.subtract_ports(self._spec.tcp_ports, tcp_in), _inuse.subtract_ports(self._spec.udp_ports, udp_in))
        if ports == self._applied_ports:
            return False
        self._cmd(E.port_set_commands(self.table, ports), "updating the monitored ports (in-use poll)")
        self._applied_ports = ports
        return True

    def start_inuse_poller(self, interval: float = 1.0) -> None:
        """Run refresh_inuse() every ``interval`` seconds in a daemon thread (load() does this)."""
        self.stop_inuse_poller()
        self._poll_stop.clear()

        def loop() -> None:
            while not self._poll_stop.wait(interval):
                try:
                    self.refresh_inuse()
                except Exception as e:  # keep polling; the next round retries
                    log.warning("in-use poll failed: %s", e)

        self._poller = threading.Thread(target=loop, name="nfsentry-inuse-poll", daemon=True)
        self._poller.start()

    def stop_inuse_poller(self) -> None:
        if self._poller is not None:
            self._poll_stop.set()
            self._poller.join(timeout=5)
            self._poller = None

    # -- reporting --------------------------------------------------------------------------------
    def counters(self) -> dict[str, int]:
        """Packet counts: queued_tcp/udp/ftp, blocked_pkts4/6, and the sums queued, blocked_pkts."""
        return E.parse_counters(self._json(f"list counters table inet {self.table}", "reading the counters"), COUNTERS)

    def status(self, sizes: bool = True) -> dict[str, Any]:
        """backend, inuse, variant, loaded, set sizes, counters, compat rules."""
        info = self._info(rules=True)
        st: dict[str, Any] = {"table": f"inet {self.table}", "loaded": info is not None}
        if info is None:
            st.update(backend=self._backend, inuse=self._inuse, variant=None)
            return st
        st.update(E.ruleset_facts(info["chains"], info["rules"], self._inuse), chains=info["chains"])
        st["compat_rules"] = len(self.compat_installed()) if st["backend"] == "compat" else 0
        if sizes:
            st["sets"] = {name: self._set_size(name) for name in info["sets"]}
            st["blocked"] = sum(n for s, n in st["sets"].items() if s.startswith("blocked"))
        st["counters"] = self.counters()
        try:
            listed = self.ingress_listed()
            st["ingress_devices"] = sorted(listed) if listed is not None else None
        except NftError as e:
            st["ingress_devices"] = None
            st["ingress_error"] = str(e)
        return st


def probe_backend() -> str:
    """'native' or 'compat' for the kernel of the current network namespace."""
    return Nft().probe_backend()
