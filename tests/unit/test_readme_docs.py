"""The README and docs/: every relative link leads somewhere, and the README opens with the two
set-up commands.

The README keeps what a user needs to start, run and operate nfsentry and links to docs/*.md for
the rest, so a moved or renamed section must not leave a dead link (a file that is not there, or a
#fragment no heading of the target makes, by GitHub's rules for heading anchors).
"""

from __future__ import annotations

import re
import subprocess
from pathlib import Path

import pytest

REPO = Path(__file__).resolve().parents[2]
PAGES = [REPO / "README.md", *sorted((REPO / "docs").glob("*.md"))]
LINK = re.compile(r"\[[^\]]*\]\(([^)\s]+)\)")


def without_code(text: str) -> str:
    """The text outside fenced code blocks and inline code (where brackets are not links)."""
    text = re.sub(r"^```.*?^```", "", text, flags=re.S | re.M)
    return re.sub(r"`[^`\n]*`", "", text)


def anchor(heading: str) -> str:
    """GitHub's anchor of a heading: lower case, markup and punctuation dropped, spaces to hyphens."""
    text = re.sub(r"<[^>]+>|[`*]", "", heading.strip()).lower()
    return re.sub(r"[^\w\- ]", "", text).replace(" ", "-")


def anchors(page: Path) -> set[str]:
    found: set[str] = set()
    seen: dict[str, int] = {}
    text = re.sub(r"^```.*?^```", "", page.read_text(), flags=re.S | re.M)
    for m in re.finditer(r"^#{1,6}\s+(.*)$", text, flags=re.M):
        a = anchor(m.group(1))
        n = seen.get(a, 0)
        seen[a] = n + 1
        found.add(a if n == 0 else f"{a}-{n}")
    return found


def test_anchor_rules():
    assert anchor("Fail-open or fail-closed") == "fail-open-or-fail-closed"
    assert anchor("JSON output (stable)") == "json-output-stable"
    assert anchor("Block state: what `nfsentry blocked` shows") == "block-state-what-nfsentry-blocked-shows"
    assert anchor("The ignore list, `reload`, `status`") == "the-ignore-list-reload-status"


@pytest.mark.parametrize("page", PAGES, ids=lambda p: str(p.relative_to(REPO)))
def test_every_relative_link_resolves(page):
    dead = []
    for target in LINK.findall(without_code(page.read_text())):
        if re.match(r"[a-z]+:", target):
            continue  # http:, https:, mailto:
        path, _, frag = target.partition("#")
        dest = (page.parent / path).resolve() if path else page
        if not dest.exists():
            dead.append(f"{target}: no such file")
        elif frag and dest.suffix == ".md" and frag not in anchors(dest):
            dead.append(f"{target}: no heading makes #{frag} in {dest.relative_to(REPO)}")
    assert not dead, f"{page.relative_to(REPO)}: " + "; ".join(dead)


def test_readme_opens_with_the_two_commands():
    text = (REPO / "README.md").read_text()
    first_block = re.search(r"^```\w*\n(.*?)^```", text, flags=re.S | re.M)
    assert first_block is not None
    commands = [line.split("#")[0].strip() for line in first_block.group(1).splitlines()]
    assert commands == ["make run", "make test"]


def test_the_try_it_box_runs_the_script():
    text = (REPO / "README.md").read_text()
    assert "@@" not in text, "an output placeholder was left in the README"
    assert "examples/try-it.sh" in text and (REPO / "examples" / "try-it.sh").stat().st_mode & 0o111
    assert re.search(r"^try:", (REPO / "Makefile").read_text(), flags=re.M), "make try runs the script"


def test_try_it_script_parses_and_refuses_unknown_arguments():
    script = REPO / "examples" / "try-it.sh"
    assert subprocess.run(["bash", "-n", str(script)], capture_output=True).returncode == 0
    help_ = subprocess.run([str(script), "--help"], capture_output=True, text=True)
    assert help_.returncode == 0 and "throw-away pair of network namespaces" in help_.stdout and "--shell" in help_.stdout
    bad = subprocess.run([str(script), "--bogus"], capture_output=True, text=True)  # refused before anything is made
    assert bad.returncode == 1 and bad.stderr == "try-it: unknown argument '--bogus' (use --shell or --help)\n"
