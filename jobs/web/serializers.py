"""The rows that `manage.py jobs list|history --json` prints and /tickerq/api/ answers, and their schemas.

One shape for the command line and the API: both call job_rows(), history_rows() and
occurrence_detail(), so a script can switch between them without a translation. An
occurrence's row names its own URL in the API (occurrence_detail's), which the command line
prints too.

The pydantic models below (JobRow, HistoryRow, OccurrenceDetail) are those rows' schemas: the
API declares them as its responses, so its OpenAPI description documents the rows and every
answer is checked against them (extra="forbid": a key added to a row but not to its schema
fails the API's tests, never drifts silently). Instants are the rows' ISO 8601 strings, as
the command line prints them, not re-formatted by pydantic.
"""

from collections.abc import Callable
from datetime import datetime, timedelta
from typing import Annotated, Literal

from django.db.models import OuterRef, QuerySet, Subquery
from django.urls import reverse
from django_celery_beat.models import PeriodicTask
from pydantic import BaseModel, ConfigDict, Field, ValidationError, WithJsonSchema, model_validator

from jobs.engine.definitions import Definition, definitions_queryset, describe_schedule, policy_of, schedule_zone
from jobs.engine.policy import Priority
from jobs.models import Attempt, Occurrence
from outbox.models import OutboxMessage

DEFAULT_LIMIT = 20
MAX_LIMIT = 1000  # rows per history request: the query is a LIMIT on an index, never the whole table
MAX_EVENTS = 1000  # events shown per occurrence; "events_truncated" says when it published more

Instant = Annotated[str, WithJsonSchema({"type": "string", "format": "date-time"})]
OccurrenceStatus = Literal[tuple(Occurrence.Status.values)]


class Row(BaseModel):
    model_config = ConfigDict(extra="forbid")


class JobRow(Row):
    """A definition: `jobs list --json`, GET /tickerq/api/jobs/."""

    name: str
    job: str = Field(description="the task it runs")
    schedule: str = Field(description='a cron expression, "every N <period>", "at <instant>" or "solar <event>"')
    timezone: str = Field(description="the zone its cron expression is evaluated in (UTC for the others)")
    priority: Literal[tuple(p.cli_name for p in Priority)]
    enabled: bool
    next_run: Instant | None = Field(description="null when disabled")
    last_status: OccurrenceStatus | None = Field(description="its newest occurrence's; null when none")


class HistoryRow(Row):
    """An occurrence: `jobs history --json`, GET /tickerq/api/history/."""

    id: int
    url: str = Field(description="its detail: GET /tickerq/api/occurrences/<id>")
    job: str
    scheduled_for: Instant
    status: OccurrenceStatus
    attempt: int = Field(description="attempts made")
    instance: str | None = Field(description="the scheduler that ran it last")
    started_at: Instant | None
    finished_at: Instant | None
    manual: bool
    error: str | None


class Timings(Row):
    started_at: Instant | None
    finished_at: Instant | None
    duration_ms: int | None


class AttemptRow(Row):
    number: int
    status: Literal[tuple(Attempt.Status.values)]
    scheduler: str
    started_at: Instant | None
    finished_at: Instant | None
    duration_ms: int | None
    error: str | None


class EventRow(Row):
    message_id: str = Field(json_schema_extra={"format": "uuid"})
    message_type: str | None = Field(description="its most derived message type")
    status: Literal[tuple(OutboxMessage.Status.values)]


class OccurrenceDetail(Row):
    """One occurrence: GET /tickerq/api/occurrences/<id>."""

    id: int
    url: str
    job: str
    status: OccurrenceStatus
    scheduled_for: Instant
    manual: bool
    triggered_by: str | None
    error: str | None
    timings: Timings
    attempts: list[AttemptRow] = Field(description="oldest first")
    events: list[EventRow] = Field(description=f"the events it published, in order; at most {MAX_EVENTS}")
    events_truncated: bool = Field(description="it published more events than shown")


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


class BadFilter(ValueError):
    """A history filter the caller got wrong; the message names the parameter."""


class HistoryFilter(BaseModel):
    """Which occurrences `jobs history` and /tickerq/api/history/ show: newest first, at most limit.

    The API reads it from the query string (django-ninja's Query, which documents each field as
    a parameter); the command line builds it from its options. Each field's description is its
    rule: a value that breaks it is refused with "<name> must be <description>" (refusal), a
    BadFilter when built in code. An empty parameter (?job=) is left out.
    """

    model_config = ConfigDict(frozen=True, extra="forbid")

    job: str | None = Field(None, description="a definition's name, in any case (a deleted one's too)")
    status: OccurrenceStatus | None = Field(None, description=f"one of {', '.join(Occurrence.Status.values)}")
    manual: bool | None = Field(None, description="true or false")
    limit: int = Field(DEFAULT_LIMIT, ge=1, le=MAX_LIMIT, description=f"a whole number from 1 to {MAX_LIMIT}")

    def __init__(self, **values):
        try:
            super().__init__(**values)
        except ValidationError as exc:
            raise BadFilter(self.refusal(exc.errors())) from None

    @model_validator(mode="before")
    @classmethod
    def leave_out_empty(cls, values):
        return {k: v for k, v in values.items() if v != ""} if isinstance(values, dict) else values

    @classmethod
    def refusal(cls, errors: list[dict]) -> str:
        """The message for pydantic's errors (their loc ends with the field's name): each wrong parameter's rule."""
        messages = []
        for error in errors:
            name = error["loc"][-1] if error["loc"] else "query"
            field = cls.model_fields.get(name)
            if field:
                message = f"{name} must be {field.description}"
            elif error["type"] == "value_error":  # a BadFilter from __init__, which pydantic calls when nested
                message = str(error["ctx"]["error"])
            else:
                message = f"{name}: {error['msg']}"
            if message not in messages:
                messages.append(message)
        return "; ".join(messages)

    @classmethod
    def unknown_parameter(cls, names) -> str | None:
        """The refusal of a query string naming a parameter the filter does not have; None when all are known."""
        unknown = sorted(set(names) - set(cls.model_fields))
        if unknown:
            return f"unknown parameter: {unknown[0]} (known: {', '.join(cls.model_fields)})"
        return None

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
