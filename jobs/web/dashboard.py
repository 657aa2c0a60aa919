"""What the overview at the top of the dashboard shows: plain functions of `now`, the database's time.

Every call stays cheap however large the history and the outbox grow: each query reads a range
of an index, stops at a LIMIT, or counts at most COUNT_CAP rows (shown as "1000+"). Two things
cost too much to compute on every refresh and are held per process, checked against the
database on every call: the next instant of every definition (UpcomingJobs) and the finished
runs and deliveries of the last day and week (jobs.web.counts, which also groups them for the
totals and the charts). Times are shown in the active zone (django.utils.timezone).
"""

import dataclasses
import heapq
import threading
from collections import Counter
from datetime import datetime, timedelta, tzinfo
from functools import reduce
from operator import or_
from urllib.parse import urlencode

from django.conf import settings
from django.db.models import Q, QuerySet
from django.urls import reverse
from django.utils import timezone

from bookworm_scheduler.kernel.liveness import Liveness, relay_liveness, scheduler_liveness
from jobs.engine.definitions import Cursor, Definition, definitions_version, load_definitions
from jobs.models import Occurrence, PlanningCursor, SchedulerInstance
from jobs.web import counts
from jobs.web.counts import MINUTE, finished_runs
from outbox.models import OutboxMessage, RelayInstance

COUNT_CAP = 1000
PENDING_CAP = 10_000  # a backlog's size matters more than a dead letter's: still a short index-only scan
UPCOMING = 10
FAILURES = 10
MAX_SCHEDULERS = 100
MAX_RELAYS = 100
FAILED_SCAN = 1000  # pending rows read, oldest first, for failed sends
EXCHANGES = 5  # exchanges named for the unroutable rows


@dataclasses.dataclass(frozen=True)
class Capped:
    """A count that stopped at a cap: `1000+` rather than a scan of every row."""

    value: int
    capped: bool

    def __str__(self):
        return f"{self.value}+" if self.capped else str(self.value)


def capped_count(queryset: QuerySet, cap: int = COUNT_CAP) -> Capped:
    """SELECT COUNT(*) FROM (SELECT ... LIMIT cap + 1): reads at most cap + 1 index entries."""
    n = queryset.order_by()[: cap + 1].count()
    return Capped(min(n, cap), n > cap)


# Schedulers.


def schedulers(now: datetime, lease: timedelta | None = None) -> dict:
    """Instances in state running, live or stale (bookworm_scheduler.kernel.liveness).

    The table holds one row per process and a day of stopped ones.
    """
    liveness = Liveness.of_lease(lease) if lease else scheduler_liveness()
    instances = list(SchedulerInstance.objects.alive().order_by("instance_id", "started_at")[:MAX_SCHEDULERS])
    return {
        "live": [i for i in instances if not i.is_stale(now, liveness)],
        "stale": [i for i in instances if i.is_stale(now, liveness)],
    }


def running_count(now: datetime) -> Capped:
    """Occurrences running now (partial index occ_running_lease): as many as the schedulers' slots."""
    return capped_count(Occurrence.objects.filter(status=Occurrence.Status.RUNNING))


# The next jobs due.


@dataclasses.dataclass(frozen=True)
class Due:
    definition: Definition
    at: datetime

    @property
    def change_url(self) -> str:
        return reverse("admin:django_celery_beat_periodictask_change", args=[self.definition.id])


class UpcomingJobs:
    """The next instant of every enabled definition, kept up to date cheaply between requests.

    Loading and evaluating 10,000 definitions takes seconds, so this holds them, like the
    scheduler's Planner, and reloads only when DefinitionsVersion moved (a definition, schedule
    or policy was written). Between reloads only planning moves a cursor, and planning moves it
    only past instants that are due: a held instant later than now is still right, and a held
    instant at or before now is a lower bound of the true one. So next(now) re-reads the cursors
    of due definitions only, earliest first, and stops as soon as the first `limit` are settled.
    """

    BATCH = 200  # cursors re-read per query; doubles while more are needed

    def __init__(self):
        self._lock = threading.Lock()
        self.reset()

    def reset(self) -> None:
        self._version: int | None = None
        self._loaded = False
        self.definitions: dict[int, Definition] = {}
        self.next_at: dict[int, datetime] = {}

    def next(self, now: datetime, limit: int = UPCOMING) -> list[Due]:
        with self._lock:
            self._reload_if_changed()
            self._settle(now, limit)
            head = heapq.nsmallest(limit, self.next_at.items(), key=lambda item: (item[1], item[0]))
            return [Due(self.definitions[task_id], at) for task_id, at in head]

    def _reload_if_changed(self) -> None:
        version = definitions_version()
        if self._loaded and version == self._version:
            return
        self.definitions, _ = load_definitions()
        self.next_at = {}
        for task_id, definition in self.definitions.items():
            at = definition.next_instant()
            if at is not None:
                self.next_at[task_id] = at
        self._version, self._loaded = version, True

    def _settle(self, now: datetime, limit: int) -> None:
        """Re-read the cursors of due definitions until the first `limit` instants are known."""
        due = sorted((at, task_id) for task_id, at in self.next_at.items() if at <= now)
        checked: set[int] = set()
        start, batch = 0, self.BATCH
        while start < len(due):
            head = heapq.nsmallest(limit, self.next_at.items(), key=lambda item: (item[1], item[0]))
            if all(task_id in checked or at > now for task_id, at in head):
                return
            ids = [task_id for _, task_id in due[start : start + batch]]
            self._refresh(ids)
            checked.update(ids)
            start, batch = start + batch, batch * 2

    def _refresh(self, ids: list[int]) -> None:
        cursors = {row.task_id: row for row in PlanningCursor.objects.filter(task_id__in=ids)}
        instants: dict = {}  # definitions sharing a schedule and a cursor are evaluated once
        for task_id in ids:
            definition, row = self.definitions[task_id], cursors.get(task_id)
            cursor = Cursor.of(row) if row is not None else None
            key = (definition.schedule, cursor)
            if key not in instants:
                instants[key] = definition.next_instant(cursor) if cursor is not None else None
            if instants[key] is None:
                self.next_at.pop(task_id, None)
            else:
                self.next_at[task_id] = instants[key]


