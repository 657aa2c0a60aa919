"""The shared kernel: what the scheduler, the relay and the web app all stand on.

The database (db, transactions, dialect, listen, clock), process life (instances, liveness,
backoff, cpus, cgroup), and how a process is observed (logs, tracing, daemon_metrics, errors).
Nothing here imports jobs or outbox.
"""
