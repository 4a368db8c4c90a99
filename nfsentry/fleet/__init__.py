"""fleet: nfsentry in a fleet of hosts through a CrowdSec Local API (LAPI). ``lapi`` (the HTTP
client: watcher login and alerts, bouncer decision stream, deletes; the standard library's
http.client), ``pull`` (the decision stream -> what each network wants, pure), ``alerts`` (a
block event -> the alert pushed for it, pure). The daemon's fleet thread (``daemon/fleet.py``)
wires them to the ledger's fleet part (``ledger/fleet.py``), the only writer of the fleet sets.

May import: the standard library, ``nfsentry.core``, ``nfsentry.config``, ``nfsentry.ledger`` and
``nfsentry.fleet``.
"""
