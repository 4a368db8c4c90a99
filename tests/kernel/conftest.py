"""Terminal summary for the stock-kernel qemu tier, so CI logs show what ran in the guest."""

from __future__ import annotations


def pytest_terminal_summary(terminalreporter, config):
    tier = getattr(config, "nfsentry_kernel_tier", None)
    if tier is None:
        return
    image, res = tier
    terminalreporter.write_sep("-", "stock-kernel qemu tier")
    terminalreporter.write_line(
        f"{image.package} (kernel {image.kernel_release}): {res.summary}; image ready in {image.build_seconds:.1f}s"
    )
    for c in res.cases:
        terminalreporter.write_line(f"  guest {c.outcome.upper():11} {c.nodeid}")
