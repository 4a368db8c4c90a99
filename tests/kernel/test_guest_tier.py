"""The stock-kernel tier: the native queue backend tested on Debian's own kernel under qemu.

One host-side test boots Debian's stock kernel (TCG, see kernel_guest.py), runs the project's
``native``-marked end-to-end tests inside it with NFSENTRY_EXPECT_BACKEND=native, and fails
exactly when the guest run fails, showing the guest's failures. It skips itself inside the guest.
Opt out with NFSENTRY_KERNEL_TIER=0.
"""

from __future__ import annotations

import warnings

import kernel_guest as kg
import pytest

pytestmark = [pytest.mark.slow, pytest.mark.skipif(kg.disabled_reason() is not None, reason=f"qemu tier: {kg.disabled_reason()}")]


@pytest.mark.timeout(kg.BUILD_TIMEOUT + kg.BOOT_TIMEOUT + 60)
def test_native_backend_e2e_on_debian_stock_kernel(tmp_path, pytestconfig):
    missing = kg.missing_tools()
    assert not missing, f"qemu tier needs {' '.join(missing)}: run `make deps-test` (or NFSENTRY_KERNEL_TIER=0 to opt out)"
    try:
        image = kg.build_image()
    except kg.TierError as e:
        pytest.fail(str(e), pytrace=False)
    res = kg.boot(image, tmp_path / "out")
    pytestconfig.nfsentry_kernel_tier = (image, res)  # for the terminal summary (conftest.py)
    if not res.ok:
        pytest.fail(f"stock-kernel guest tier failed ({image.package}):\n{res.explain()}", pytrace=False)
    assert res.kernel == image.kernel_release, f"guest ran kernel {res.kernel!r}, expected {image.kernel_release!r}"
    skipped = [c for c in res.cases if c.outcome == "skipped"]
    if skipped:
        warnings.warn(pytest.PytestWarning("stock-kernel guest skipped: " + "; ".join(f"{c.nodeid}: {c.message}" for c in skipped)))
