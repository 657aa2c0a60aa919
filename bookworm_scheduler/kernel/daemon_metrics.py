"""A daemon's own metrics: its registry (its families, the process's CPU and memory, its cgroup's limits), served.

`manage.py runscheduler` serves jobs.engine.scheduler_metrics.REGISTRY on SCHEDULER_METRICS_PORT and `manage.py
relay_outbox` outbox.relay_metrics.REGISTRY on RELAY_METRICS_PORT; each is made by registry(), so each
process serves its own families and no other's, whatever modules it imports (a scheduler's
bookworm_outbox_relay_last_batch_timestamp_seconds would be a relay that never ran). Beside
them: prometheus-client's process_* (CPU seconds, resident memory, open files) and python_*,
and the limits the process runs under (CgroupCollector). The web app's /metrics is another
thing: what the database knows (bookworm_scheduler.metrics).
"""

import logging
from pathlib import Path

from prometheus_client import GC_COLLECTOR, PLATFORM_COLLECTOR, PROCESS_COLLECTOR, CollectorRegistry, start_http_server
from prometheus_client.core import CounterMetricFamily, GaugeMetricFamily
from prometheus_client.registry import Collector

from bookworm_scheduler.kernel import cgroup

logger = logging.getLogger(__name__)


class CgroupCollector(Collector):
    """The cgroup's memory limit, CPU quota and CPU throttling, read at each scrape; no series for no limit."""

    def __init__(self, root: Path = cgroup.CGROUP_ROOT):
        self.root = root

    def collect(self):
        limit = cgroup.memory_limit(self.root)
        if limit is not None:
            yield GaugeMetricFamily(
                "bookworm_cgroup_memory_limit_bytes",
                "The memory limit of this process's cgroup (its container's); absent when unlimited.",
                value=limit,
            )
        quota = cgroup.cpu_quota(self.root)
        if quota is not None:
            yield GaugeMetricFamily(
                "bookworm_cgroup_cpu_limit_cores",
                "The CPU quota of this process's cgroup in CPUs (quota / period); absent when unlimited.",
                value=quota,
            )
        throttling = cgroup.cpu_throttling(self.root)
        if throttling is not None:
            yield CounterMetricFamily(
                "bookworm_cgroup_cpu_periods",
                "CPU quota enforcement periods that have elapsed for this process's cgroup.",
                value=throttling.periods,
            )
            yield CounterMetricFamily(
                "bookworm_cgroup_cpu_throttled_periods",
                "Enforcement periods in which this process's cgroup used up its quota and was held back.",
                value=throttling.throttled_periods,
            )
            yield CounterMetricFamily(
                "bookworm_cgroup_cpu_throttled_seconds",
                "Time the threads of this process's cgroup were held back by the CPU quota.",
                value=throttling.throttled_seconds,
            )


def registry() -> CollectorRegistry:
    """A daemon's registry: the process's and the runtime's collectors and the cgroup's; its families register here."""
    made = CollectorRegistry()
    for collector in (PROCESS_COLLECTOR, PLATFORM_COLLECTOR, GC_COLLECTOR, CgroupCollector()):
        made.register(collector)
    return made


def serve(port: int, address: str, registry: CollectorRegistry):
    """Serve `registry` on address:port from a daemon thread; the server."""
    server, _thread = start_http_server(port, addr=address, registry=registry)
    port = server.server_address[1]  # the one the system chose, for port 0
    logger.info("serving metrics on %s:%d", address, port, extra={"action": "metrics_serving", "port": port})
    return server
