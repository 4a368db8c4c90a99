"""nfsentry: PortSentry reborn for nftables.

Layers (each folder's ``__init__`` says what lives there and what it may import; the unit test
``tests/unit/test_layers.py`` enforces it):

* ``core/``    pure rules: bytes and a clock in, decisions out (standard library only)
* ``config/``  TOML -> Config, validation, PortSentry import
* ``nft/``     the nftables layer: ruleset spec and rendering, element commands, the libnftables
  session, compat iptables rules, the /proc in-use fallback
* ``sinks/``   where events go: SQLite store, alerts, PortSentry formats, external actions
* ``ledger/``  the one owner of block state (kernel sets + database)
* ``daemon/``  wiring and lifecycle of the running daemon
* ``cli/``     the typer app
* ``ipc``      the control socket's protocol and client; ``replay`` pcap -> core
"""

__version__ = "0.1.0"
