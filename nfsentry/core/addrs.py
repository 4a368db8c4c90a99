"""THE network/address API: parsing and text of addresses and networks, block-target checks,
and the raw-byte helpers of the hot path (prefix sets for the ignore list, per-source keys).

Everything on the per-packet path works on the raw 4/16-byte addresses the decoder returns.
``ipaddress`` is used only to parse text at set-up time.

* :class:`PrefixSet`: IPv4 and IPv6 addresses/CIDRs; ``contains(addr)`` costs one
  ``int.from_bytes`` plus one mask-and-set-lookup per *distinct prefix length* present (not per
  entry), so 10,000 ignore entries in three prefix lengths cost three set lookups. Correct for
  every prefix length /0 .. /32 and /0 .. /128 (refusing /0 is the configuration's job).
* :func:`key_for`: the per-source key the engine tracks and blocks: the IPv4 address itself, or
  the IPv6 address masked to the configured prefix (default /64).
* :func:`network_text` / :func:`parse_key`: key + prefix length <-> ``"198.18.0.2"``,
  ``"2001:db8:1::/64"`` (the form used by nft, logs and the control socket; a whole address has
  no ``/32`` or ``/128``). :func:`addr_text`: raw address bytes -> text.
* :func:`parse_network`: text -> ``ipaddress`` network (host bits cleared); refuses a /0 and
  zone-scoped addresses with a one-line message naming what was parsed (``what``).
* :func:`normalize_network` / :func:`normalize_block_target`: what the control socket and the CLI
  accept as a network to unblock / ignore / block (IPv4-mapped IPv6 becomes the IPv4 address; a
  block target is refused when too wide, multicast, link-local, loopback, unspecified, or
  covering a never-block network).
"""

from __future__ import annotations

import ipaddress
import socket
from collections.abc import Iterable, Iterator

__all__ = [
    "PrefixSet",
    "key_for",
    "mask",
    "masker",
    "network_text",
    "parse_key",
    "parse_network",
    "family_of",
    "addr_text",
    "normalize_network",
    "normalize_block_target",
    "block_target_checker",
    "MIN_BLOCK_PREFIX",
]

_ZEROS = bytes(16)


def family_of(addr: bytes) -> int:
    n = len(addr)
    return 4 if n == 4 else 6 if n == 16 else 0


def mask(addr: bytes, prefixlen: int) -> bytes:
    """Clear the host bits of a 4/16-byte address (prefixlen clamped to the family's width)."""
    bits = len(addr) * 8
    if prefixlen >= bits:
        return bytes(addr)
    if prefixlen <= 0:
        return _ZEROS[: len(addr)]
    q, r = divmod(prefixlen, 8)
    head = bytes(addr[:q])
    if r:
        head += bytes((addr[q] & (0xFF << (8 - r)) & 0xFF,))
    return head + _ZEROS[: len(addr) - len(head)]


def masker(prefixlen: int):
    """A fast function masking 16-byte IPv6 addresses to ``prefixlen`` (for the hot path)."""
    if prefixlen >= 128:
        return bytes
    if prefixlen % 8 == 0:
        q = prefixlen // 8
        pad = _ZEROS[: 16 - q]
        return lambda a: a[:q] + pad
    m = ((1 << prefixlen) - 1) << (128 - prefixlen)
    return lambda a: (int.from_bytes(a, "big") & m).to_bytes(16, "big")


def key_for(src: bytes, v6_prefixlen: int = 64) -> bytes:
    """The per-source key: an IPv4 address as is, an IPv6 address masked to ``v6_prefixlen``."""
    if len(src) == 16:
        return mask(src, v6_prefixlen)
    return src


def addr_text(b: bytes) -> str:
    """Raw 4/16 address bytes -> text. Never raises: b"" -> "", other lengths -> "0x<hex>"."""
    n = len(b)
    if n == 4:
        return socket.inet_ntop(socket.AF_INET, b)
    if n == 16:
        return socket.inet_ntop(socket.AF_INET6, b)
    return "0x" + bytes(b).hex() if n else ""


