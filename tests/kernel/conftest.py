"""Terminal summary line for the stock-kernel qemu tier (so CI logs show what ran in the guest)."""
from __future__ import annotations


def pytest_terminal_summary(terminalreporter):
    import sys
    mod = sys.modules.get("test_guest_tier")
    results = getattr(mod, "RESULTS", None) if mod else None
    if not results or "result" not in results:
        return
    image, res = results["image"], results["result"]
    terminalreporter.write_sep("-", "stock-kernel qemu tier")
    terminalreporter.write_line(f"{image.package} (kernel {image.kernel_release}): {res.summary}; "
                                f"image ready in {image.build_seconds:.1f}s")
