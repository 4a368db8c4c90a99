"""The nfsentry command line: one typer app for everything an admin does.

Exit codes: 0 success; 1 runtime failure (kernel refused, daemon error); 2 bad input (address,
prefix, duration, file, configuration); 3 `status`: the daemon is not running; 77 not root /
no CAP_NET_ADMIN (sysexits EX_NOPERM).
"""

from __future__ import annotations

import datetime as dt
import json
import os
import time
from pathlib import Path

import typer

from nfsentry import __version__

app = typer.Typer(
    add_completion=True,
    no_args_is_help=True,
    rich_markup_mode=None,
    help="nfsentry: port-scan detection and in-kernel blocking for nftables (PortSentry reborn).",
)
rules_app = typer.Typer(no_args_is_help=True, help="Show, load, unload or check nfsentry's nftables ruleset.")
config_app = typer.Typer(no_args_is_help=True, help="Validate configuration files.")
app.add_typer(rules_app, name="rules")
app.add_typer(config_app, name="config")

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


def json_or_nothing(rows: list, as_json: bool, nothing: str) -> bool:
    """Print ``rows`` as JSON, or say there is nothing to list; True when that was all to print."""
    if as_json:
        typer.echo(json.dumps(rows, sort_keys=True, default=str))
        return True
    if not rows:
        typer.echo(nothing)
        return True
    return False


def print_table(title: str, columns: list[str], rows: list[list]) -> None:
    from rich.console import Console
    from rich.table import Table

    t = Table(title=title, show_lines=False)
    for c in columns:
        # addresses, times and numbers never wrap; free text (reasons) folds instead
        t.add_column(c, no_wrap=c not in ("reason",), overflow="fold")
    for r in rows:
        t.add_row(*[str(x) for x in r])
    Console().print(t)


ConfigOpt = typer.Option(None, "--config", "-c", help="configuration file (default /etc/nfsentry/nfsentry.toml if present)")


# == status =========================================================================================
@app.command()
def status(config: str | None = ConfigOpt, as_json: bool = typer.Option(False, "--json", help="machine-readable output")):
    """Is the daemon running; backend, ports and counters."""
    conf = DaemonConf(config)
    reply = daemon_request(conf, "status")
    if reply is None:
        conf.need()  # not running: a file that does not load is the error to report
        if as_json:
            typer.echo(json.dumps({"running": False}))
        else:
            typer.echo("nfsentry is not running")
        raise typer.Exit(EXIT_NOT_RUNNING)
    reply.pop("ok", None)
    reply["running"] = True
    degraded = reply.get("state") == "degraded"
    if as_json:
        typer.echo(json.dumps(reply, sort_keys=True, default=str))
        if degraded:
            raise typer.Exit(EXIT_RUNTIME)
        return
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
        f"  kernel-side block: {kernel_block_text(reply.get('kernel_block') or {}, c)}",
        f"  packets queued:    {c.get('queued', 0)}   detections: {c.get('detections', 0)}   blocks: {c.get('blocks', 0)}",
        f"  currently blocked: {reply.get('blocked', '?')}",
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
    if degraded:
        lines.insert(1, f"  DEGRADED: {reply.get('degraded')}")
    typer.echo("\n".join(lines))
    if degraded:
        raise typer.Exit(EXIT_RUNTIME)


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


