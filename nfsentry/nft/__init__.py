"""nft: nfsentry's nftables layer.

* ``spec``: the ruleset specification (:class:`RulesetSpec`), its validation and the shared
  constants (variants, backends, in-use methods, counters, classic ports). Pure.
* ``render``: the ruleset model, ``render()``, the shipped ``rules/*.nft`` files and the compat
  backend's iptables-nft rules. Pure (but ``write_shipped``).
* ``elements``: which set a blocked source goes to, element and command texts, bulk block planning,
  FTP expectations, and the parsers of nft's listings. Pure.
* ``errors``: :class:`NftError` and its kinds. Pure.
* ``client``: :class:`Nft`, one libnftables session on our table (load/check/unload, probes,
  blocks, listings, ignore sets, FTP expectations, the in-use poller, status). I/O.
* ``compat``: install/list/remove the compat iptables-nft rules (subprocess). I/O.
* ``inuse``: the /proc in-use fallback.
* ``__main__``: ``python -m nfsentry.nft`` (render/load/check/..., ``--write-shipped`` for
  ``make rules``).

The package re-exports the public API: ``from nfsentry.nft import Nft, RulesetSpec``. The pure names
are imported with the package; ``Nft`` and ``probe_backend`` on first use, so that importing
``nfsentry.nft.spec`` (as ``nfsentry.config`` may) loads neither the libnftables bindings nor the
subprocess code. ``Nft()`` raises :class:`NftUnavailable` when the bindings are missing.

May import: the standard library, libnftables' bindings, ``nfsentry.core`` and ``nfsentry.nft``.
"""

from nfsentry.nft.elements import network_text, parse_network, set_for
from nfsentry.nft.errors import NftError, NftInconsistent, NftUnavailable, SpecError
from nfsentry.nft.render import SHIPPED, compat_rules, compat_tag, render, write_shipped
from nfsentry.nft.spec import BACKENDS, COUNTERS, INUSE_METHODS, TROJAN_TCP, TROJAN_UDP, VARIANTS, RulesetSpec, default_spec

__all__ = [
    "Nft",
    "probe_backend",
    "NftError",
    "NftInconsistent",
    "NftUnavailable",
    "SpecError",
    "RulesetSpec",
    "default_spec",
    "render",
    "write_shipped",
    "compat_rules",
    "compat_tag",
    "SHIPPED",
    "set_for",
    "parse_network",
    "network_text",
    "VARIANTS",
    "BACKENDS",
    "INUSE_METHODS",
    "COUNTERS",
    "TROJAN_TCP",
    "TROJAN_UDP",
]

_SESSION = ("Nft", "probe_backend")  # in nfsentry.nft.client, imported on first use


def __getattr__(name: str):
    if name in _SESSION:
        from nfsentry.nft import client

        return getattr(client, name)
    raise AttributeError(f"module {__name__!r} has no attribute {name!r}")
