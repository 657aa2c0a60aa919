"""The relay_outbox process's own Prometheus metrics: what this relay sent, and how fast.

Updated by the broker and the relay, kept in REGISTRY (this process's families and no other's)
and served by `manage.py relay_outbox` on RELAY_METRICS_PORT (bookworm_scheduler.kernel.daemon_metrics).
Counters count from the process's start; Prometheus sums them over the relays. What the database
knows (rows pending per status, the oldest one's age) is the web app's /metrics.
"""

from prometheus_client import Counter, Gauge, Histogram

from bookworm_scheduler.kernel import daemon_metrics

REGISTRY = daemon_metrics.registry()

PUBLISHED = Counter(
    "bookworm_outbox_messages_published",
    "Messages this relay wrote to the broker (each send of a retried message counts).",
    registry=REGISTRY,
)
CONFIRMED = Counter(
    "bookworm_outbox_messages_confirmed",
    "Messages the broker confirmed and routed: marked delivered.",
    registry=REGISTRY,
)
RETURNED = Counter(
    "bookworm_outbox_messages_returned",
    "Messages the broker returned because no queue is bound: marked unroutable.",
    registry=REGISTRY,
)
FAILED = Counter(
    "bookworm_outbox_messages_failed",
    "Sends that failed (nacked, channel closed, exchange refused): retried later, or dead.",
    registry=REGISTRY,
)
DEAD = Counter(
    "bookworm_outbox_messages_dead",
    "Messages marked dead after OUTBOX_MAX_ATTEMPTS failed sends.",
    registry=REGISTRY,
)
# PUBLISH_LATENCY costs the relay a query per batch (a drain of a backlog is slower by it): only a
# relay that serves its metrics measures it (relay_outbox sets this).
measure_latency = False
PUBLISH_LATENCY = Histogram(
    "bookworm_outbox_publish_latency_seconds",
    "From the row's creation (the publishing transaction, the database's clock) to the broker's confirm "
    "being recorded, for each delivered message.",
    buckets=(0.005, 0.01, 0.025, 0.05, 0.1, 0.25, 0.5, 1, 2.5, 5, 10, 30, 60, 300, 900, 3600),
    registry=REGISTRY,
)
LAST_BATCH = Gauge(
    "bookworm_outbox_relay_last_batch_timestamp_seconds",
    "When this relay last finished a pass over the outbox, whether or not it found rows, or started (Unix time).",
    registry=REGISTRY,
)
BROKER_CONNECTED = Gauge(
    "bookworm_outbox_broker_connected",
    "1 while this relay holds an open connection and channel to the broker, else 0.",
    registry=REGISTRY,
)
