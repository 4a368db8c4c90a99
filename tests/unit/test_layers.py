"""The layers' import rules (each folder's __init__ says them): every import in every module of
the package, at any depth (function-level imports included), is checked."""

from __future__ import annotations

import ast
import sys
from pathlib import Path

import pytest

PKG = Path(__file__).resolve().parents[2] / "nfsentry"
STDLIB = set(sys.stdlib_module_names) | {"__future__"}

# layer -> (nfsentry layers it may import, third-party top-level modules it may import)
RULES: dict[str, tuple[set[str], set[str]]] = {
    "core": ({"core"}, set()),
    "config": ({"core", "config", "nft.spec"}, set()),
    "nft": ({"core", "nft"}, {"nftables"}),
    "sinks": ({"core", "config", "sinks"}, {"systemd"}),  # python3-systemd: journald (optional)
    "ledger": ({"core", "config", "nft", "sinks", "ledger"}, set()),
    "fleet": ({"core", "config", "ledger", "fleet"}, set()),
    "daemon": ({"", "core", "config", "nft", "sinks", "ledger", "fleet", "daemon", "ipc"}, {"netfilterqueue", "prometheus_client"}),
    "cli": ({"", "core", "config", "nft", "sinks", "ledger", "fleet", "cli", "ipc", "replay"}, {"typer", "rich", "click"}),
    "ipc": (set(), set()),
    "replay": ({"core", "config"}, {"scapy"}),
    "__init__": (set(), set()),
    "__main__": ({"cli"}, set()),
}
# the one place the CLI may import the daemon: to run it
CLI_RUNS_DAEMON = "nfsentry.cli.run"


def modules() -> list[Path]:
    return sorted(p for p in PKG.rglob("*.py"))


def module_name(path: Path) -> str:
    parts = path.relative_to(PKG.parent).with_suffix("").parts
    return ".".join(parts[:-1] if parts[-1] == "__init__" and len(parts) > 2 else parts)


def layer_of(name: str) -> str:
    parts = name.split(".")
    return parts[1] if len(parts) > 1 else "__init__"


def imports(path: Path) -> list[tuple[int, str]]:
    tree = ast.parse(path.read_text(), str(path))
    name = module_name(path)
    pkg = name if path.name == "__init__.py" else name.rpartition(".")[0]
    out = []
    for node in ast.walk(tree):
        if isinstance(node, ast.Import):
            out += [(node.lineno, a.name) for a in node.names]
        elif isinstance(node, ast.ImportFrom):
            if node.level:
                base = pkg.split(".")
                base = base[: len(base) - node.level + 1]
                mod = ".".join(base + ([node.module] if node.module else []))
            else:
                mod = node.module or ""
            # "from nfsentry.x import y" may name a submodule y
            out += [(node.lineno, f"{mod}.{a.name}" if mod in ("nfsentry",) or mod.startswith("nfsentry.") else mod) for a in node.names]
    return out


def allowed(importer: str, target: str) -> bool:
    layer = layer_of(importer)
    own, third = RULES[layer]
    top = target.split(".")[0]
    if top != "nfsentry":
        return top in STDLIB or top in third
    if target == "nfsentry.__version__" or target == "nfsentry":
        return True
    rest = target[len("nfsentry.") :]
    if rest.startswith("daemon") and importer == CLI_RUNS_DAEMON:
        return True
    return any(rest == o or rest.startswith(o + ".") for o in own if o) or ("" in own and "." not in rest)


def test_every_module_has_a_layer_rule():
    for p in modules():
        assert layer_of(module_name(p)) in RULES, p


def test_each_layer_imports_only_what_its_rules_allow():
    bad = []
    for p in modules():
        name = module_name(p)
        for line, target in imports(p):
            if not allowed(name, target):
                bad.append(f"{p.relative_to(PKG.parent)}:{line}: {name} imports {target}")
    assert not bad, "imports the layer rules do not allow:\n" + "\n".join(bad)


@pytest.mark.parametrize("folder", ["core", "config", "nft", "sinks", "ledger", "daemon", "cli"])
def test_each_folder_says_what_lives_there_and_what_it_may_import(folder):
    doc = ast.get_docstring(ast.parse((PKG / folder / "__init__.py").read_text())) or ""
    assert "May import" in doc, folder


def test_the_checker_catches_a_forbidden_import():
    assert not allowed("nfsentry.core.engine", "nfsentry.nft.client")
    assert not allowed("nfsentry.core.engine", "scapy.all")
    assert not allowed("nfsentry.cli.app", "nfsentry.daemon.main")
    assert allowed("nfsentry.cli.run", "nfsentry.daemon.main")
    assert allowed("nfsentry.ledger.ledger", "nfsentry.nft.client") and allowed("nfsentry.core.engine", "struct")
