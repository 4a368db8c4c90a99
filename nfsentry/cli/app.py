"""The nfsentry command line: one typer app for everything an admin does.

Exit codes: 0 success; 1 runtime failure (kernel refused, daemon error); 2 bad input (address,
prefix, duration, file, configuration); 3 `status`: the daemon is not running; 77 not root /
no CAP_NET_ADMIN (sysexits EX_NOPERM).
"""

from __future__ import annotations

import datetime as dt
import json
import os
import re
import time
from collections.abc import Callable
from pathlib import Path

import typer
import typer.core

from nfsentry import __version__
from nfsentry.cli.output import Col, choose, emit, json_option, output_option, visible, wide_option

HELP = {"help_option_names": ["-h", "--help"]}
# typer (0.29, plain help) prints an argument's Python type after its metavar ("ADDR <str>"); every
# argument here has a metavar that says what it takes, so the type is left out
typer.core.TyperArgument.display_type_rich = lambda self, ctx: None  # type: ignore[method-assign,assignment]
app = typer.Typer(
    add_completion=True,
    no_args_is_help=True,
    rich_markup_mode=None,
    context_settings=HELP,
    help="nfsentry: port-scan detection and in-kernel blocking for nftables (PortSentry reborn).",
)
rules_app = typer.Typer(no_args_is_help=True, context_settings=HELP, help="Show, load, unload or check nfsentry's nftables ruleset.")
config_app = typer.Typer(no_args_is_help=True, context_settings=HELP, help="Validate configuration files.")
ignore_app = typer.Typer(
    no_args_is_help=True,
    context_settings=HELP,
    help="The ignore list: sources never queued, never blocked (kept in the first [ignore] file).",
)
history_app = typer.Typer(context_settings=HELP, help="Past detections, blocks and unblocks (`history show ID`: one in full).")
app.add_typer(rules_app, name="rules")
app.add_typer(config_app, name="config")
app.add_typer(ignore_app, name="ignore")
app.add_typer(history_app, name="history")
fleet_app = typer.Typer(no_args_is_help=True, context_settings=HELP, help="The fleet: blocks shared through a CrowdSec Local API.")
app.add_typer(fleet_app, name="fleet")


def _version(value: bool) -> None:
    if value:
        typer.echo(f"nfsentry {__version__}")
        raise typer.Exit()


@app.callback()
def _main(version: bool = typer.Option(False, "--version", callback=_version, is_eager=True, help="print the version and exit")) -> None:
    """nfsentry: port-scan detection and in-kernel blocking for nftables (PortSentry reborn)."""


EXIT_RUNTIME, EXIT_USAGE, EXIT_NOT_RUNNING, EXIT_NOPERM = 1, 2, 3, 77


def fail(msg: str, code: int = EXIT_USAGE) -> None:
    typer.echo(f"nfsentry: {msg}" if not msg.startswith("nfsentry:") else msg, err=True)
    raise typer.Exit(code)


def need_root(what: str) -> None:
    if os.geteuid() != 0:
        fail(f"{what} needs root (CAP_NET_ADMIN)", EXIT_NOPERM)


def load_config(path: str | None, portsentry: str | None = None, defaults: str | None = None):
    from nfsentry.config import schema as C

    try:
        if portsentry:
            from nfsentry.config import portsentry as P

            return P.load_as_config(portsentry, defaults)
        # Ignore files matter only to what root does (the daemon, block); a non-root user gets the
        # command's own "needs root" refusal instead of a permission error on a root-only file.
        return C.load(path, read_files=os.geteuid() == 0)
    except C.ConfigError as e:
        fail(str(e), EXIT_USAGE)
    except (OSError, ValueError) as e:
        fail(str(e), EXIT_USAGE)


def parse_duration_opt(text: str | None, default: float | None) -> float | None:
    from nfsentry.core.units import parse_duration

    if text is None:
        return default
    try:
        return parse_duration(text)
    except ValueError as e:
        fail(str(e))


def get_nft(cfg):
    need_root("talking to nftables")
    try:
        from nfsentry import nft as N
    except ImportError as e:
        fail(str(e), EXIT_RUNTIME)
    return N, N.Nft(table=cfg["nft"]["table"])


def daemon_request(cfg, cmd: str, **args):
    """Returns the reply, or None when the daemon is not running. ``cfg``: a configuration, or
    a :class:`DaemonConf` (the control socket even when the file on disk does not load)."""
    from nfsentry.ipc import ControlError, DaemonNotRunning, request

    sock = cfg.socket if isinstance(cfg, DaemonConf) else cfg["daemon"]["control_socket"]
    try:
        reply = request(sock, cmd, **args)
    except DaemonNotRunning:
        return None
    except ControlError as e:
        msg = str(e)
        fail(msg, EXIT_NOPERM if "permission denied" in msg else e.code)
    if isinstance(cfg, DaemonConf) and cfg.error:
        typer.echo(
            f"nfsentry: warning: {cfg.error} (the file on disk does not load; the running daemon keeps the configuration it loaded)",
            err=True,
        )
    return reply


class DaemonConf:
    """What a command that talks to the running daemon needs: the configuration, or, when the file
    on disk does not load (a typo made after the daemon started), the control socket read from it
    best effort and the error. The admin can then still reach the daemon (to unblock themself);
    local work without a daemon (:meth:`need`) fails with the error, exit 2."""

    def __init__(self, path: str | None) -> None:
        from nfsentry.config import schema as C

        self.path, self.cfg, self.error = path, None, None
        try:
            self.cfg = C.load(path, read_files=os.geteuid() == 0)
            self.socket = self.cfg["daemon"]["control_socket"]
        except (OSError, ValueError) as e:  # ConfigError is a ValueError
            self.error = str(e)
            self.socket = control_socket_of(path) or C.DEFAULTS["daemon"]["control_socket"]

    def need(self):
        """The configuration, for local work; a file that does not load: its one-line error, exit 2."""
        if self.cfg is None:
            fail(self.error or "the configuration does not load", EXIT_USAGE)
        return self.cfg


def control_socket_of(path: str | None) -> str | None:
    """[daemon] control_socket of a configuration file that does not validate, best effort: from
    its TOML if that parses, else from the line in its [daemon] section; None when unknown."""
    import re
    import tomllib

    from nfsentry.config import schema as C

    try:
        text = Path(path or C.DEFAULT_PATH).read_bytes().decode("utf-8", "replace")
    except OSError:
        return None
    try:
        sock = tomllib.loads(text).get("daemon", {}).get("control_socket")
        return sock if isinstance(sock, str) and sock.startswith("/") else None
    except (tomllib.TOMLDecodeError, AttributeError):
        pass
    section = None
    for line in text.splitlines():
        head = re.match(r"\s*\[\s*([A-Za-z0-9_.-]+)\s*\]", line)
        if head:
            section = head.group(1)
            continue
        m = re.match(r"""\s*control_socket\s*=\s*(["'])(/[^"']*)\1""", line)
        if m and section == "daemon":
            return m.group(2)
    return None


def fmt_ts(ts: float | None) -> str:
    if not ts:
        return "-"
    return dt.datetime.fromtimestamp(ts).strftime("%Y-%m-%d %H:%M:%S")


def fmt_left(seconds: float | None) -> str:
    from nfsentry.core.units import format_duration

    if seconds is None:
        return "never"
    return format_duration(max(0, seconds)) or "0s"


ConfigOpt = typer.Option(None, "--config", "-c", metavar="FILE", help="configuration file (default /etc/nfsentry/nfsentry.toml if present)")