# One per process: what it holds is a cache, checked against the database on every call.
upcoming_jobs = UpcomingJobs()


# Failures of the last day.


@dataclasses.dataclass(frozen=True)
class Failure:
    occurrence: Occurrence

    @property
    def change_url(self) -> str:
        return reverse("admin:jobs_occurrence_change", args=[self.occurrence.id])

    @property
    def error(self) -> str:
        """The last line of the reason: the exception, without its traceback."""
        lines = self.occurrence.reason.strip().splitlines()
        return lines[-1] if lines else ""


def recent_failures(now: datetime, per_minute: Counter | None = None, limit: int = FAILURES) -> dict:
    """Runs that failed since counts.floor(now - 24 h), newest first, and how many.

    The count comes from finished_runs. The rows are read from the newest minutes that had
    failures only, just enough of them to hold `limit` failures: a search of the whole day for
    the few failures of a healthy system would read every run of the day on occ_finished
    (which does not hold the status).
    """
    if per_minute is None:
        per_minute = finished_runs.counts(now)
    failed = {minute: n for (minute, status), n in per_minute.items() if status == Occurrence.Status.FAILED and n}
    newest, held = [], 0
    for minute in sorted(failed, reverse=True):
        if held >= limit:
            break
        newest.append(minute)
        held += failed[minute]
    if not newest:
        return {"rows": [], "count": 0}
    ranges = reduce(or_, (Q(finished_at__gte=minute, finished_at__lt=minute + MINUTE) for minute in newest))
    rows = (
        Occurrence.objects.filter(ranges, status=Occurrence.Status.FAILED, finished_at__lte=now)
        .order_by("-finished_at", "-id")
        .only("id", "job_name", "scheduled_for", "finished_at", "attempts", "reason", "manual")[:limit]
    )
    return {"rows": [Failure(o) for o in rows], "count": sum(failed.values())}


# The outbox.


def outbox_backlog(now: datetime) -> dict:
    """Messages waiting or given up on, and the age of the oldest one waiting.

    Pending rows are counted on the partial index outbox_pending (up to PENDING_CAP), dead and
    unroutable ones on outbox_status_recent (up to COUNT_CAP), index-only. The oldest pending
    row is the first of outbox_pending: ids grow with created_at, and a requeued row keeps both.
    """
    pending = OutboxMessage.objects.filter(status=OutboxMessage.Status.PENDING)
    oldest = pending.order_by("id").values_list("created_at", flat=True).first()
    return {
        "pending": capped_count(pending, PENDING_CAP),
        "dead": capped_count(OutboxMessage.objects.filter(status=OutboxMessage.Status.DEAD)),
        "unroutable": capped_count(OutboxMessage.objects.filter(status=OutboxMessage.Status.UNROUTABLE)),
        "oldest_pending_at": oldest,
        "oldest_pending_age": max(now - oldest, timedelta(0)) if oldest else None,
    }


# The relays, and what the outbox tells of the broker.


def relays(now: datetime) -> dict:
    """Relay instances in state running, live or stale by relay_liveness(), as schedulers() does."""
    liveness = relay_liveness()
    instances = list(RelayInstance.objects.alive().order_by("instance_id", "started_at")[:MAX_RELAYS])
    return {
        "live": [i for i in instances if not i.is_stale(now, liveness)],
        "stale": [i for i in instances if i.is_stale(now, liveness)],
    }


