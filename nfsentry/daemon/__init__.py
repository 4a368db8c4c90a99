"""daemon: wiring and lifecycle of the running daemon only. The queue callbacks, the FTP queue,
the worker, the control server, host facts (own addresses, gateways, resolvers, SSH client).

May import: anything in nfsentry except ``nfsentry.cli``. Imported only by ``nfsentry cli run``.
"""
