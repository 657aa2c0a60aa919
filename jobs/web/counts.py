"""Finished runs and delivered messages counted over the last day and the last week, for the overview.

Counting a week of a busy table on every refresh would read hundreds of thousands of rows, and
no index holds both finished_at and the status (occ_finished is on finished_at alone). So the
counts are kept per process (RecentCounts): the settled past is read once, and each call reads
only its last few minutes. Counts are kept per minute (or quarter of an hour) of UTC, the same
instants in every zone; they are grouped into hours and days of the viewer's zone when shown.
"""

import dataclasses
import math
import threading
from bisect import bisect_right
from collections import Counter
from datetime import UTC, datetime, time, timedelta, tzinfo

from django.db.models import Count
from django.db.models.functions import TruncMinute
from django.utils import timezone

from jobs.models import Occurrence
from outbox.models import OutboxMessage

EPOCH = datetime(1970, 1, 1, tzinfo=UTC)
MINUTE = timedelta(minutes=1)
# Every zone's midnight falls on a quarter of an hour of UTC (offsets are whole quarters of an
# hour), so a quarter never straddles two days of any zone.
QUARTER = timedelta(minutes=15)
HOUR = timedelta(hours=1)
DAY = timedelta(hours=24)
HOURS = 24  # bars in the hourly charts, the last one the current hour
DAYS = 7  # bars in the daily chart, the last one today
# The days of the daily chart start at most DAYS days (and a daylight-saving hour) before now.
WEEK = timedelta(days=DAYS + 1)
# What a finished occurrence came to, in the order the overview lists them.
OUTCOMES = (
    Occurrence.Status.SUCCEEDED,
    Occurrence.Status.FAILED,
    Occurrence.Status.MISSED,
    Occurrence.Status.EXPIRED,
    Occurrence.Status.SKIPPED,
)


def floor(instant: datetime, grain: timedelta = MINUTE) -> datetime:
    """The start of the grain (a minute, a quarter of an hour) of UTC that holds instant."""
    instant = instant.astimezone(UTC)
    return instant - (instant - EPOCH) % grain


def hour_floor(instant: datetime, zone: tzinfo) -> datetime:
    """The start of the hour of `zone` that holds instant, in UTC (a half-hour zone's hours start at :30 UTC)."""
    local = instant.astimezone(zone)
    return local.replace(minute=0, second=0, microsecond=0).astimezone(UTC)


class RecentCounts:
    """Rows per grain (and per `split` column) of the last `span`, by the instant in `field`.

    A row is stamped (finished_at, delivered_at) with the database's time shortly before its
    transaction commits, so the minutes older than SETTLE do not change any more: they are
    counted once and kept here, per process, and each call reads only the rows after them (a few
    minutes' worth) on the range index. The relay stamps a batch before it waits for the
    broker's confirms (OUTBOX_CONFIRM_TIMEOUT_SECONDS); SETTLE is well beyond that.
    """

    SETTLE = timedelta(minutes=5)

    def __init__(self, rows, field: str, split: str | None = None, span: timedelta = DAY, grain: timedelta = MINUTE):
        self.rows, self.field, self.split, self.span, self.grain = rows, field, split, span, grain
        self._lock = threading.Lock()
        self.reset()

    def reset(self) -> None:
        self.watermark: datetime | None = None  # rows before it are counted in `settled`
        self.settled: Counter = Counter()

    def counts(self, now: datetime) -> Counter:
        """{(grain, split value): rows} for the grains from floor(now - span) to now."""
        since = floor(now - self.span, self.grain)
        with self._lock:
            if self.watermark is None or not since <= self.watermark <= now:
                self.watermark, self.settled = since, Counter()
            settled_until = max(self.watermark, floor(now - self.SETTLE))
            if settled_until > self.watermark:
                self.settled.update(self._count(self.watermark, settled_until))
                self.watermark = settled_until
            for key in [key for key in self.settled if key[0] < since]:
                del self.settled[key]
            counts = Counter(self.settled)
        counts.update(self._count(settled_until, now, through=True))
        return counts

    def _count(self, start: datetime, end: datetime, through: bool = False) -> Counter:
        """Rows per grain with start <= field < end (<= end if through): date_trunc on a range, per minute."""
        bounds = {f"{self.field}__gte": start, f"{self.field}__{'lte' if through else 'lt'}": end}
        rows = (
            self.rows()
            .filter(**bounds)
            .annotate(minute=TruncMinute(self.field, tzinfo=UTC))
            .values_list("minute", *([self.split] if self.split else []))
            .annotate(n=Count("*"))
            .order_by()
        )
        counts = Counter()
        for row in rows:
            counts[floor(row[0], self.grain), row[1] if self.split else None] += row[-1]
        return counts