# == status =========================================================================================
@app.command()
def status(config: str | None = ConfigOpt, output: str | None = output_option(), as_json: bool = json_option()):
    """Is the daemon running; backend, ports, the never-block list and counters."""
    fmt = choose(output, as_json) if (output or as_json) else "human"  # a report, not a table: human unless asked
    conf = DaemonConf(config)
    reply = daemon_request(conf, "status")
    if reply is None:
        conf.need()  # not running: a file that does not load is the error to report
        if fmt == "json":
            typer.echo(json.dumps({"running": False}))
        elif fmt == "tsv":
            typer.echo("key\tvalue\nrunning\tfalse")
        else:
            typer.echo("nfsentry is not running")
        raise typer.Exit(EXIT_NOT_RUNNING)
    reply.pop("ok", None)
    reply["running"] = True
    degraded = reply.get("state") == "degraded"
    emit_report(fmt, reply, status_lines)
    if degraded:
        raise typer.Exit(EXIT_RUNTIME)


def flatten(d: dict, prefix: str = "") -> list[tuple[str, object]]:
    """status -o tsv: nested keys dotted ("counters.blocks"), lists space-separated."""
    out: list[tuple[str, object]] = []
    for k in sorted(d):
        v = d[k]
        if isinstance(v, dict):
            out += flatten(v, f"{prefix}{k}.")
        else:
            out.append((prefix + k, " ".join(map(str, v)) if isinstance(v, list) else v))
    return out


def emit_report(fmt: str, data: dict, lines: Callable[[dict], list[str]]) -> None:
    """A report (status, fleet status): JSON, key/value TSV of the flattened dict, or its lines."""
    if fmt == "json":
        typer.echo(json.dumps(data, sort_keys=True, default=str))
    elif fmt == "tsv":
        from nfsentry.cli.output import tsv_field

        typer.echo("key\tvalue")
        for k, v in flatten(data):
            typer.echo(f"{k}\t{tsv_field(v)}")
    else:
        typer.echo("\n".join(visible(line) for line in lines(data)))


def blocked_drops(reply: dict) -> str:
    """Packets the kernel dropped from blocked sources since the table was loaded (the named
    counters blocked_pkts4/6), or '?' when the daemon could not read them."""
    k = reply.get("kernel")
    return str(k["blocked_pkts"]) if isinstance(k, dict) and "blocked_pkts" in k else "?"


def status_lines(reply: dict) -> list[str]:
    c = reply.get("counters", {})
    e = reply.get("engine", {})
    lines = [
        f"nfsentry {reply.get('version')} is running (pid {reply.get('pid')}, up {fmt_left(reply.get('uptime'))})",
        f"  queue backend:     {reply.get('backend')}",
        f"  in-use detection:  {reply.get('inuse')}",
        f"  engine:            {reply.get('engine_kind')}",
        f"  mode:              {reply.get('mode')}{' (dry run)' if reply.get('dry_run') else ''}",
        f"  monitored tcp:     {reply.get('tcp_ports')} ({reply.get('tcp_port_count')} ports)",
        f"  monitored udp:     {reply.get('udp_ports')} ({reply.get('udp_port_count')} ports)",
        f"  never-block:       {reply.get('never_block')} networks",
        *never_block_lines(reply.get("never_block_list") or []),
        f"  kernel-side block: {kernel_block_text(reply.get('kernel_block') or {}, c)}",
        f"  packets queued:    {c.get('queued', 0)}   detections: {c.get('detections', 0)}   blocks: {c.get('blocks', 0)}",
        f"  last detection:    {fmt_ago(reply.get('last_detection'))}",
        f"  currently blocked: {reply.get('blocked', '?')}   packets dropped from blocked sources: {blocked_drops(reply)}",
        f"  engine sources:    {e.get('tracked', '?')} tracked, {e.get('evicted', 0)} evicted",
        f"  bad checksums:     {e.get('badsum', 0)} (counted, never reacted to)",
        f"  queue drops:       {sum(q.get('queue_dropped', 0) + q.get('user_dropped', 0) for q in reply.get('queue_drops', {}).values())}",
        f"  errors:            {c.get('errors', 0)} internal, {c.get('storage_errors', 0)} storage",
        f"  blocks refused:    {c.get('blocks_rate_limited', 0)} by max_blocks_per_minute, {c.get('blocks_capped', 0)} by max_blocked",
        f"  ruleset restored:  {c.get('ruleset_restored', 0)} times (removed outside nfsentry)   expired: {c.get('blocks_expired', 0)}",
    ]
    bi = reply.get("before_input")
    if bi:
        hooked = ", ".join(bi.get("devices") or []) or "none"
        lines.append(
            f"  before input:      NFLOG group {bi.get('nflog_group')}, {c.get('nflog_packets', 0)} packets"
            f" ({c.get('nflog_lost', 0)} lost); bad IPv4 headers watched on: {hooked}"
            + (f" (NOT LOADED: {bi['ingress_error']})" if bi.get("ingress_error") else "")
        )
    fl = reply.get("fleet") or {}
    if fl.get("enabled"):
        reach = {True: "reachable", False: "UNREACHABLE", None: "not asked yet"}[fl.get("reachable")]
        pulled = (fl.get("pulled") or {}).get("in_force", 0)
        lines.append(
            f"  fleet:             LAPI {fl.get('url')} {reach}; {pulled} pulled in force, "
            f"{fl.get('outbox') or 0} waiting to be pushed, {(reply.get('kernel') or {}).get('fleet_pkts', 0)} packets dropped"
        )
    if reply.get("state") == "degraded":
        lines.insert(1, f"  DEGRADED: {reply.get('degraded')}")
    return lines


def never_block_lines(nets: list[str], most: int = 40) -> list[str]:
    """status: the never-block list under its count, whole addresses, at most ``most`` of them
    (then how many more, and where to see them all)."""
    shown = [canonical_text(n) for n in nets[:most]]
    if len(nets) > most:
        shown.append(f"... and {len(nets) - most} more (nfsentry ignore list --all)")
    return wrap_words(shown, " " * 21)


def wrap_words(words: list[str], indent: str, width: int = 80) -> list[str]:
    """Words (addresses) on lines of at most ``width`` columns after ``indent``; a word is never
    cut (one longer than the line gets a line of its own)."""
    lines, cur = [], ""
    for w in words:
        if cur and len(indent) + len(cur) + 1 + len(w) > width:
            lines.append(indent + cur)
            cur = w
        else:
            cur = f"{cur} {w}" if cur else w
    if cur:
        lines.append(indent + cur)
    return lines


def fmt_ago(ts: float | None, now: float | None = None) -> str:
    if not ts:
        return "none since the daemon started"
    ago = max(0.0, (time.time() if now is None else now) - ts)
    return f"{fmt_ts(ts)} ({fmt_left(ago)} ago)"


def kernel_block_text(kb: dict, counters: dict) -> str:
    """status: is the first probe blocked by the kernel itself, and how often it did it."""
    if not kb.get("active"):
        return "off (the daemon blocks; see [response] kernel_block)"
    what = " and ".join(p for p, on in (("TCP", kb.get("tcp")), ("UDP", kb.get("udp"))) if on)
    return (
        f"active for {what} ({kb.get('rate')}): {kb.get('blocks', '?')} first probes blocked in the kernel, "
        f"{counters.get('kernel_blocks_withdrawn', 0)} withdrawn"
    )


# == blocked / list =================================================================================
def open_ledger(cfg, readonly: bool = False):
    """The ledger (the one owner of block state) on this namespace's table and the database."""
    from nfsentry.ledger.ledger import Ledger
    from nfsentry.sinks.store import Store, StoreError

    N, nft = get_nft(cfg)
    store = None
    try:
        if not readonly or cfg.db_path.exists():
            store = Store(cfg.db_path, readonly=readonly)
    except StoreError as e:
        if not readonly:
            fail(f"cannot open the database, nothing changed: {e}", EXIT_RUNTIME)
    return N, Ledger(nft, store)