def network_text(key, prefixlen: int | None = None) -> str:
    """``"198.18.0.2"`` (a whole IPv4 address), ``"198.18.0.0/24"``, ``"2001:db8:1::/64"``,
    ``"2001:db8::1"`` (/128). ``key``: raw network bytes (``prefixlen`` None means the full
    address), or an ``ipaddress`` network or address."""
    if key.__class__ is not bytes:
        if isinstance(key, (ipaddress.IPv4Network, ipaddress.IPv6Network)):
            key, prefixlen = key.network_address.packed, key.prefixlen
        elif isinstance(key, (ipaddress.IPv4Address, ipaddress.IPv6Address)):
            key = key.packed
        else:
            key = bytes(key)
    n = len(key)
    if n == 4:
        text = socket.inet_ntop(socket.AF_INET, key)
        full = 32
    elif n == 16:
        text = socket.inet_ntop(socket.AF_INET6, key)
        full = 128
    else:
        return ""
    if prefixlen is None or prefixlen >= full:
        return text
    return f"{text}/{prefixlen}"


def parse_key(text) -> tuple[int, bytes, int]:
    """``"198.18.0.2"`` / ``"10.0.0.0/8"`` / ``"2001:db8::/32"`` / an ipaddress object / raw
    4/16 bytes -> ``(family, network key bytes, prefixlen)``. Host bits are cleared.
    Raises ValueError on text that is not an address or CIDR. A /0 is accepted (refusing it is
    :func:`parse_network`'s job)."""
    if isinstance(text, (bytes, bytearray)):
        if len(text) not in (4, 16):
            raise ValueError(f"bad raw address of {len(text)} bytes")
        return (4 if len(text) == 4 else 6), bytes(text), len(text) * 8
    net = parse_network(text, "network", allow_everything=True)
    return net.version, net.network_address.packed, net.prefixlen


def parse_network(text, what: str = "address", allow_everything: bool = False):
    """An address or CIDR (text or an ``ipaddress`` object) -> ``ipaddress`` network, host bits
    cleared. Raises ValueError, one line starting with ``bad <what>``: not an address, a
    zone-scoped address (``fe80::1%eth0``: nftables cannot match the zone), or a /0 (it would match
    every address) unless ``allow_everything``."""
    if isinstance(text, (ipaddress.IPv4Network, ipaddress.IPv6Network)):
        net = text
    elif isinstance(text, (ipaddress.IPv4Address, ipaddress.IPv6Address)):
        net = ipaddress.ip_network(text)
    elif not isinstance(text, str):
        raise ValueError(f"bad {what} {text!r}")
    elif "%" in text:
        raise ValueError(f"bad {what} {text!r}: zone-scoped (%interface) addresses cannot be matched by nftables")
    else:
        try:
            net = ipaddress.ip_network(text.strip(), strict=False)
        except ValueError:
            raise ValueError(f"bad {what} {text!r}: not an IPv4/IPv6 address or CIDR") from None
    if net.prefixlen == 0 and not allow_everything:
        raise ValueError(f"bad {what} {text!r}: a /0 would match every address")
    return net


def _unmapped(net):
    """``::ffff:198.18.0.2`` -> ``198.18.0.2`` (an IPv4-mapped IPv6 network of /96 or longer is
    its IPv4 network); anything else unchanged."""
    if net.version == 6 and net.prefixlen >= 96 and net.network_address.ipv4_mapped is not None:
        return ipaddress.IPv4Network((net.network_address.ipv4_mapped, net.prefixlen - 96))
    return net


