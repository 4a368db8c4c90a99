"""Pure derivations of a validated Config: the engine's EngineConfig, its safety valves, and the
nftables RulesetSpec. Used by the daemon (start-up and reload), the CLI and replay; no state, no I/O.
"""

from __future__ import annotations

from collections.abc import Callable
from typing import TYPE_CHECKING

from nfsentry.config.schema import Config

if TYPE_CHECKING:  # imported where used: the CLI's commands need not load the engine
    from nfsentry.core.engine import EngineConfig
    from nfsentry.core.valves import Valves
    from nfsentry.nft.spec import KernelBlock, RulesetSpec


def engine_config(cfg: Config) -> EngineConfig:
    from nfsentry.core.engine import EngineConfig

    d, r = cfg["detection"], cfg["response"]
    durations = cfg.durations
    # fmt: off
    return EngineConfig(
        scan_trigger=d["scan_trigger"], window_ports=d["window_ports"], window_seconds=durations["window_seconds"],
        instant_labels=frozenset(d["instant_labels"]), respond={"tcp": r["tcp"], "udp": r["udp"]},
        block_duration=durations["block_duration"], block_max_duration=durations["max_block_duration"],
        escalation_factor=float(r["escalation_factor"]), ipv6_prefix=d["ipv6_prefix"], max_sources=d["max_sources"],
        max_ports_per_source=d["max_ports_per_source"])
    # fmt: on


def build_valves(cfg: Config, never_block: list[str], blocked_count: Callable[[], int]) -> Valves:
    """The engine's safety valves (``[response] max_blocks_per_minute``, ``max_blocked``)."""
    from nfsentry.core.valves import Valves

    r = cfg["response"]
    return Valves(r["max_blocks_per_minute"], r["max_blocked"], never_block, blocked_count)


def kernel_block(cfg: Config) -> KernelBlock | None:
    """The kernel-side block of first probes the configuration allows (None: none): the packets
    the engine blocks on any hit (core.engine.first_hit_reactions), for each protocol whose
    response is ``block``, outside dry-run and observe mode; the first offence's duration."""
    from nfsentry.core.engine import first_hit_reactions
    from nfsentry.core.units import kernel_timeout
    from nfsentry.nft.spec import KernelBlock

    r = cfg["response"]
    if not r["kernel_block"] or r["dry_run"] or cfg["monitor"]["mode"] == "observe":
        return None
    fh = first_hit_reactions(engine_config(cfg))
    kb = KernelBlock(
        tcp_flags=tuple(sorted(fh.tcp_flags)) if r["tcp"] == "block" else (),
        udp=fh.udp and r["udp"] == "block",
        timeout=kernel_timeout(cfg.durations["block_duration"]),
        rate=kernel_rate(r["kernel_block_rate"], r["max_blocks_per_minute"]),
        size=r["max_blocked"],
    )
    return kb if kb.active else None


def kernel_rate(rate: str, max_per_minute: int) -> str:
    """The kernel-side block's limit: ``kernel_block_rate``, or ``max_blocks_per_minute`` when that
    is stricter (the kernel then never blocks more than the daemon's valve admits)."""
    n, unit = rate.split("/")
    per_minute = int(n) * (60 if unit == "second" else 1)
    return f"{max_per_minute}/minute" if max_per_minute and max_per_minute < per_minute else rate


def ruleset_spec(cfg: Config, never_block: list[str]) -> RulesetSpec:
    from nfsentry.nft.spec import RulesetSpec

    m, n = cfg["monitor"], cfg["nft"]
    # fmt: off
    return RulesetSpec(
        bypass=n["fail_open"], variant=m["mode"], tcp_ports=list(cfg.tcp_ports), udp_ports=list(cfg.udp_ports),
        ignore=list(never_block), queue=n["queue"], ftp_queue=n["ftp_queue"], ftp=m["ftp"], inuse=m["inuse"],
        mark=n["mark"], table=n["table"], ipv6_prefix=cfg["detection"]["ipv6_prefix"], protect=list(m["protect"]),
        kernel_block=kernel_block(cfg), recent_service_grace=cfg.durations["recent_service_grace"],
        before_input=m["before_input"], nflog_group=n["nflog_group"])
    # fmt: on