def current_blocks(cfg, family: int | None) -> list[dict]:
    """Kernel set (authoritative) merged with the database's reasons."""
    N, ledger = open_ledger(cfg, readonly=True)
    try:
        return ledger.entries(family)
    except N.NftError as e:
        fail(f"cannot read the blocked sets: {e}", EXIT_RUNTIME)
    finally:
        if ledger.store is not None:
            ledger.store.close()


BLOCKED_COLS = [
    Col("address/prefix", "key"),
    Col("expires in"),
    Col("packets", right=True),
    Col("origin"),
    Col("labels", "text"),
    Col("reason", "text"),
    Col("offences", right=True, wide=True),
    Col("ports", "text", wide=True),
    Col("first seen", wide=True),
    Col("blocked at", wide=True),
]
ORIGIN_NAMES = ("auto", "detection", "manual", "kernel", "fleet")


def origin_text(r: dict) -> str:
    """A block's origin; a fleet block's with who pushed it ("fleet:host2", "fleet:cscli")."""
    who = r.get("machine") or r.get("decision_origin")
    if r.get("origin") == "fleet" and who:
        return f"fleet:{who}"
    return r.get("origin") or "-"


def blocked_row(r: dict) -> list:
    return [
        r["network"],
        fmt_left(r["expires_in"]),
        r.get("packets"),
        origin_text(r),
        ",".join(r["labels"]) or "-",
        r["reason"] or "-",
        r["offences"],
        ",".join(map(str, r["ports"])) or "-",
        fmt_ts(r["first_seen"]),
        fmt_ts(r.get("blocked_at")),
    ]


def source_filter(text: str | None, inside_only: bool = False):
    """--source ADDR/PREFIX -> a test on a network's text: it lies inside the prefix, or (for
    `blocked`, not ``inside_only``) it is a broader block holding it; None without --source."""
    import ipaddress

    from nfsentry.core.addrs import normalize_network

    if text is None:
        return None
    try:
        want = ipaddress.ip_network(normalize_network(text))
    except ValueError as e:
        fail(str(e))

    def match(net: str | None) -> bool:
        if not net:
            return False
        try:
            n = ipaddress.ip_network(net, strict=False)
        except ValueError:
            return False
        if n.version != want.version:
            return False
        return n.subnet_of(want) or (not inside_only and want.subnet_of(n))  # type: ignore[arg-type]

    return match


@app.command("blocked")
def blocked_cmd(
    config: str | None = ConfigOpt,
    family: int | None = typer.Option(None, "--family", metavar="4|6", help="only IPv4 or IPv6"),
    origin: str | None = typer.Option(
        None, "--origin", metavar="ORIGIN", help="only blocks made by: detection (auto), manual, kernel, fleet"
    ),
    label: str | None = typer.Option(None, "--label", metavar="LABEL", help="only blocks with this scan label (SYN, FIN, ...)"),
    source: str | None = typer.Option(
        None, "--source", metavar="ADDR/PREFIX", help="only blocks inside this prefix, or holding this address"
    ),
    output: str | None = output_option(),
    as_json: bool = json_option(),
    wide: bool = wide_option(),
):
    """List current blocks (alias: list): the kernel's blocked sets, with the database's reasons."""
    if family not in (None, 4, 6):
        fail("--family must be 4 or 6")
    if origin is not None and origin not in ORIGIN_NAMES:
        fail(f"bad --origin {origin!r}: use one of {', '.join(ORIGIN_NAMES)}")
    match = source_filter(source)
    fmt = choose(output, as_json)
    cfg = load_config(config)
    rows = current_blocks(cfg, family)
    if origin is not None:
        wanted = {"auto", "detection"} if origin in ("auto", "detection") else {origin}
        rows = [r for r in rows if r.get("origin") in wanted]
    if label is not None:
        rows = [r for r in rows if label.upper() in (x.upper() for x in r["labels"])]
    if match is not None:
        rows = [r for r in rows if match(r["network"])]
    emit(fmt, BLOCKED_COLS, rows, blocked_row, wide=wide, nothing="no blocked sources", title=f"{len(rows)} blocked")


app.command("list", help="List current blocks (alias of blocked).")(blocked_cmd)


# == block / unblock ================================================================================
def fmt_until(expires: float | None, seconds: float | None = None) -> str:
    """ "for 10m (until 2026-11-30 18:25:12)", or "until unblocked"."""
    if expires is None:
        return "until unblocked"
    left = round(expires - time.time()) if seconds is None else seconds
    return f"for {fmt_left(left)} (until {fmt_ts(expires)})"


@app.command()
def block(
    address: str | None = typer.Argument(None, metavar="ADDR|ADDR/PREFIX", help="what to block (or -f FILE)"),
    file: str | None = typer.Option(
        None,
        "--file",
        "-f",
        metavar="FILE",
        help="block every line of FILE ('-': standard input): ADDR[/PREFIX] [DURATION] [REASON]; '#' comment lines",
    ),
    for_: str | None = typer.Option(
        None, "--for", metavar="DURATION", help="duration (e.g. 30m, 2h, 7d; 0 = until unblocked); with -f: for lines without one"
    ),
    reason: str | None = typer.Option(None, "--reason", metavar="TEXT", help="why (default: manual block); with -f: for lines without one"),
    config: str | None = ConfigOpt,
    force: bool = typer.Option(False, "--force", help="allow blocking a never-block address (not your SSH session)"),
):
    """Block a host or prefix by hand (or a list of them: -f). A block already in force is never shortened."""
    from nfsentry.core.addrs import normalize_block_target
    from nfsentry.ledger.neverblock import ssh_client
    from nfsentry.ledger.rule import kernel_timeout

    if (address is None) == (file is None):
        fail("give an address or -f FILE, not both" if address else "name an address or prefix to block, or -f FILE")
    conf = DaemonConf(config)
    # without a loadable file the running daemon's own default duration applies (None: not sent)
    duration = parse_duration_opt(for_, conf.cfg.durations["block_duration"] if conf.cfg else None)
    try:
        if duration is not None:
            kernel_timeout(duration)
    except ValueError as e:
        fail(str(e))
    if file is not None:
        block_file(conf, file, duration, reason, force)
        return
    ssh = ssh_client()
    try:
        net = normalize_block_target(address, [ssh] if ssh else [])
    except ValueError as e:
        fail(str(e))
    need_root("block")
    asked = {"duration": duration} if duration is not None else {}
    reply = daemon_request(conf, "block", network=net, reason=reason, force=force, **asked)
    if reply is None:
        cfg = conf.need()
        if duration is None:
            duration = cfg.durations["block_duration"]
        from nfsentry.ledger.neverblock import never_block_networks

        if not force:
            try:
                net = normalize_block_target(net, never_block_networks(cfg))
            except ValueError as e:
                fail(str(e))
        N, ledger = open_ledger(cfg)
        try:
            res = ledger.block(net, duration, reason)
        except N.NftError as e:
            fail(f"block failed, nothing changed: {e}", EXIT_RUNTIME)
        reply = {"status": res.status, "expires": res.expires, "by": res.by}
    status, expires, by = reply.get("status", "blocked"), reply.get("expires"), reply.get("by", net)
    if status == "kept":
        inside = f" by {by}" if by != net else ""
        typer.echo(f"{net} is already blocked{inside} {fmt_until(expires)}: kept (blocks are never shortened)")
    else:
        seconds = None if duration is None else kernel_timeout(duration)
        typer.echo(f"{'extended' if status == 'extended' else 'blocked'} {net} {fmt_until(expires, seconds)}")


WORD = re.compile(r"(\S+)\s*(.*)", re.DOTALL)  # the first word of a line, and the rest
DURATION_WORD = re.compile(r"0|(\d+(\.\d+)?(ms|s|m|h|d|w)\s*)+", re.IGNORECASE)