def normalize_network(text, allow_everything: bool = False) -> str:
    """A network as the control socket, the CLI and the nft sets write it: ``"198.18.0.2"``,
    ``"198.18.0.0/24"``, ``"2001:db8:1::/64"`` (host bits cleared; an IPv4-mapped IPv6 address
    becomes the IPv4 address). Raises ValueError ("bad address or prefix ...", or a /0 unless
    ``allow_everything``)."""
    net = _unmapped(parse_network(str(text), "address or prefix", allow_everything=True))
    if net.prefixlen == 0 and not allow_everything:
        raise ValueError(f"bad address or prefix {text!r}: a /0 would match every address")
    return network_text(net)


# The widest prefix a block may have: a shorter one would cut off most of the network.
MIN_BLOCK_PREFIX = {4: 8, 6: 16}
# Addresses that are never a scanner's (routable) source: refused as block targets.
_NEVER_SOURCES = (
    ("is_multicast", "a multicast"),
    ("is_loopback", "a loopback"),
    ("is_link_local", "a link-local"),
    ("is_unspecified", "the unspecified"),
)


def normalize_block_target(text, never_block=()) -> str:
    """Validate a block target; returns its :func:`normalize_network` text. Raises ValueError
    (one line, ``refusing to block ...``) for a prefix wider than :data:`MIN_BLOCK_PREFIX` (a /0
    included), a multicast, link-local, loopback or unspecified address or network, or one that
    overlaps a network of ``never_block`` (own addresses, gateways, resolvers, the ignore list,
    the admin's SSH session)."""
    return block_target_checker(never_block)(text)


def block_target_checker(never_block=()):
    """:func:`normalize_block_target` for many targets against one ``never_block`` list (parsed
    once: a bulk block checks 10,000 targets)."""
    nets = [(p, ipaddress.ip_network(p)) for p in never_block]

    def check(text) -> str:
        net_s = normalize_network(text, allow_everything=True)
        net = ipaddress.ip_network(net_s)
        if net.prefixlen < MIN_BLOCK_PREFIX[net.version]:
            raise ValueError(f"refusing to block {net_s}: a /{net.prefixlen} would cut off most of the network")
        for attr, kind in _NEVER_SOURCES:
            if getattr(net, attr):
                raise ValueError(f"refusing to block {net_s}: {kind} address is never a scanner's source")
        for p, pn in nets:
            if pn.version == net.version and net.overlaps(pn):
                raise ValueError(
                    f"refusing to block {net_s}: it covers {p}, which nfsentry never blocks "
                    "(own address, gateway, resolver, ignore list or your SSH session)"
                )
        return net_s

    return check


