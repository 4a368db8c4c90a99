"""daemon: wiring and lifecycle of the running daemon only; what it runs lives in the layers.

- ``daemon``: class Daemon: start-up, the main thread's loop and duties, signals, reload, status,
  shutdown (the main thread; the ticker).
- ``verdict``: the scan queue's callback and the packet path (main thread).
- ``ftpqueue``: the FTP control queue (the ``nfsentry-ftp`` thread).
- ``worker``: storage, reports, external actions, periodic refreshes (the ``nfsentry-worker`` thread).
- ``control``: the control socket's server and the requests it hands to the main thread.
- ``counters``: one counters dict per writing thread.
- ``metrics``: Prometheus metrics ([metrics]): the endpoint's and the textfile's threads.

May import: anything in nfsentry except ``nfsentry.cli``; netfilterqueue, prometheus_client. Imported only by ``nfsentry.cli.run``.
"""
