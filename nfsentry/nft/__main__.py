"""``python -m nfsentry.nft``: render, load, check and inspect the ruleset by hand (debugging),
and ``--write-shipped DIR`` (``make rules``)."""

from __future__ import annotations

import argparse
import json
import sys
from typing import Any

from nfsentry.nft.client import Nft
from nfsentry.nft.errors import NftError
from nfsentry.nft.render import render, write_shipped
from nfsentry.nft.spec import BACKENDS, VARIANTS, KernelBlock, RulesetSpec, default_kernel_block


def _spec_from_args(a) -> RulesetSpec:
    """--spec JSON over the default configuration's spec ("kernel_block": null turns it off)."""
    kw = json.loads(a.spec) if getattr(a, "spec", None) else {}
    if getattr(a, "variant", None):
        kw["variant"] = a.variant
    kb = kw.get("kernel_block", {})
    kw["kernel_block"] = None if kb is None else KernelBlock(**{**vars(default_kernel_block()), **kb})
    return RulesetSpec(**kw)


def _parser() -> argparse.ArgumentParser:
    p = argparse.ArgumentParser(prog="python -m nfsentry.nft", description="nfsentry's nftables layer (debugging and `make rules`).")
    p.add_argument("--write-shipped", metavar="DIR", help="regenerate DIR/nfsentry.nft, gateway.nft, observe.nft")
    p.add_argument("--table", default="nfsentry")
    sub = p.add_subparsers(dest="cmd")
    r = sub.add_parser("render", help="print a ruleset")
    r.add_argument("--variant", choices=VARIANTS)
    r.add_argument("--backend", choices=BACKENDS, default="native")
    r.add_argument("--spec", help="RulesetSpec fields as JSON")
    sub.add_parser("probe", help="print the queue backend and in-use method this kernel supports")
    ld = sub.add_parser("load")
    ld.add_argument("--variant", choices=VARIANTS)
    ld.add_argument("--backend", choices=("auto", *BACKENDS), default=None)
    ld.add_argument("--spec", help="RulesetSpec fields as JSON")
    sub.add_parser("unload")
    b = sub.add_parser("block")
    b.add_argument("network")
    b.add_argument("--timeout", type=float, default=0)
    u = sub.add_parser("unblock")
    u.add_argument("network")
    sub.add_parser("unblock-all")
    sub.add_parser("list")
    sub.add_parser("counters")
    sub.add_parser("status")
    return p


def _run(nft: Nft, a) -> Any:
    """One kernel command of ``a.cmd``: its result, printed as JSON by main()."""
    if a.cmd == "probe":
        return {"backend": nft.probe_backend(), "inuse": "socket" if nft.probe_socket() else "poll"}
    if a.cmd == "load":
        return nft.load(_spec_from_args(a), backend=a.backend, poll_interval=0)
    if a.cmd == "unload":
        nft.unload()
        return {"unloaded": True}
    if a.cmd == "block":
        return {"changed": nft.block(a.network, a.timeout)}
    if a.cmd == "unblock":
        return {"removed": nft.unblock(a.network)}
    if a.cmd == "unblock-all":
        return {"removed": nft.unblock_all()}
    if a.cmd == "list":
        return nft.list_blocked()
    if a.cmd == "counters":
        return nft.counters()
    return nft.status()


def main(argv: list[str] | None = None) -> int:
    p = _parser()
    a = p.parse_args(argv)
    try:
        if a.write_shipped:
            for path in write_shipped(a.write_shipped):
                print(path)
            return 0
        if a.cmd == "render":
            sys.stdout.write(render(_spec_from_args(a), a.backend))
            return 0
        if a.cmd is None:
            p.print_help()
            return 2
        print(json.dumps(_run(Nft(a.table), a), indent=1))
        return 0
    except (NftError, ValueError) as e:
        print(f"nfsentry: {e}", file=sys.stderr)
        return 1


if __name__ == "__main__":
    sys.exit(main())
