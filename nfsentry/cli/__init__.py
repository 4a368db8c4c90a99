"""cli: the typer app. Talks to a running daemon over the control socket (``nfsentry.ipc``) and to
the ledger when no daemon runs.

May import: anything in nfsentry except ``nfsentry.daemon``, which only ``cli.run`` imports (to run it).
"""