def finished():
    """Finished occurrences: the condition of the partial index occ_finished, on which they are counted."""
    return Occurrence.objects.filter(status__in=Occurrence.FINISHED)


# One of each per process: what they hold is a cache, checked against the database on every call.
# Finished runs per minute of the last day, and per quarter of an hour of the last week.
finished_runs = RecentCounts(finished, "finished_at", split="status")
finished_runs_week = RecentCounts(finished, "finished_at", split="status", span=WEEK, grain=QUARTER)
# Deliveries on the partial index outbox_delivered.
deliveries = RecentCounts(lambda: OutboxMessage.objects.filter(status=OutboxMessage.Status.DELIVERED), "delivered_at")


def reset() -> None:
    finished_runs.reset()
    finished_runs_week.reset()
    deliveries.reset()


def zone_or_current(zone: tzinfo | None) -> tzinfo:
    return zone if zone is not None else timezone.get_current_timezone()


# Per hour of the last day.


def chart_hours(now: datetime, zone: tzinfo) -> list[datetime]:
    """The starts (UTC) of the HOURS hours of `zone` the charts show, the last one the current (partial) hour."""
    last = hour_floor(now, zone)
    return [last - HOUR * (HOURS - 1 - i) for i in range(HOURS)]


def _per_hour(per_minute: Counter, hours: list[datetime], split, zone: tzinfo) -> list[int]:
    counts = Counter()
    for (minute, value), n in per_minute.items():
        if value == split:
            counts[hour_floor(minute, zone)] += n
    return [counts[hour] for hour in hours]


def runs_per_hour(now: datetime, per_minute: Counter | None = None, zone: tzinfo | None = None) -> dict:
    """Succeeded and failed runs per hour of `zone` (the active one by default), by the time they finished."""
    zone = zone_or_current(zone)
    hours = chart_hours(now, zone)
    if per_minute is None:
        per_minute = finished_runs.counts(now)
    statuses = (Occurrence.Status.SUCCEEDED, Occurrence.Status.FAILED)
    return {
        "hours": [hour.astimezone(zone) for hour in hours],
        "series": {status: _per_hour(per_minute, hours, status, zone) for status in statuses},
    }


def delivered_per_hour(now: datetime, zone: tzinfo | None = None) -> dict:
    """Messages delivered per hour of `zone` (the active one by default)."""
    zone = zone_or_current(zone)
    hours = chart_hours(now, zone)
    return {
        "hours": [hour.astimezone(zone) for hour in hours],
        "series": {"delivered": _per_hour(deliveries.counts(now), hours, None, zone)},
    }


# Per day of the last week.


def day_starts(now: datetime, zone: tzinfo) -> list[datetime]:
    """The midnights of `zone` that start today and the DAYS - 1 days before it, oldest first."""
    today = now.astimezone(zone).date()
    return [datetime.combine(today - timedelta(days=DAYS - 1 - i), time(), tzinfo=zone) for i in range(DAYS)]


def runs_per_day(now: datetime, per_quarter: Counter | None = None, zone: tzinfo | None = None) -> dict:
    """Finished occurrences per day of `zone` (the active one by default) and outcome, today the last."""
    zone = zone_or_current(zone)
    days = day_starts(now, zone)
    bounds = [day.astimezone(UTC) for day in days]
    if per_quarter is None:
        per_quarter = finished_runs_week.counts(now)
    series = {status: [0] * DAYS for status in OUTCOMES}
    for (quarter, status), n in per_quarter.items():
        if quarter >= bounds[0] and status in series:
            series[status][bisect_right(bounds, quarter) - 1] += n
    return {"days": days, "series": series}


# Totals.


@dataclasses.dataclass(frozen=True)
class Totals:
    """Finished occurrences per outcome over a window, and the share of runs that succeeded."""

    counts: dict[str, int]

    @property
    def rate(self) -> str:
        """Succeeded of the runs that ran (succeeded and failed), rounded down: "100.0 %" only if none failed."""
        succeeded, failed = self.counts[Occurrence.Status.SUCCEEDED], self.counts[Occurrence.Status.FAILED]
        if not succeeded + failed:
            return "–"
        return f"{math.floor(1000 * succeeded / (succeeded + failed)) / 10:.1f} %"


def run_totals(per_minute: Counter, per_day: dict) -> dict:
    """The outcomes of the last 24 hours (per_minute, as finished_runs counts them) and of the days of per_day."""
    day = Counter()
    for (_, status), n in per_minute.items():
        day[status] += n
    last_day = Totals({status: day[status] for status in OUTCOMES})
    last_week = Totals({status: sum(per_day["series"][status]) for status in OUTCOMES})
    return {
        "day": last_day,
        "week": last_week,
        "since": per_day["days"][0],
        "rows": [(status, last_day.counts[status], last_week.counts[status]) for status in OUTCOMES],
    }
