"""Prometheus metrics: the web app's /metrics, read from the database, and the daemons' own servers.

/metrics (metrics_view) answers what the database knows: runs per job and status over the last
hour, occurrences waiting or running, live scheduler and relay instances, outbox rows per status
and the age of the oldest pending one. DatabaseCollector computes them at scrape time with a few
bounded queries, so every gunicorn worker answers the same and no multiprocess mode is needed:
the registry it is served from holds nothing else (no per-worker counters, no process_*).

The view is behind the dashboard's authentication: a staff user's session, or HTTP Basic with a
staff user's credentials (Prometheus' `basic_auth`), checked by bookworm_scheduler.web.basic_auth
(throttled by django-axes, hashed once per CACHE_SECONDS); anything else is answered 401 with a
Basic challenge. It is mounted at /metrics, outside /tickerq/, so the view checks the
credentials itself instead of BasicAuthMiddleware.

A definition's name is the label job_name: Prometheus owns `job` (the scrape job's name) and
would rename ours. `manage.py runscheduler` and `manage.py relay_outbox` serve their own
process's metrics (bookworm_scheduler.kernel.daemon_metrics).
"""

import logging
from datetime import timedelta

from django.db import DatabaseError
from django.db.models import Count
from django.http import HttpRequest, HttpResponse
from django.views.decorators.cache import never_cache
from django.views.decorators.http import require_GET
from prometheus_client import CollectorRegistry
from prometheus_client.core import GaugeMetricFamily
from prometheus_client.exposition import choose_encoder
from prometheus_client.registry import Collector

from bookworm_scheduler.kernel.clock import default_clock
from bookworm_scheduler.kernel.liveness import relay_liveness, scheduler_liveness
from bookworm_scheduler.web.basic_auth import authenticate_basic, basic_header, unauthorized
from jobs.models import Occurrence, SchedulerInstance
from jobs.web.tokens import bearer_refusal
from outbox.models import OutboxMessage, RelayInstance

logger = logging.getLogger(__name__)

# The window of bookworm_job_runs_last_hour: finished runs are found through index occ_finished.
RUNS_WINDOW = timedelta(hours=1)
# Outbox rows are counted up to this many per status (a count of a large backlog reads the whole
# index); the gauge then says "at least this many".
OUTBOX_COUNT_CAP = 100_000


class DatabaseCollector(Collector):
    """Gauges computed from the database at each scrape; bookworm_database_up 0 if it cannot be read."""

    def describe(self):
        return []  # nothing to query when the collector is registered

    def collect(self):
        try:
            families = self.families(default_clock())
        except DatabaseError as error:
            logger.warning(
                "metrics: the database cannot be read: %s",
                error,
                extra={"action": "metrics_database_error", "error": str(error)},
            )
            families = []
        yield from families
        yield GaugeMetricFamily(
            "bookworm_database_up", "1 if this scrape could read the database, else 0.", value=1 if families else 0
        )

    def families(self, now) -> list:
        return [
            self.runs(now),
            self.open_occurrences(),
            *self.instances(now),
            *self.outbox(now),
        ]

    @staticmethod
    def runs(now) -> GaugeMetricFamily:
        family = GaugeMetricFamily(
            "bookworm_job_runs_last_hour",
            "Occurrences that finished in the last hour, by job and final status "
            "(succeeded, failed, skipped, missed, expired).",
            labels=["job_name", "status"],
        )
        rows = (
            Occurrence.objects.filter(status__in=Occurrence.FINISHED, finished_at__gte=now - RUNS_WINDOW)
            .values_list("job_name", "status")
            .annotate(count=Count("id"))
            .order_by()
        )
        for job_name, status, count in rows:
            family.add_metric([job_name, status], count)
        return family

    @staticmethod
    def open_occurrences() -> GaugeMetricFamily:
        family = GaugeMetricFamily(
            "bookworm_job_occurrences",
            "Occurrences waiting (scheduled: due, or a pending retry) or running now, by job.",
            labels=["job_name", "status"],
        )
        # One query per status, each over its partial index (occ_scheduled_run_after, occ_running_lease).
        for status in (Occurrence.Status.SCHEDULED, Occurrence.Status.RUNNING):
            rows = Occurrence.objects.filter(status=status).values_list("job_name").annotate(count=Count("id"))
            for job_name, count in rows.order_by():
                family.add_metric([job_name, status], count)
        return family

    @staticmethod
    def instances(now) -> list:
        liveness = scheduler_liveness()
        schedulers = list(SchedulerInstance.objects.alive())
        stale = sum(1 for instance in schedulers if instance.is_stale(now, liveness))
        scheduler_family = GaugeMetricFamily(
            "bookworm_scheduler_instances",
            "Scheduler processes registered as running: live (beating), stale (silent for two heartbeats).",
            labels=["state"],
        )
        scheduler_family.add_metric(["live"], len(schedulers) - stale)
        scheduler_family.add_metric(["stale"], stale)
        liveness = relay_liveness()
        relays = list(RelayInstance.objects.alive())
        stale = sum(1 for relay in relays if relay.is_stale(now, liveness))
        relay_family = GaugeMetricFamily(
            "bookworm_outbox_relays",
            "Relay processes registered as running: live (beating), "
            "stale (silent for HEALTH_HEARTBEAT_MAX_AGE_SECONDS, as /health/ judges).",
            labels=["state"],
        )
        relay_family.add_metric(["live"], len(relays) - stale)
        relay_family.add_metric(["stale"], stale)
        return [scheduler_family, relay_family]

    @staticmethod
    def outbox(now) -> list:
        messages = GaugeMetricFamily(
            "bookworm_outbox_messages",
            f"Outbox rows waiting (pending) or needing a person (unroutable, dead), counted up to {OUTBOX_COUNT_CAP}.",
            labels=["status"],
        )
        rows = OutboxMessage.objects
        for status in (OutboxMessage.Status.PENDING, OutboxMessage.Status.UNROUTABLE, OutboxMessage.Status.DEAD):
            # COUNT over a LIMIT subquery, over index outbox_pending or outbox_status_recent.
            messages.add_metric([status], rows.filter(status=status)[:OUTBOX_COUNT_CAP].count())
        # The first pending row in write order: one step into outbox_pending (as status_counts does).
        oldest = (
            rows.filter(status=OutboxMessage.Status.PENDING).order_by("id").values_list("created_at", flat=True).first()
        )
        age = GaugeMetricFamily(
            "bookworm_outbox_oldest_pending_age_seconds",
            "Age of the oldest pending outbox row (0 when none is pending).",
            value=max((now - oldest).total_seconds(), 0.0) if oldest else 0.0,
        )
        return [messages, age]


database_registry = CollectorRegistry(auto_describe=False)
database_registry.register(DatabaseCollector())


@never_cache
@require_GET
def metrics_view(request: HttpRequest) -> HttpResponse:
    """The database's metrics in Prometheus' text format, for a staff session, staff Basic credentials or a staff
    user's API token (Authorization: Bearer; a read-only one will do)."""
    refused = bearer_refusal(request)
    if refused is not None:
        return refused
    header = basic_header(request)
    if header:
        refusal = authenticate_basic(request, header)
        if refusal is not None:
            return refusal
    if not (request.user.is_active and request.user.is_staff):
        return unauthorized(request, "Staff credentials required (HTTP Basic, an API token or a dashboard session).")
    encoder, content_type = choose_encoder(request.headers.get("Accept", ""))
    return HttpResponse(encoder(database_registry), content_type=content_type)
