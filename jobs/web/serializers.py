"""The rows that `manage.py jobs list|history --json` prints and /tickerq/api/ answers.

One shape for the command line and the API: both call job_rows() and history_rows(), so a
script can switch between them without a translation. An occurrence's row names its own URL in
the API (occurrence_detail's), which the command line prints too.
"""

import dataclasses
from collections.abc import Callable, Mapping
from datetime import datetime, timedelta

from django.db.models import OuterRef, QuerySet, Subquery
from django.urls import reverse
from django_celery_beat.models import PeriodicTask

from jobs.engine.definitions import Definition, definitions_queryset, describe_schedule, policy_of, schedule_zone
from jobs.models import Occurrence
from outbox.models import OutboxMessage

DEFAULT_LIMIT = 20
MAX_LIMIT = 1000  # rows per history request: the query is a LIMIT on an index, never the whole table
MAX_EVENTS = 1000  # events shown per occurrence; "events_truncated" says when it published more

TRUE, FALSE = ("1", "true", "yes"), ("0", "false", "no")


class BadFilter(ValueError):
    """A history filter the caller got wrong; the message names the parameter."""


def iso(value: datetime | None) -> str | None:
    return value.isoformat() if value else None


def milliseconds(value: timedelta | None) -> int | None:
    return round(value / timedelta(milliseconds=1)) if value is not None else None


def occurrence_url(occurrence_id: int) -> str:
    return reverse("api:occurrence", args=[occurrence_id])


def occurrence_urls() -> Callable[[int], str]:
    """occurrence_url for many rows: one reverse() (50 µs), then each id after it (its route ends with the id)."""
    before_id = occurrence_url(0).removesuffix("0")
    return lambda occurrence_id: f"{before_id}{occurrence_id}"


def job_rows() -> list[dict]:
    """Each definition with its schedule, next run and last status, by name."""
    # The last status per definition: one look-up in index occ_task_recent each.
    last_status = Occurrence.objects.filter(task=OuterRef("pk")).order_by("-scheduled_for", "-id")
    tasks = definitions_queryset().annotate(last_status=Subquery(last_status.values("status")[:1])).order_by("name")
    return [job_row(task) for task in tasks]


def job_row(task: PeriodicTask) -> dict:
    next_run = Definition.from_task(task, strict=False).next_instant() if task.enabled else None
    return {
        "name": task.name,
        "job": task.task,
        "schedule": describe_schedule(task),
        "timezone": schedule_zone(task),
        "priority": policy_of(task).priority.cli_name,
        "enabled": task.enabled,
        "next_run": iso(next_run),
        "last_status": task.last_status,
    }


@dataclasses.dataclass(frozen=True)
class HistoryFilter:
    """Which occurrences `jobs history` and /tickerq/api/history/ show: newest first, at most limit."""

    job: str | None = None
    status: str | None = None
    manual: bool | None = None
    limit: int = DEFAULT_LIMIT

    def __post_init__(self):
        if isinstance(self.limit, bool) or not isinstance(self.limit, int) or not 1 <= self.limit <= MAX_LIMIT:
            raise BadFilter(f"limit must be a whole number from 1 to {MAX_LIMIT}")
        if self.status is not None and self.status not in Occurrence.Status.values:
            raise BadFilter(f"status must be one of {', '.join(Occurrence.Status.values)}")

    @classmethod
    def from_query(cls, params: Mapping[str, str]) -> "HistoryFilter":
        """The filter of an API query string: ?job=NAME&status=STATUS&manual=true|false&limit=N."""
        unknown = sorted(set(params) - {f.name for f in dataclasses.fields(cls)})
        if unknown:
            raise BadFilter(f"unknown parameter: {unknown[0]} (known: job, status, manual, limit)")
        limit = params.get("limit") or str(DEFAULT_LIMIT)
        if not limit.isdigit():
            raise BadFilter(f"limit must be a whole number from 1 to {MAX_LIMIT}")
        manual = params.get("manual") or None
        if manual is not None:
            if manual.lower() not in TRUE + FALSE:
                raise BadFilter("manual must be true or false")
            manual = manual.lower() in TRUE
        return cls(job=params.get("job") or None, status=params.get("status") or None, manual=manual, limit=int(limit))

    def occurrences(self) -> QuerySet:
        """Newest first, sliced to limit: a walk down an index that stops after limit rows.

        All jobs: index occ_recent (-scheduled_for, -id). One job: by its definition where it
        still exists (index occ_task_recent, which also holds status), else by the name the
        rows kept (index occ_job_name_recent, on UPPER(job_name)).
        """
        occurrences = Occurrence.objects.order_by("-scheduled_for", "-id")
        if self.job:
            task = PeriodicTask.objects.filter(name=self.job).first()
            occurrences = occurrences.filter(task=task) if task else occurrences.filter(job_name__iexact=self.job)
        if self.status:
            occurrences = occurrences.filter(status=self.status)
        if self.manual is not None:
            occurrences = occurrences.filter(manual=self.manual)
        return occurrences[: self.limit]


def history_rows(history: HistoryFilter) -> list[dict]:
    url = occurrence_urls()
    return [history_row(o, url(o.id)) for o in history.occurrences()]


def history_row(o: Occurrence, url: str) -> dict:
    return {
        "id": o.id,
        "url": url,
        "job": o.job_name,
        "scheduled_for": iso(o.scheduled_for),
        "status": o.status,
        "attempt": o.attempts,
        "instance": o.scheduler or None,
        "started_at": iso(o.started_at),
        "finished_at": iso(o.finished_at),
        "manual": o.manual,
        "error": o.reason or None,
    }


def occurrence_detail(o: Occurrence) -> dict:
    """One occurrence with its timings, its attempts (oldest first) and the events it published.

    The events are the outbox rows whose origin is "occurrence:<id>" (index outbox_origin), in
    the order published: each message's id, most derived type and delivery status.
    """
    attempts = o.attempt_set.order_by("number")
    events = list(
        OutboxMessage.objects.filter(origin=f"occurrence:{o.id}")
        .order_by("id")
        .values("message_id", "message_types", "status")[: MAX_EVENTS + 1]
    )
    return {
        "id": o.id,
        "url": occurrence_url(o.id),
        "job": o.job_name,
        "status": o.status,
        "scheduled_for": iso(o.scheduled_for),
        "manual": o.manual,
        "triggered_by": o.triggered_by or None,
        "error": o.reason or None,
        "timings": {
            "started_at": iso(o.started_at),
            "finished_at": iso(o.finished_at),
            "duration_ms": milliseconds(o.duration),
        },
        "attempts": [
            {
                "number": a.number,
                "status": a.status,
                "scheduler": a.scheduler,
                "started_at": iso(a.started_at),
                "finished_at": iso(a.finished_at),
                "duration_ms": milliseconds(a.duration),
                "error": a.error or None,
            }
            for a in attempts
        ],
        "events": [
            {
                "message_id": str(e["message_id"]),
                "message_type": next(iter(e["message_types"]), None),
                "status": e["status"],
            }
            for e in events[:MAX_EVENTS]
        ],
        "events_truncated": len(events) > MAX_EVENTS,
    }
