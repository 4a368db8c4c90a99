"""The nft layer's exceptions (pure: no I/O, no bindings)."""

from __future__ import annotations

__all__ = ["NftError", "NftInconsistent", "NftUnavailable", "SpecError"]


class NftError(RuntimeError):
    """libnftables refused something. ``error`` is nft's own text, ``command`` what was sent."""

    def __init__(self, what: str, error: str = "", command: str = "") -> None:
        self.what, self.error, self.command = what, error.strip(), command
        lines = [ln.strip() for ln in self.error.splitlines() if ln.strip().startswith("Error")]
        detail = "; ".join(dict.fromkeys(lines)) or self.error.splitlines()[0].strip() if self.error else ""
        super().__init__(f"{what}: {detail}" if detail else what)


class NftInconsistent(NftError):
    """A set kept changing while it was listed: no complete listing could be had."""


class NftUnavailable(NftError):
    """The bindings or a needed tool are missing."""


class SpecError(NftError, ValueError):
    """The RulesetSpec is invalid (nothing was sent to the kernel)."""
