"""The runscheduler process's own Prometheus metrics: what this process ran, and how fast.

Updated by the runner and the pool, kept in REGISTRY (this process's families and no other's) and
served by `manage.py runscheduler` on SCHEDULER_METRICS_PORT (bookworm_scheduler.kernel.daemon_metrics).
Counters count from the process's start; Prometheus sums them over the schedulers. A definition's
name is the label job_name (Prometheus owns `job`: the scrape job's name), a job's code the label
task. What the database knows (runs per job and status, live instances) is the web app's /metrics
(bookworm_scheduler.metrics).
"""

from functools import cache

from prometheus_client import Counter, Gauge, Histogram

from bookworm_scheduler.kernel import daemon_metrics

# How a run ended: the Runner's outcomes, the suffixes of its log actions (docs/logging.md).
SUCCEEDED, FAILED, RETRY_SCHEDULED, SKIPPED, EXPIRED, RELEASED, LEASE_LOST = (
    "succeeded",
    "failed",
    "retry_scheduled",
    "skipped",
    "expired",
    "released",
    "lease_lost",
)

REGISTRY = daemon_metrics.registry()

RUNS_STARTED = Counter(
    "bookworm_job_runs_started",
    "Claimed occurrences this scheduler began to process.",
    ["job_name"],
    registry=REGISTRY,
)
RUNS_FINISHED = Counter(
    "bookworm_job_runs_finished",
    "Occurrences this scheduler finished processing, by outcome: succeeded, failed (no retry left), "
    "retry_scheduled (a failed attempt to be retried), skipped, expired (a one-off run not started by its "
    "expiry), released (the database connection was lost: "
    "runs again), lease_lost (another scheduler reaped the claim).",
    ["job_name", "status"],
    registry=REGISTRY,
)
# By task (the registered job's code), not by definition as the counters are: a histogram has a
# series per bucket, and with thousands of definitions of a few tasks one per definition would
# make Prometheus store, and this process build, hundreds of thousands of series.
RUN_DURATION = Histogram(
    "bookworm_job_run_duration_seconds",
    "How long a job's attempt ran, from its start to the record of its outcome, by task (the job's code).",
    ["task"],
    buckets=(0.01, 0.025, 0.05, 0.1, 0.25, 0.5, 1, 2.5, 5, 10, 30, 60, 300, 900, 3600),
    registry=REGISTRY,
)
FIRE_LAG = Histogram(
    "bookworm_job_fire_lag_seconds",
    "How late a first attempt started after its due instant (started - scheduled_for, the database's clock).",
    buckets=(0.005, 0.01, 0.025, 0.05, 0.1, 0.25, 0.5, 1, 2.5, 5, 10, 30, 60, 300),
    registry=REGISTRY,
)
POOL_SLOTS = Gauge(
    "bookworm_scheduler_pool_slots",
    "Worker slots of this scheduler, by kind (normal, long_running).",
    ["kind"],
    registry=REGISTRY,
)
POOL_BUSY = Gauge(
    "bookworm_scheduler_pool_busy",
    "Worker slots of this scheduler running a job now, by kind (normal, long_running).",
    ["kind"],
    registry=REGISTRY,
)


def pool_kind(long_running: bool) -> str:
    return "long_running" if long_running else "normal"


@cache
def labelled(metric, *values):
    """metric.labels(*values), looked up once: labels() takes a lock and builds its key at every call."""
    return metric.labels(*values)