def read_block_list(text: str, name: str, check) -> list[tuple[str, float | None, str | None, str]]:
    """`block -f`: each line ``ADDR[/PREFIX] [DURATION] [REASON...]`` -> (network, duration or
    None, reason or None, "name:line"). A second word that is a duration with its unit (30m, 2h,
    1h30m, 7d) or 0 is the duration; the rest of the line is the reason. Blank lines and lines
    starting with '#' are skipped. The first bad line: its one-line error (exit 2), nothing done."""
    from nfsentry.core.units import parse_duration

    out = []
    for num, line in enumerate(text.splitlines(), 1):
        stripped = line.strip()
        if not stripped or stripped.startswith("#"):
            continue
        where = f"{name}:{num}"
        addr, after = WORD.fullmatch(stripped).groups()  # type: ignore[union-attr]
        try:
            net = check(addr)
        except ValueError as e:
            fail(f"{where}: {e} (nothing blocked)")
        duration, reason = None, after
        first, remainder = WORD.fullmatch(after).groups() if after else ("", "")  # type: ignore[union-attr]
        if first and DURATION_WORD.fullmatch(first):
            try:
                duration = parse_duration(first)
            except ValueError as e:
                fail(f"{where}: {e} (nothing blocked)")
            reason = remainder.strip()
        out.append((net, duration, reason or None, where))
    if not out:
        fail(f"{name}: no address in it (nothing blocked)")
    return out


def block_file(conf: DaemonConf, file: str, duration: float | None, reason: str | None, force: bool) -> None:
    """`block -f FILE`: every line or none, in one kernel transaction (through the daemon when it
    runs), under the ledger's rule: a block in force is never shortened."""
    import sys

    from nfsentry.core.addrs import block_target_checker
    from nfsentry.ledger.neverblock import never_block_networks, ssh_client

    name = "stdin" if file == "-" else file
    try:
        text = sys.stdin.read() if file == "-" else Path(file).read_text(encoding="utf-8")
    except (OSError, UnicodeDecodeError) as e:
        fail(f"cannot read {name}: {getattr(e, 'strerror', None) or e}")
    ssh = ssh_client()
    never = [ssh] if ssh else []  # --force never reaches your own SSH session
    if conf.cfg is not None and not force:  # the never-block list, each line named (a daemon checks its own again)
        never = never_block_networks(conf.cfg)
    entries = read_block_list(text, name, block_target_checker(never))
    need_root("block")
    wire = [[net, d if d is not None else duration, r if r is not None else reason] for net, d, r, _ in entries]
    reply = daemon_request(conf, "block_many", entries=wire, names=[w for *_, w in entries], force=force, timeout=120)
    if reply is not None:
        results = [tuple(r) for r in reply["results"]]
    else:
        cfg = conf.need()
        default = cfg.durations["block_duration"] if duration is None else duration
        N, ledger = open_ledger(cfg)
        try:
            done = ledger.block_many([(net, default if d is None else d, r) for net, d, r in wire])
        except N.NftError as e:
            fail(f"block failed, nothing changed: {e}", EXIT_RUNTIME)
        finally:
            if ledger.store is not None:
                ledger.store.close()
        results = [(r.network, r.status, r.expires, r.by) for r in done]
    counts = {k: sum(1 for r in results if r[1] == k) for k in ("blocked", "extended", "kept")}
    typer.echo(
        f"{name}: {len(entries)} lines, {len(results)} networks: {counts['blocked']} blocked, {counts['extended']} extended, "
        f"{counts['kept']} kept (already blocked as long or longer)"
    )


@app.command()
def unblock(
    addresses: list[str] = typer.Argument(None, metavar="ADDR|ADDR/PREFIX", help="what to unblock"),
    all_: bool = typer.Option(False, "--all", help="remove every block of this host (fleet blocks stay: lift them by address)"),
    covering: bool = typer.Option(False, "--covering", help="also lift broader blocks that cover an address"),
    ignore: bool = typer.Option(False, "--ignore", help="also add them to the ignore list"),
    local: bool = typer.Option(False, "--local", help="a fleet block: lift it on this host only (its decision stays at the LAPI)"),
    config: str | None = ConfigOpt,
):
    """Remove blocks from the kernel, the running engine and the database (for good).

    A prefix lifts every block inside it. An address inside a broader block (an IPv6 /64, a
    prefix) is lifted only with --covering; otherwise the block that covers it is named. A fleet
    block (pulled from the CrowdSec LAPI) is deleted at the LAPI too, so every host lifts it;
    --local lifts it here only."""
    from nfsentry.core.addrs import normalize_network

    if not addresses and not all_:
        fail("name at least one address, or --all")
    if addresses and all_:
        fail("give addresses or --all, not both")
    nets = []
    for a in addresses or []:
        try:
            nets.append(normalize_network(a, allow_everything=True))  # a /0: refused below, with a hint
        except ValueError as e:
            fail(str(e))
        if nets[-1].endswith("/0"):
            fail(f"refusing {a!r}: a /0 matches every address (use --all to remove every block)")
    conf = DaemonConf(config)
    need_root("unblock")
    reply = daemon_request(conf, "unblock", networks=nets, all=all_, ignore=ignore, covering=covering, local=local)
    if reply is None:
        N, ledger = open_ledger(conf.need())
        try:
            if all_:
                reply = {"unblocked": ledger.unblock_all(), "fleet_kept": len(ledger.store.fleet_blocks()) if ledger.store else 0}
            else:
                lifted = unblock_fleet_offline(conf.cfg, ledger, nets, local)
                res = ledger.unblock(nets, covering=covering)
                not_blocked = [n for n in res.not_blocked if n not in lifted]
                reply = {"unblocked": res.removed + [f"{n} (fleet)" for n in lifted], "covered": res.covered, "not_blocked": not_blocked}
            if ignore:
                for n in reply["unblocked"]:
                    ledger.nft.add_ignore(n)
        except N.NftError as e:
            fail(f"unblock failed: {e}", EXIT_RUNTIME)
    removed = reply.get("unblocked", [])
    if ignore and removed and conf.cfg is not None:
        add_to_ignore_file(conf.cfg, removed)
    elif ignore and removed:
        typer.echo(
            "nfsentry: warning: ignored by the running daemon, but not recorded in an ignore file (the configuration does not load)",
            err=True,
        )
    if removed or all_:
        typer.echo(f"unblocked {len(removed)}: {', '.join(removed) if removed else '(nothing was blocked)'}")
    if reply.get("fleet_kept"):
        typer.echo(
            f"{reply['fleet_kept']} fleet block(s) stay (pulled from the LAPI): nfsentry unblock ADDR deletes one at the LAPI, --local lifts it here only"
        )
    for target, by in (reply.get("covered") or {}).items():
        typer.echo(f"{target} is inside {', '.join(by)}, which stays blocked: unblock {by[0]}, or repeat with --covering", err=True)
    for target in reply.get("not_blocked") or []:
        typer.echo(f"{target} is not blocked", err=True)
    if not all_ and (reply.get("covered") or reply.get("not_blocked")):
        raise typer.Exit(EXIT_RUNTIME)


