"""ledger: THE owner of block state. The only code that adds, extends, removes, lists and
restores blocks, keeping the kernel sets and the database in step under one written rule (see
``ledger.ledger``). Used by the daemon, by the CLI when no daemon runs, and by restore.

May import: the standard library, ``nfsentry.core``, ``nfsentry.config``, ``nfsentry.nft``,
``nfsentry.sinks`` and ``nfsentry.ledger``.
"""