class PrefixSet:
    """A set of IPv4/IPv6 networks with fast membership on raw address bytes.

    Internally, per family: ``{prefixlen: set of masked network ints}`` plus a list of
    ``(mask, set)`` pairs walked by :meth:`contains` (one entry per distinct prefix length).
    """

    __slots__ = ("_by_len", "_v4", "_v6", "exact", "_count", "pre4", "pre6", "pre6_bytes", "version")

    def __init__(self, items: Iterable = ()):
        self._by_len: dict[tuple[int, int], set[int]] = {}
        self._v4: tuple = ()
        self._v6: tuple = ()
        self.exact: frozenset[bytes] = frozenset()  # /32 and /128 entries as raw bytes
        self._count = 0
        # Whole addresses (own addresses, resolvers) are answered by ``exact``; the prefilters
        # cover the other networks: the first IPv4 octet / the leading IPv6 bytes such a network
        # can match. Most sources match no entry, and two set lookups reject them. The engine's
        # hot paths (Python and compiled) read these three public attributes directly.
        self.pre4: frozenset[int] = frozenset()
        self.pre6: frozenset[bytes] | None = frozenset()
        self.pre6_bytes = 4
        # bumped by every rebuild of the lookup tables: the compiled fast path keeps its own copy
        # of them (a bitmap of pre4) and rebuilds it when this changes
        self.version = 0
        self.update(items)

    def add(self, item, prefixlen: int | None = None) -> None:
        """Add an address or CIDR (text, ipaddress object, or raw bytes with ``prefixlen``)."""
        self._add(item, prefixlen)
        self._rebuild()

    def update(self, items: Iterable) -> None:
        """Add many entries (one rebuild of the lookup tables at the end)."""
        for item in items:
            self._add(item, None)
        self._rebuild()

    def _add(self, item, prefixlen: int | None) -> None:
        family, key, plen = parse_key(item)
        if prefixlen is not None:
            plen = max(0, min(prefixlen, len(key) * 8))
        width = 32 if family == 4 else 128
        m = ((1 << plen) - 1) << (width - plen)
        members = self._by_len.setdefault((family, plen), set())
        before = len(members)
        members.add(int.from_bytes(key, "big") & m)
        self._count += len(members) - before

    def _rebuild(self) -> None:
        v4: list = []
        v6: list = []
        exact: set = set()
        # Whole addresses (/32, /128: own addresses, gateways, resolvers) are one bytes-set
        # lookup; every other prefix length is one mask-and-lookup. Most specific first.
        for (family, plen), members in sorted(self._by_len.items(), key=lambda kv: -kv[0][1]):
            width = 32 if family == 4 else 128
            if plen == width:
                exact.update(v.to_bytes(width // 8, "big") for v in members)
                continue
            m = ((1 << plen) - 1) << (width - plen)
            (v4 if family == 4 else v6).append((m, members))
        self._v4 = tuple(v4)
        self._v6 = tuple(v6)
        self.exact = frozenset(exact)
        pre4: set[int] = set()
        pre6: set[bytes] | None = set()
        v6_lens = [plen for (family, plen) in self._by_len if family == 6 and plen < 128]
        nbytes = 4 if not v6_lens or min(v6_lens) >= 32 else 2 if min(v6_lens) >= 8 else 0
        for (family, plen), members in self._by_len.items():
            if plen == (32 if family == 4 else 128):
                continue  # whole addresses: the exact set answers for them
            if family == 4:
                for value in members:  # every first octet the prefix covers (<= 256)
                    first = value >> 24
                    span = 1 << max(0, 8 - plen)
                    pre4.update(range(first, first + span))
            elif pre6 is not None:
                if nbytes == 0:
                    pre6 = None  # a /0../7 entry: no useful prefilter
                    continue
                bits = nbytes * 8  # plen >= 8 here, so at most 256 heads per entry
                for value in members:
                    head = value >> (128 - bits)
                    pre6.update(h.to_bytes(nbytes, "big") for h in range(head, head + (1 << max(0, bits - plen))))
        self.pre4 = frozenset(pre4)
        self.pre6 = None if pre6 is None else frozenset(pre6)
        self.pre6_bytes = nbytes
        self.version += 1

    def contains(self, addr: bytes) -> bool:
        """Is this raw 4- or 16-byte address inside any network of the set?"""
        if addr in self.exact:
            return True
        n = len(addr)
        if n == 4:
            if addr[0] not in self.pre4:
                return False
            table = self._v4
        elif n == 16:
            pre6 = self.pre6
            if pre6 is not None and addr[: self.pre6_bytes] not in pre6:
                return False
            table = self._v6
        else:
            return False
        if not table:
            return False
        a = int.from_bytes(addr, "big")
        for m, members in table:
            if a & m in members:
                return True
        return False

    __contains__ = contains

    def __len__(self) -> int:
        return self._count

    def __bool__(self) -> bool:
        return self._count > 0

    def __iter__(self) -> Iterator[str]:
        """The networks as text (``"10.0.0.0/8"``, ``"198.18.0.2"``)."""
        for (family, plen), members in sorted(self._by_len.items()):
            nbytes = 4 if family == 4 else 16
            for value in sorted(members):
                yield network_text(value.to_bytes(nbytes, "big"), plen)

    def __repr__(self) -> str:
        return f"PrefixSet({list(self)!r})"