def unblock_fleet_offline(cfg, ledger, nets: list[str], local: bool) -> list[str]:
    """`unblock` with no daemon running: the pulled blocks of ``nets`` leave the fleet sets and the
    database; their decisions are deleted at the LAPI first (not ``local``) or remembered as lifted
    here (``local``), so the next pull does not bring them back."""
    from nfsentry.ledger.fleet import lift_offline

    if ledger.store is None:
        return []
    held = {r["network"]: r for r in ledger.store.fleet_blocks()}
    mine = [n for n in nets if n in held]
    if mine and not local:
        from nfsentry.fleet.lapi import Lapi, LapiError

        f = cfg["fleet"]
        if not f["enabled"]:
            fail(f"{mine[0]} is a fleet block and [fleet] is not enabled here: use --local to lift it on this host only", EXIT_RUNTIME)
        lapi = Lapi(
            f["url"], f["machine_id"], f["password"], f["api_key"], [f["scenario"]], cfg.durations["timeout"], f["cert"], f["key"], f["ca"]
        )
        try:
            for n in mine:
                did = held[n].get("decision_id")
                lapi.delete(n, [did] if did is not None else None)
        except LapiError as e:
            fail(f"lifting the fleet block failed, nothing changed: {e} (--local lifts it on this host only)", EXIT_RUNTIME)
        finally:
            lapi.close()
    for n in mine:
        lift_offline(ledger.nft, ledger.store, held[n], local, time.time())
    return mine


def add_to_ignore_file(cfg, nets: list[str]) -> None:
    """--ignore persists: append to the first [ignore] file, or /etc/nfsentry/ignore."""
    path = Path(cfg["ignore"]["files"][0]) if cfg["ignore"]["files"] else Path("/etc/nfsentry/ignore")
    try:
        known = {e["network"] for e in ignore_file_entries(path)} if path.exists() else set()
        append_ignore_lines(path, [n for n in nets if n not in known])
        if not cfg["ignore"]["files"]:
            typer.echo(f"added to {path}; list it in [ignore] files to keep it ignored after a restart")
    except OSError as e:
        typer.echo(f"nfsentry: warning: could not record the ignore entry in {path}: {e.strerror}", err=True)


# == ignore =========================================================================================
def ignore_file_entries(path: Path) -> list[dict]:
    """The entries of a PortSentry-style ignore file, as the configuration reads them (the first
    word of a line; '#' starts a comment; text after the address is a note), with line numbers.
    OSError when it cannot be read; a bad entry: its one-line error, exit 2."""
    from nfsentry.core.addrs import normalize_network

    out = []
    for num, line in enumerate(path.read_text(encoding="utf-8", errors="replace").splitlines(), 1):
        fields = line.split("#", 1)[0].split(None, 1)
        if not fields:
            continue
        try:
            net = normalize_network(fields[0])
        except ValueError as e:
            fail(f"{path}:{num}: {e}")
        note = line.strip()[len(fields[0]) :].strip()  # what follows the address, comment included
        out.append({"network": net, "source": f"{path}:{num}", "note": note, "file": str(path), "line": num})
    return out


def append_ignore_lines(path: Path, nets: list[str]) -> None:
    if not nets:
        return
    path.parent.mkdir(parents=True, exist_ok=True)
    new = not path.exists()
    with path.open("a", encoding="utf-8") as f:
        if not new and path.stat().st_size and not path.read_bytes().endswith(b"\n"):
            f.write("\n")
        f.writelines(n + "\n" for n in nets)
    if new:
        os.chmod(path, 0o644)


def remove_ignore_lines(path: Path, lines: set[int]) -> None:
    """Rewrite ``path`` without these line numbers (atomically, keeping its mode)."""
    import tempfile

    text = path.read_text(encoding="utf-8", errors="replace").splitlines(keepends=True)
    kept = "".join(line for num, line in enumerate(text, 1) if num not in lines)
    fd, tmp = tempfile.mkstemp(prefix=f".{path.name}.", dir=path.parent)
    try:
        with os.fdopen(fd, "w", encoding="utf-8") as f:
            f.write(kept)
        os.chmod(tmp, path.stat().st_mode & 0o7777)
        os.replace(tmp, path)
    except BaseException:
        Path(tmp).unlink(missing_ok=True)
        raise


def configured_ignores(cfg) -> list[dict]:
    """The ignore list the admin manages: [ignore] addresses, then each file's entries."""
    from nfsentry.core.addrs import normalize_network

    rows = []
    for a in cfg["ignore"]["addresses"]:
        rows.append({"network": normalize_network(a), "source": f"[ignore] addresses of {cfg.path or 'built-in defaults'}", "note": ""})
    for f in cfg["ignore"]["files"]:
        path = Path(f)
        try:
            rows += ignore_file_entries(path)
        except FileNotFoundError:
            continue  # (only the built-in default may be missing: the configuration loaded)
        except OSError as e:
            fail(f"cannot read ignore file {path}: {e.strerror}")
    return rows


IGNORE_COLS = [Col("network", "key"), Col("source", "text"), Col("note", "text")]


@ignore_app.command("list")
def ignore_list(
    config: str | None = ConfigOpt,
    all_: bool = typer.Option(
        False, "--all", "-a", help="also what nfsentry never blocks on its own: own addresses, gateways, resolvers, your SSH session"
    ),
    output: str | None = output_option(),
    as_json: bool = json_option(),
    wide: bool = wide_option(),
):
    """List the ignore list ([ignore] addresses and files); --all: everything never blocked."""
    from nfsentry.ledger import neverblock as NB

    fmt = choose(output, as_json)
    conf = DaemonConf(config)
    cfg = conf.need()
    rows = configured_ignores(cfg)
    if all_:
        ig = cfg["ignore"]
        facts = []
        if ig["own_addresses"]:
            facts += [(n, "own address") for n in sorted(NB.own_addresses())]
        if ig["gateways"]:
            facts += [(n, "default gateway") for n in sorted(NB.gateways())]
        if ig["resolvers"]:
            facts += [(n, f"resolver ({ig['resolv_conf']})") for n in sorted(NB.resolvers(ig["resolv_conf"]))]
        ssh = NB.ssh_client()
        if ssh:
            facts.append((ssh, "your SSH session"))
        rows += [{"network": canonical_text(n), "source": src, "note": ""} for n, src in facts]
        reply = daemon_request(conf, "status") if os.geteuid() == 0 else None
        seen = {r["network"] for r in rows}
        for n in (reply or {}).get("never_block_list") or []:
            if canonical_text(n) not in seen:
                rows.append({"network": canonical_text(n), "source": "the running daemon (not in a file: gone at restart)", "note": ""})
    emit(
        fmt,
        IGNORE_COLS,
        rows,
        lambda r: [r["network"], r["source"], r["note"] or "-"],
        wide=wide,
        nothing="the ignore list is empty",
        as_json=lambda items: [{k: r.get(k) for k in ("network", "source", "note")} for r in items],
    )


def canonical_text(net: str) -> str:
    """ "198.18.0.1/32" -> "198.18.0.1" (the form the ignore list and the kernel write)."""
    from nfsentry.core.addrs import normalize_network

    return normalize_network(net, allow_everything=True)


def ignore_target(text: str) -> str:
    from nfsentry.core.addrs import normalize_network

    try:
        return normalize_network(text)
    except ValueError as e:
        fail(str(e))
    raise AssertionError  # (fail raised)


@ignore_app.command("add")
def ignore_add(network: str = typer.Argument(..., metavar="ADDR|ADDR/PREFIX"), config: str | None = ConfigOpt):
    """Ignore a source from now on: added to the first [ignore] file, and applied to the running
    daemon at once (without one, to the loaded ruleset's ignore sets)."""
    import ipaddress

    net = ignore_target(network)
    need_root("ignore add")
    conf = DaemonConf(config)
    cfg = conf.need()
    files = cfg["ignore"]["files"]
    if not files:
        fail(f'no ignore file: list one in [ignore] files of {cfg.path or "the configuration"} (e.g. files = ["/etc/nfsentry/ignore"])')
    path = Path(files[0])
    rows = configured_ignores(cfg)
    want = ipaddress.ip_network(net)
    holder = next(
        (
            r
            for r in rows
            if ipaddress.ip_network(r["network"]).version == want.version and want.subnet_of(ipaddress.ip_network(r["network"]))
        ),  # type: ignore[arg-type]
        None,
    )
    if holder is None:
        try:
            append_ignore_lines(path, [net])
        except OSError as e:
            fail(f"cannot write {path}: {e.strerror} (nothing changed)", EXIT_RUNTIME)
        where = f"added to {path}"
    else:
        where = "already in " + (
            holder["source"] if holder["network"] == net else f"the ignore list, inside {holder['network']} ({holder['source']})"
        )
    reply = daemon_request(conf, "ignore", network=net)
    if reply is not None:
        now = "the running daemon ignores it now"
    else:
        now = "nfsentry ignores it when it starts" + (" (the loaded ruleset does already)" if kernel_ignore(cfg, net) else "")
    typer.echo(visible(f"ignored {net}: {where}; {now}"))


