"""sinks: where events go. SQLite store, alerts (syslog, JSON lines, stderr), PortSentry output
formats, external actions.

May import: the standard library, ``nfsentry.core``, ``nfsentry.config`` and ``nfsentry.sinks``.
"""
