"""How the stock-kernel tier sets qemu up, without booting it: the accelerator choice and the
test selection handed to the guest."""

from __future__ import annotations

import shlex

import kernel_guest as kg


def test_kvm_only_on_hardware_virtualization_never_on_pvm(tmp_path, monkeypatch):
    monkeypatch.delenv("NFSENTRY_KERNEL_ACCEL", raising=False)
    sysfs, dev = tmp_path / "module", tmp_path / "kvm"
    sysfs.mkdir()
    dev.touch()
    tcg = ["tcg,thread=multi"]
    assert kg.accelerators(sysfs, dev) == tcg  # no KVM module
    (sysfs / "kvm_intel").mkdir()
    assert kg.accelerators(sysfs, dev) == ["kvm", *tcg]  # qemu falls back to TCG if KVM fails
    assert kg.accelerators(sysfs, tmp_path / "no-such-device") == tcg
    (sysfs / "kvm_pvm").mkdir()  # this machine kind: KVM without VMX/SVM, slower than TCG
    assert kg.accelerators(sysfs, dev) == tcg
    monkeypatch.setenv("NFSENTRY_KERNEL_ACCEL", "kvm")
    assert kg.accelerators(sysfs, dev) == ["kvm"]
    monkeypatch.setenv("NFSENTRY_KERNEL_ACCEL", "tcg")
    (sysfs / "kvm_pvm").rmdir()
    assert kg.accelerators(sysfs, dev) == tcg


def test_qemu_gets_every_accelerator_in_order(tmp_path, monkeypatch):
    monkeypatch.setenv("NFSENTRY_KERNEL_ACCEL", "tcg")
    img = kg.Image(tmp_path, tmp_path / "vmlinuz", tmp_path / "initramfs", "6.1", "pkg", 0.0, "")
    argv = kg.qemu_argv(img, tmp_path, None)
    assert argv[1:3] == ["-accel", "tcg,thread=multi"] and argv.count("-accel") == 1


def test_the_guest_collects_only_the_files_with_native_tests():
    args = shlex.split(kg.native_selection())
    assert args[:2] == ["-m", "native"]
    files = args[2:]
    assert "tests/e2e/test_kernel_block.py" in files and "tests/e2e/test_native_daemon.py" in files
    assert "tests/e2e/test_block_state_model.py" not in files  # no native test: not even imported
    for f in files:
        assert "pytest.mark.native" in (kg.REPO / f).read_text()