def kernel_ignore(cfg, net: str) -> bool:
    """No daemon: the loaded ruleset's ignore sets take ``net`` too (the kernel-side block reads
    them while no daemon runs). False when no ruleset is loaded."""
    N, nft = get_nft(cfg)
    try:
        if not nft.loaded():
            return False
        nft.add_ignore(net)
        return True
    except N.NftError as e:
        fail(f"added to the ignore file, but the loaded ruleset refused it: {e}", EXIT_RUNTIME)
    return False


@ignore_app.command("del")
def ignore_del(network: str = typer.Argument(..., metavar="ADDR|ADDR/PREFIX"), config: str | None = ConfigOpt):
    """Stop ignoring a source: its lines leave the [ignore] files, and the running daemon (or the
    loaded ruleset) no longer ignores it."""
    import ipaddress

    from nfsentry.ledger.neverblock import never_block_networks

    net = ignore_target(network)
    need_root("ignore del")
    conf = DaemonConf(config)
    cfg = conf.need()
    rows = configured_ignores(cfg)
    exact = [r for r in rows if r["network"] == net]
    in_files = [r for r in exact if "file" in r]
    if not in_files:
        if exact:
            fail(f"{net} is in [ignore] addresses of {cfg.path or 'the configuration'}: remove it there, then `nfsentry reload`")
        want = ipaddress.ip_network(net)
        holder = next(
            (
                r
                for r in rows
                if ipaddress.ip_network(r["network"]).version == want.version and want.subnet_of(ipaddress.ip_network(r["network"]))
            ),  # type: ignore[arg-type]
            None,
        )
        if holder is not None:
            fail(f"{net} is not in the ignore list itself: it lies inside {holder['network']} ({holder['source']}), which stays")
        fail(f"{net} is not in the ignore list ({', '.join(cfg['ignore']['files']) or 'no ignore file'})")
    per_file: dict[str, set[int]] = {}
    for r in in_files:
        per_file.setdefault(r["file"], set()).add(r["line"])
    for f, lines in per_file.items():
        try:
            remove_ignore_lines(Path(f), lines)
        except OSError as e:
            fail(f"cannot rewrite {f}: {e.strerror} (nothing changed)", EXIT_RUNTIME)
    where = ", ".join(r["source"] for r in in_files)
    reply = daemon_request(conf, "unignore", network=net)
    still = False
    if reply is not None:
        now, still = "the running daemon no longer ignores it", bool(reply.get("still"))
    else:
        now = "nfsentry no longer ignores it when it starts"
        fresh = load_config(config)
        nets = never_block_networks(fresh)
        still = net in nets
        N, nft = get_nft(fresh)
        try:
            if nft.loaded():
                nft.set_ignore(nets)
                now += " (nor does the loaded ruleset)"
        except N.NftError as e:
            fail(f"removed from the ignore file, but the loaded ruleset refused the change: {e}", EXIT_RUNTIME)
    typer.echo(visible(f"no longer ignored: {net} (removed {where}); {now}"))
    if still:
        typer.echo(f"{net} is still never blocked: it is an own address, gateway, resolver or your SSH session (ignore list --all)")


# == history ========================================================================================
def parse_when(text: str | None, opt: str, now: float | None = None) -> float | None:
    """A time as journalctl takes it: "now", "today", "yesterday", "tomorrow", "1h ago", "-1h",
    "+1h", a bare duration (ago: "2h", "7d"), "HH:MM[:SS]" (today), or a date "2026-11-22",
    "2026-11-22 10:00[:00]" / "2026-11-22T10:00". None: not given."""
    from nfsentry.core.units import parse_duration

    if text is None:
        return None
    now = time.time() if now is None else now
    t = " ".join(text.strip().lower().split())
    midnight = dt.datetime.fromtimestamp(now).replace(hour=0, minute=0, second=0, microsecond=0)
    named = {"now": now, "today": midnight.timestamp()}
    named["yesterday"] = (midnight - dt.timedelta(days=1)).timestamp()
    named["tomorrow"] = (midnight + dt.timedelta(days=1)).timestamp()
    if t in named:
        return named[t]
    sign, body = -1, t
    if t.endswith(" ago"):
        body = t[:-4]
    elif t[:1] in "+-":
        sign, body = (1 if t[0] == "+" else -1), t[1:]
    try:
        return now + sign * parse_duration(body.replace(" ", ""))
    except ValueError:
        pass
    try:
        if re.fullmatch(r"\d{1,2}:\d{2}(:\d{2})?", t):
            h, m, *sec = (int(x) for x in t.split(":"))
            return midnight.replace(hour=h, minute=m, second=sec[0] if sec else 0).timestamp()
        return dt.datetime.fromisoformat(t).timestamp()
    except ValueError:
        fail(f"bad {opt} {text!r}: use a time like 1h ago, 2h, yesterday, today, 18:00, 2026-11-22 or 2026-11-22 10:00")
    return None


def parse_since(text: str | None) -> float | None:
    return parse_when(text, "--since")


HISTORY_COLS = [
    Col("id", right=True),
    Col("time"),
    Col("event"),
    Col("source", "key"),
    Col("port"),
    Col("label"),
    Col("action", wide=True),
    Col("reason", "text"),
]


def history_row(r: dict, short_time: bool = False) -> list:
    ts = r.get("ts")
    when = fmt_ts(ts)
    if short_time and ts and dt.datetime.fromtimestamp(ts).year == dt.datetime.now().year:
        when = dt.datetime.fromtimestamp(ts).strftime("%m-%d %H:%M:%S")
    proto, port = r.get("proto"), r.get("port")
    return [
        r.get("id", "-"),
        when,
        r.get("event") or "-",
        r.get("network") or r.get("src") or "-",
        f"{proto or '-'}/{port}" if port else (proto or "-"),
        r.get("label") or "-",
        r.get("action") or "-",
        r.get("reason") or "-",
    ]


def open_history(config: str | None):
    """The database, read-only (None when there is none yet)."""
    from nfsentry.sinks.store import Store, StoreError

    cfg = load_config(config)
    try:  # the state directory is 0700 and the database 0600: root only
        exists = cfg.db_path.exists()
        if exists and not os.access(cfg.db_path, os.R_OK):
            raise PermissionError
    except PermissionError:
        fail(f"permission denied: {cfg.db_path} is readable by root only", EXIT_NOPERM)
    if not exists:
        return None
    try:
        return Store(cfg.db_path, readonly=True)
    except StoreError as e:
        fail(str(e), EXIT_RUNTIME)