@app.command("blocked")
def blocked_cmd(
    config: str | None = ConfigOpt,
    family: int | None = typer.Option(None, "--family", help="4 or 6"),
    as_json: bool = typer.Option(False, "--json"),
):
    """List current blocks (alias: list)."""
    if family not in (None, 4, 6):
        fail("--family must be 4 or 6")
    cfg = load_config(config)
    rows = current_blocks(cfg, family)
    if as_json:
        typer.echo(json.dumps(rows, sort_keys=True))
        return
    if not rows:
        typer.echo("no blocked sources")
        return
    print_table(
        f"{len(rows)} blocked",
        ["address/prefix", "reason", "labels", "ports", "first seen", "expires in", "offences"],
        [
            [
                r["network"],
                r["reason"][:60],
                ",".join(r["labels"]) or "-",
                ",".join(map(str, r["ports"][:8])) or "-",
                fmt_ts(r["first_seen"]),
                fmt_left(r["expires_in"]),
                r["offences"],
            ]
            for r in rows
        ],
    )


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
    address: str = typer.Argument(..., help="ADDR or ADDR/PREFIX"),
    for_: str | None = typer.Option(None, "--for", help="duration (e.g. 30m, 2h, 7d; 0 = until unblocked)"),
    reason: str | None = typer.Option(None, "--reason", help="why (default: manual block)"),
    config: str | None = ConfigOpt,
    force: bool = typer.Option(False, "--force", help="allow blocking a never-block address (not your SSH session)"),
):
    """Block a host or prefix by hand. A block already in force is never shortened."""
    from nfsentry.core.addrs import normalize_block_target
    from nfsentry.ledger.neverblock import ssh_client
    from nfsentry.ledger.rule import kernel_timeout

    conf = DaemonConf(config)
    # without a loadable file the running daemon's own default duration applies (None: not sent)
    duration = parse_duration_opt(for_, conf.cfg.durations["block_duration"] if conf.cfg else None)
    try:
        if duration is not None:
            kernel_timeout(duration)
    except ValueError as e:
        fail(str(e))
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


@app.command()
def unblock(
    addresses: list[str] = typer.Argument(None, help="ADDR or ADDR/PREFIX ..."),
    all_: bool = typer.Option(False, "--all", help="remove every block (kernel and database)"),
    covering: bool = typer.Option(False, "--covering", help="also lift broader blocks that cover an address"),
    ignore: bool = typer.Option(False, "--ignore", help="also add them to the ignore list"),
    config: str | None = ConfigOpt,
):
    """Remove blocks from the kernel, the running engine and the database (for good).

    A prefix lifts every block inside it. An address inside a broader block (an IPv6 /64, a
    prefix) is lifted only with --covering; otherwise the block that covers it is named."""
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
    reply = daemon_request(conf, "unblock", networks=nets, all=all_, ignore=ignore, covering=covering)
    if reply is None:
        N, ledger = open_ledger(conf.need())
        try:
            if all_:
                reply = {"unblocked": ledger.unblock_all()}
            else:
                res = ledger.unblock(nets, covering=covering)
                reply = {"unblocked": res.removed, "covered": res.covered, "not_blocked": res.not_blocked}
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
    for target, by in (reply.get("covered") or {}).items():
        typer.echo(f"{target} is inside {', '.join(by)}, which stays blocked: unblock {by[0]}, or repeat with --covering", err=True)
    for target in reply.get("not_blocked") or []:
        typer.echo(f"{target} is not blocked", err=True)
    if not all_ and (reply.get("covered") or reply.get("not_blocked")):
        raise typer.Exit(EXIT_RUNTIME)


def add_to_ignore_file(cfg, nets: list[str]) -> None:
    """--ignore persists: append to the first [ignore] file, or /etc/nfsentry/ignore."""
    path = Path(cfg["ignore"]["files"][0]) if cfg["ignore"]["files"] else Path("/etc/nfsentry/ignore")
    try:
        path.parent.mkdir(parents=True, exist_ok=True)
        existing = path.read_text().split() if path.exists() else []
        with path.open("a") as f:
            for n in nets:
                if n not in existing:
                    f.write(n + "\n")
        if not cfg["ignore"]["files"]:
            typer.echo(f"added to {path}; list it in [ignore] files to keep it ignored after a restart")
    except OSError as e:
        typer.echo(f"nfsentry: warning: could not record the ignore entry in {path}: {e.strerror}", err=True)


# == history ========================================================================================
def parse_since(text: str | None) -> float | None:
    if text is None:
        return None
    from nfsentry.core.units import parse_duration

    try:
        return time.time() - parse_duration(text)
    except ValueError:
        pass
    try:
        return dt.datetime.fromisoformat(text).timestamp()
    except ValueError:
        fail(f"bad --since {text!r}: use a duration (2h, 7d) or a date (2026-11-22 or 2026-11-22T10:00)")