@dataclasses.dataclass(frozen=True)
class SendFailures:
    """Pending messages whose last send failed (OutboxMessage.record_failure): the broker nacked
    them, closed their channel or refused their exchange. The relay retries them with a doubling
    delay. An unreachable broker leaves no such row: the relay claims nothing while it is
    disconnected (see stalled in delivery())."""

    count: Capped
    oldest_created_at: datetime
    last_failed_at: datetime
    last_attempt: int
    last_error: str


def failed_at(available_at: datetime, attempts: int) -> datetime:
    """When a failed send was recorded: record_failure set available_at to then plus the retry's delay."""
    return available_at - OutboxMessage.retry_delay(attempts, settings.OUTBOX_RETRY_MAX_SECONDS)


def send_failures(pending: Capped) -> SendFailures | None:
    """The failed sends among the first FAILED_SCAN pending rows (bounded); None if there are none."""
    rows = list(
        OutboxMessage.objects.failed_pending(FAILED_SCAN)
        .order_by("id")
        .values_list("id", "created_at", "available_at", "attempts")
    )
    if not rows:
        return None
    last = max(rows, key=lambda row: (failed_at(row[2], row[3]), row[0]))
    error = OutboxMessage.objects.filter(id=last[0]).values_list("last_error", flat=True).first() or ""
    more = len(rows) >= FAILED_SCAN and (pending.capped or pending.value > FAILED_SCAN)
    return SendFailures(
        count=Capped(len(rows), more),
        oldest_created_at=rows[0][1],
        last_failed_at=failed_at(last[2], last[3]),
        last_attempt=last[3],
        last_error=error.strip().splitlines()[-1] if error.strip() else "",
    )


def delivery(now: datetime, backlog: dict, relays: dict) -> dict:
    """What the database tells of the relays' way to the broker.

    The relay records nothing about the broker itself. Failed sends are on the pending rows
    (send_failures). A broker that cannot be reached leaves the rows untouched: that shows as
    `stalled`, a backlog older than relay_liveness().stale_after while a relay runs and nothing
    was delivered for as long; /health/ and the relay's log (outbox_broker_unavailable) say why.
    """
    last_delivered_at = OutboxMessage.objects.last_delivered_at()
    oldest = backlog["oldest_pending_at"]
    failures = send_failures(backlog["pending"]) if oldest is not None else None
    quiet = relay_liveness().stale_after
    stalled = (
        failures is None
        and bool(relays["live"] or relays["stale"])
        and oldest is not None
        and now - oldest > quiet
        and (last_delivered_at is None or now - last_delivered_at > quiet)
    )
    return {"last_delivered_at": last_delivered_at, "failures": failures, "stalled": stalled}


@dataclasses.dataclass(frozen=True)
class Unroutable:
    """Rows the broker returned (no queue bound to their exchange), of one exchange."""

    exchange: str
    count: int

    @property
    def list_url(self) -> str:
        query = urlencode({"status__exact": OutboxMessage.Status.UNROUTABLE, "exchange": self.exchange})
        return f"{reverse('admin:outbox_outboxmessage_changelist')}?{query}"


def unroutable_exchanges(count: Capped) -> dict:
    """The exchanges of the newest unroutable rows (at most COUNT_CAP + 1 read), the most rows first.

    `of_newest`: the counts are of the newest rows only, when there are more than COUNT_CAP.
    """
    if not count.value:
        return {"exchanges": [], "more": False, "of_newest": False}
    found = OutboxMessage.objects.exchanges_of_newest(OutboxMessage.Status.UNROUTABLE, COUNT_CAP + 1, EXCHANGES + 1)
    return {
        "exchanges": [Unroutable(exchange, n) for exchange, n in found[:EXCHANGES]],
        "more": len(found) > EXCHANGES,
        "of_newest": count.capped,
    }


def reset() -> None:
    """Forget what this process holds (the tests' rolled-back rows reuse versions and instants)."""
    upcoming_jobs.reset()
    counts.reset()


def overview(now: datetime, zone: tzinfo | None = None) -> dict:
    """Everything the overview shows, as of now, its times in `zone` (by default the active one)."""
    zone = counts.zone_or_current(zone)
    runs = finished_runs.counts(now)
    per_day = counts.runs_per_day(now, zone=zone)
    backlog = outbox_backlog(now)
    relay_instances = relays(now)
    return {
        "now": now,
        "zone": zone,
        "zone_name": timezone.localtime(now, zone).tzname(),
        "schedulers": schedulers(now),
        "relays": relay_instances,
        "delivery": delivery(now, backlog, relay_instances),
        "unroutable": unroutable_exchanges(backlog["unroutable"]),
        "running": running_count(now),
        "upcoming": upcoming_jobs.next(now),
        "failures": recent_failures(now, runs),
        "runs": counts.runs_per_hour(now, runs, zone),
        "runs_per_day": per_day,
        "totals": counts.run_totals(runs, per_day),
        "outbox": backlog,
        "delivered": counts.delivered_per_hour(now, zone),
    }