@history_app.callback(invoke_without_command=True)
def history(
    ctx: typer.Context,
    since: str | None = typer.Option(
        None, "--since", "-S", metavar="TIME", help="from this time: 1h ago, yesterday, 18:00, 2026-11-22 ..."
    ),
    until: str | None = typer.Option(None, "--until", "-U", metavar="TIME", help="before this time (same forms)"),
    source: str | None = typer.Option(None, "--source", metavar="ADDR/PREFIX", help="only this address, or what lies inside this prefix"),
    label: str | None = typer.Option(None, "--label", metavar="LABEL", help="only this scan label (SYN, FIN, UDP, ...)"),
    limit: int = typer.Option(200, "--limit", "-n", metavar="N", help="the last N rows"),
    config: str | None = ConfigOpt,
    output: str | None = output_option(),
    as_json: bool = json_option(),
    wide: bool = wide_option(),
):
    """Past detections, blocks and unblocks (`history show ID`: one of them in full)."""
    if ctx.invoked_subcommand is not None:
        return
    from nfsentry.core.addrs import normalize_network
    from nfsentry.sinks.store import StoreError

    start, end = parse_when(since, "--since"), parse_when(until, "--until")
    if source:
        try:
            source = normalize_network(source)
        except ValueError as e:
            fail(str(e))
    if limit < 1:
        fail("--limit must be at least 1")
    fmt = choose(output, as_json)
    s = open_history(config)
    rows = []
    if s is not None:
        try:
            rows = s.history(start, source, limit, until=end, label=label)
        except StoreError as e:
            fail(str(e), EXIT_RUNTIME)
        finally:
            s.close()
    emit(fmt, HISTORY_COLS, rows, lambda r: history_row(r, short_time=fmt == "human" and not wide), wide=wide, nothing="no history")


@history_app.command("show")
def history_show(
    entry: int = typer.Argument(..., metavar="ID", help="a row's id (the first column of `history`)"),
    config: str | None = ConfigOpt,
    output: str | None = output_option(),
    as_json: bool = json_option(),
):
    """One history row in full: every field, the whole reason."""
    from nfsentry.cli.output import tsv_field

    fmt = choose(output, as_json)
    s = open_history(config)
    ev = s.history_entry(entry) if s is not None else None
    if s is not None:
        s.close()
    if ev is None:
        fail(f"no history row {entry}")
    if fmt == "json":
        typer.echo(json.dumps(ev, sort_keys=True, default=str))
        return
    first = ["id", "ts", "event", "network", "src", "reason"]
    keys = [k for k in first if k in ev] + sorted(k for k in ev if k not in first)
    if fmt == "tsv":
        typer.echo("key\tvalue")
        typer.echo("\n".join(f"{k}\t{tsv_field(show_value(k, ev[k]))}" for k in keys))
        return
    width = max(len(k) for k in keys)
    for k in keys:
        typer.echo(f"{k:<{width}}  {visible(show_value(k, ev[k]))}")


def show_value(key: str, v) -> str:
    if key in ("ts", "expires", "expired", "first_seen") and isinstance(v, (int, float)) and v:
        return f"{fmt_ts(v)} ({v})"
    if isinstance(v, (list, dict)):
        return json.dumps(v, default=str)
    return "-" if v is None else str(v)


# == rules ==========================================================================================
@rules_app.command("show")
def rules_show(
    config: str | None = ConfigOpt, backend: str = typer.Option("native", "--backend", metavar="native|compat", help="native or compat")
):
    """Print the ruleset rendered from the configuration (what `load` would load)."""
    from nfsentry import nft as N
    from nfsentry.config.derive import ruleset_spec

    cfg = load_config(config)
    if backend not in ("native", "compat"):
        fail("--backend must be native or compat")
    typer.echo(N.render(ruleset_spec(cfg, [str(n) for n in cfg.ignore]), backend), nl=False)


# the package's own folder, a source checkout's rules/ (next to the package), the installed copy
_HERE = Path(__file__).resolve()
RULE_DIRS = (_HERE.parents[1] / "rules", _HERE.parents[2] / "rules", Path("/usr/share/nfsentry/rules"))


def rules_file(name: str | None) -> Path | None:
    """A built-in ruleset name or a path, never confused: a name without a slash is a built-in
    ruleset if there is one by that name (even when the current directory holds a folder or file
    of that name); otherwise it is a path, used only if it is a regular file."""
    if name is None:
        return None
    builtin = sorted({f.stem for base in RULE_DIRS if base.is_dir() for f in base.glob("*.nft")})
    if "/" not in name:
        for base in RULE_DIRS:
            for cand in (base / f"{name}.nft", base / name):
                if cand.is_file():
                    return cand
    p = Path(name)
    if p.is_file():
        return p
    names = ", ".join(builtin) or "none installed"
    if p.is_dir():
        fail(f"{name}: is a directory, not a rule file (give a file, or a built-in name: {names})")
    if p.exists():
        fail(f"{name}: not a regular file (give a file, or a built-in name: {names})")
    fail(f"unknown rule file {name!r} (give a path or a built-in name: {names})")


def _rules_apply(file: str | None, config: str | None, check: bool) -> None:
    """`rules load` and `rules check`: a provided file or the ruleset rendered from the config."""
    cfg = load_config(config)
    path = rules_file(file)
    N, nft = get_nft(cfg)
    from nfsentry.config.derive import ruleset_spec
    from nfsentry.ledger.neverblock import never_block_networks

    try:
        if path:
            (nft.check_file if check else nft.load_file)(str(path))
            typer.echo(f"{path}: ok" if check else f"loaded {path}")
        else:
            spec, backend = ruleset_spec(cfg, never_block_networks(cfg)), cfg["nft"]["backend"]
            if check:
                nft.check(spec, backend=backend)
                typer.echo("rendered ruleset: ok")
            else:
                nft.load(spec, backend=backend)
                typer.echo(f"loaded table inet {cfg['nft']['table']} (backend {nft.status().get('backend')})")
    except N.NftError as e:
        fail(f"{'check failed' if check else 'load failed, nothing changed'}: {e}", EXIT_RUNTIME)


@rules_app.command("load")
def rules_load(
    file: str | None = typer.Option(None, "--file", "-f", metavar="FILE", help="a file, or a name from rules/"),
    config: str | None = ConfigOpt,
):
    """Load nfsentry's ruleset atomically (rendered from the config, or a provided file)."""
    _rules_apply(file, config, check=False)


@rules_app.command("unload")
def rules_unload(config: str | None = ConfigOpt, force: bool = typer.Option(False, "--force", help="unload even while the daemon runs")):
    """Remove nfsentry's table and compat rules (nothing else). Refused while the daemon runs."""
    conf = DaemonConf(config)
    need_root("rules unload")
    reply = daemon_request(conf, "status")
    if reply is not None and not force:
        fail(
            f"the nfsentry daemon is running (pid {reply.get('pid', '?')}) and would lose its rules: "
            "stop it first (systemctl stop nfsentry), or repeat with --force",
            EXIT_RUNTIME,
        )
    if reply is not None:  # --force: through the daemon, which stops detecting and says so in status
        done = daemon_request(conf, "unload")
        typer.echo(
            f"removed table inet {done['table']}; the daemon keeps running without detecting or blocking "
            "(status: DEGRADED) until `nfsentry rules load`"
        )
        return
    cfg = conf.need()
    N, nft = get_nft(cfg)
    try:
        nft.unload()
    except N.NftError as e:
        fail(f"unload failed: {e}", EXIT_RUNTIME)
    typer.echo(f"removed table inet {cfg['nft']['table']}")


@rules_app.command("check")
def rules_check(
    file: str | None = typer.Option(None, "--file", "-f", metavar="FILE", help="a file, or a name from rules/"),
    config: str | None = ConfigOpt,
):
    """Check a ruleset with `nft -c` without loading it."""
    _rules_apply(file, config, check=True)