@app.command()
def history(
    since: str | None = typer.Option(None, "--since", help="duration ago (2h) or ISO date"),
    source: str | None = typer.Option(None, "--source", help="only this address/prefix"),
    limit: int = typer.Option(200, "--limit"),
    config: str | None = ConfigOpt,
    as_json: bool = typer.Option(False, "--json"),
):
    """Past detections, blocks and unblocks."""
    from nfsentry.core.addrs import normalize_network
    from nfsentry.sinks.store import Store, StoreError

    start = parse_since(since)
    if source:
        try:
            source = normalize_network(source)
        except ValueError as e:
            fail(str(e))
    cfg = load_config(config)
    try:  # the state directory is 0700 and the database 0600: root only
        exists = cfg.db_path.exists()
        if exists and not os.access(cfg.db_path, os.R_OK):
            raise PermissionError
    except PermissionError:
        fail(f"permission denied: {cfg.db_path} is readable by root only", EXIT_NOPERM)
    if not exists:
        rows = []
    else:
        try:
            s = Store(cfg.db_path, readonly=True)
            rows = s.history(start, source, limit)
            s.close()
        except StoreError as e:
            fail(str(e), EXIT_RUNTIME)
    if json_or_nothing(rows, as_json, "no history"):
        return
    print_table(
        "history",
        ["time", "event", "source", "proto/port", "label", "action", "reason"],
        [
            [
                fmt_ts(r["ts"]),
                r["event"],
                r.get("network") or r.get("src"),
                f"{r.get('proto') or '-'}/{r.get('port') or '-'}",
                r.get("label") or "-",
                r.get("action") or "-",
                (r.get("reason") or "")[:50],
            ]
            for r in rows
        ],
    )


# == rules ==========================================================================================
@rules_app.command("show")
def rules_show(config: str | None = ConfigOpt, backend: str = typer.Option("native", "--backend", help="native or compat")):
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
def rules_load(file: str | None = typer.Option(None, "--file", "-f", help="a file, or a name from rules/"), config: str | None = ConfigOpt):
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
def rules_check(file: str | None = typer.Option(None, "--file", "-f"), config: str | None = ConfigOpt):
    """Check a ruleset with `nft -c` without loading it."""
    _rules_apply(file, config, check=True)


# == config =========================================================================================
@config_app.command("check")
def config_check(file: str | None = typer.Argument(None), as_json: bool = typer.Option(False, "--json")):
    """Validate a configuration file and print the effective settings."""
    cfg = load_config(file)
    eff = cfg.effective()
    if as_json:
        typer.echo(json.dumps(eff, sort_keys=True, default=str))
        return
    typer.echo(f"{cfg.path or 'built-in defaults'}: ok")
    for section, values in eff.items():
        typer.echo(f"[{section}]")
        for k, v in values.items():
            typer.echo(f"  {k} = {json.dumps(v, default=str)}")


# == replay =========================================================================================
@app.command()
def replay(
    capture: str = typer.Argument(..., help="a pcap/pcapng file"),
    config: str | None = ConfigOpt,
    as_json: bool = typer.Option(False, "--json"),
    local: list[str] = typer.Option(None, "--local", help="address(es) of the protected host (default: guessed)"),
):
    """Run the detection engine offline over a capture: what would have been detected and blocked."""
    cfg = load_config(config)
    if not Path(capture).is_file():
        fail(f"{capture}: no such capture file")
    from nfsentry import replay as R

    try:
        events = R.replay(capture, cfg, local=local or None)
    except R.ReplayError as e:
        fail(str(e))
    if json_or_nothing(events, as_json, "nothing would have been detected"):
        return
    for ev in events:
        ts = dt.datetime.fromtimestamp(ev["ts"]).strftime("%Y-%m-%d %H:%M:%S.%f")[:-3]
        if ev["event"] == "block":
            typer.echo(f"{ts} BLOCK {ev['network']} for {fmt_left(ev['duration']) if ev['duration'] else 'ever'} ({ev['reason']})")
        else:
            typer.echo(f"{ts} {ev['action'].upper():6} {ev['src']} {ev['proto']}/{ev['port']} {ev['label']} ({ev['reason']})")


@app.command()
def version():
    """Print the version."""
    typer.echo(f"nfsentry {__version__}")


from nfsentry.cli import portsentry as cli_portsentry  # noqa: E402  (import-portsentry)
from nfsentry.cli import run as cli_run  # noqa: E402  (run: the one module importing the daemon)

cli_run.register(app)
cli_portsentry.register(app)


def main() -> None:
    app()
