"""nfsentry: PortSentry reborn for nftables.

The package is split into a pure core (``packet``, ``classify``, ``engine``, ``addrs``, ``ftp``,
``config``) that takes bytes and a clock and returns decisions, and thin adapters around it
(``nft``, ``store``, ``alerts``, ``daemon``, ``control``, ``cli``).
"""

__version__ = "0.1.0"