# == config =========================================================================================
@config_app.command("check")
def config_check(
    file: str | None = typer.Argument(None, metavar="FILE", help="default /etc/nfsentry/nfsentry.toml if present"),
    verbose: bool = typer.Option(False, "--verbose", "-v", help="also print the effective settings"),
    output: str | None = output_option(),
    as_json: bool = json_option(),
):
    """Validate a configuration file: its problems (exit 2), or one line saying it is ok (-v: the
    effective settings too)."""
    fmt = choose(output, as_json) if (output or as_json) else "human"
    cfg = load_config(file)
    eff = cfg.effective()
    if fmt == "json":
        typer.echo(json.dumps(eff, sort_keys=True, default=str))
        return
    if fmt == "tsv":
        from nfsentry.cli.output import tsv_field

        typer.echo("section\tkey\tvalue")
        for section, values in eff.items():
            for k, v in values.items():
                typer.echo(f"{section}\t{k}\t{tsv_field(json.dumps(v, default=str))}")
        return
    typer.echo(visible(f"{cfg.path or 'built-in defaults'}: ok"))
    if verbose:
        for section, values in eff.items():
            typer.echo(f"[{section}]")
            for k, v in values.items():
                typer.echo(visible(f"  {k} = {json.dumps(v, default=str)}"))


# == replay =========================================================================================
REPLAY_COLS = [
    Col("time"),
    Col("event"),
    Col("source", "key"),
    Col("port"),
    Col("label"),
    Col("action", wide=True),
    Col("for"),
    Col("reason", "text"),
]


def replay_row(ev: dict) -> list:
    ts = dt.datetime.fromtimestamp(ev["ts"]).strftime("%Y-%m-%d %H:%M:%S.%f")[:-3]
    block = ev["event"] == "block"
    return [
        ts,
        ev["event"],
        ev["network"] if block else ev["src"],
        f"{ev.get('proto') or '-'}/{ev.get('port') or '-'}",
        ev.get("label") or "-",
        ev.get("action") or "-",
        (fmt_left(ev["duration"]) if ev.get("duration") else "ever") if block else "-",
        ev.get("reason") or "-",
    ]


@app.command()
def replay(
    capture: str = typer.Argument(..., metavar="CAPTURE", help="a pcap/pcapng file"),
    config: str | None = ConfigOpt,
    local: list[str] = typer.Option(None, "--local", metavar="ADDR", help="address(es) of the protected host (default: guessed)"),
    output: str | None = output_option(),
    as_json: bool = json_option(),
    wide: bool = wide_option(),
):
    """Run the detection engine offline over a capture: what would have been detected and blocked."""
    fmt = choose(output, as_json)
    cfg = load_config(config)
    if not Path(capture).is_file():
        fail(f"{capture}: no such capture file")
    from nfsentry import replay as R

    try:
        events = R.replay(capture, cfg, local=local or None)
    except R.ReplayError as e:
        fail(str(e))
    emit(fmt, REPLAY_COLS, events, replay_row, wide=wide, nothing="nothing would have been detected")


# == reload =========================================================================================
@app.command()
def reload(config: str | None = ConfigOpt):
    """Make the running daemon read its configuration and ignore files again (like SIGHUP). A
    configuration that does not load, or a change that needs a restart, is refused (exit 1) and
    the running one stays."""
    conf = DaemonConf(config)
    need_root("reload")
    reply = daemon_request(conf, "reload")
    if reply is None:
        fail(f"the nfsentry daemon is not running (no control socket at {conf.socket}): nothing to reload", EXIT_NOT_RUNNING)
    typer.echo(visible(f"reloaded the running daemon's configuration from {reply.get('config') or 'its built-in defaults'}"))


@app.command()
def version():
    """Print the version."""
    typer.echo(f"nfsentry {__version__}")


from nfsentry.cli import portsentry as cli_portsentry  # noqa: E402  (import-portsentry)
from nfsentry.cli import run as cli_run  # noqa: E402  (run: the one module importing the daemon)
from nfsentry.cli import stats as cli_stats  # noqa: E402  (stats)

cli_run.register(app)
cli_stats.register(app)
cli_portsentry.register(app)


def main() -> None:
    app()


# == fleet ==========================================================================================
@fleet_app.command("status")
def fleet_status(config: str | None = ConfigOpt, output: str | None = output_option(), as_json: bool = json_option()):
    """The LAPI (reachable, last pull, last push), the outbox depth and the pulled blocks' counts."""
    fmt = choose(output, as_json) if (output or as_json) else "human"  # a report, not a table
    conf = DaemonConf(config)
    reply = daemon_request(conf, "fleet_status")
    if reply is not None:
        st = dict(reply.get("fleet") or {"enabled": False})
        st["running"] = True
    else:
        st = fleet_offline_status(conf.need())
    emit_report(fmt, st, fleet_lines)
    if st.get("enabled") and st.get("reachable") is False:
        raise typer.Exit(EXIT_RUNTIME)


def fleet_offline_status(cfg) -> dict:
    """No daemon: what the database holds, and whether the LAPI answers a TCP connection."""
    import socket
    import urllib.parse

    from nfsentry.sinks.store import Store, StoreError

    f = cfg["fleet"]
    st: dict = {"enabled": bool(f["enabled"]), "running": False, "url": f["url"] or None, "push": f["push"], "pull": f["pull"]}
    try:
        store = Store(cfg.db_path, readonly=True) if cfg.db_path.exists() else None
    except StoreError as e:
        fail(f"cannot read the database: {e}", EXIT_RUNTIME)
    if store is not None:
        rows = store.fleet_blocks()
        now = time.time()
        live = [r for r in rows if r["expires"] > now]
        st["outbox"] = store.outbox_depth()
        st["pulled"] = {
            "in_force": len(live),
            "in_force4": sum(r["family"] == 4 for r in live),
            "in_force6": sum(r["family"] == 6 for r in live),
        }
        store.close()
    if f["enabled"]:
        u = urllib.parse.urlsplit(f["url"])
        try:
            socket.create_connection((u.hostname, u.port or (443 if u.scheme == "https" else 80)), timeout=cfg.durations["timeout"]).close()
            st["reachable"] = True
        except OSError as e:
            st["reachable"], st["last_error"] = False, f"{f['url']}: {e.strerror or e}"
    return st


def fleet_lines(st: dict) -> list[str]:
    if not st.get("enabled"):
        return ["fleet: off ([fleet] enabled = false)"]
    reach = {True: "reachable", False: "UNREACHABLE", None: "not asked yet"}[st.get("reachable")]
    lines = [f"fleet: LAPI {st.get('url')} {reach}" + ("" if st.get("running") else " (daemon not running)")]
    if st.get("last_error"):
        lines.append(f"  last error:   {st['last_error']}")
    dirs = [d for d in ("push", "pull") if st.get(d)]
    lines.append(
        f"  directions:   {', '.join(dirs) or 'none'}"
        + (f" (pull every {st['pull_interval']:g}s)" if st.get("pull_interval") and st.get("pull") else "")
    )
    if st.get("running"):
        lines.append(f"  last pull:    {fmt_ago(st.get('last_pull'))}")
        lines.append(f"  last push:    {fmt_ago(st.get('last_push'))}")
    if st.get("outbox") is not None:
        lines.append(f"  outbox:       {st['outbox']} block(s) waiting to be pushed")
    p = st.get("pulled") or {}
    if p:
        lines.append(
            f"  pulled:       {p.get('in_force', 0)} in force (IPv4 {p.get('in_force4', 0)}, IPv6 {p.get('in_force6', 0)})"
            + (f", {p['waiting']} inside a broader prefix" if p.get("waiting") else "")
        )
        refused = p.get("refused") or {}
        if refused:
            lines.append(f"  refused:      {', '.join(f'{k} {v}' for k, v in sorted(refused.items()))}")
    c = st.get("counts") or {}
    if c:
        lines.append(
            f"  counts:       pushed {c.get('pushed', 0)}, pulls {c.get('pulls', 0)} (resyncs {c.get('resyncs', 0)}), errors: push {c.get('push_errors', 0)} pull {c.get('pull_errors', 0)}"
        )
    return lines
