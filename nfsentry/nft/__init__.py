"""nft: nfsentry's nftables layer. Ruleset spec and rendering (pure), element commands and
listing parsers (pure), one libnftables session (I/O), compat iptables-nft rules, the /proc
in-use fallback.

May import: the standard library, libnftables' bindings, ``nfsentry.core`` and ``nfsentry.nft``.
"""
