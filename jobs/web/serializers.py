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
from typing import Annotated, Any, Literal

from django.db.models import OuterRef, QuerySet, Subquery
from django.urls import reverse
from django_celery_beat.models import PeriodicTask
from pydantic import AwareDatetime, BaseModel, ConfigDict, Field, ValidationError, WithJsonSchema, model_validator

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


class RelatedRun(Row):
    """A run's parent (the run whose outcome created it) or one of its children (follow-ups)."""

    id: int
    url: str
    job: str
    status: OccurrenceStatus


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
    payload: dict | None = Field(description="a one-off run's JSON object; null for a definition's run")
    result: Any = Field(description="what its job returned when it succeeded (any JSON value); null otherwise")
    key: str | None = Field(description="a one-off run's idempotency key")
    expires_at: Instant | None = Field(description="a one-off run not started by then is expired, never run")
    parent: RelatedRun | None = Field(description="the run whose outcome created this one (a follow-up)")
    children: list[RelatedRun] = Field(description="the follow-ups its outcome created, oldest first")


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


class FollowUpRequest(BaseModel):
    """One follow-up of a one-off run (jobs.FollowUp): a run of job created when its parent ends `when`."""

    model_config = ConfigDict(extra="forbid")

    job: str = Field(description="a registered job's name")
    when: Literal["succeeded", "failed", "cancelled", "finished"] = Field(
        "succeeded", description="one of succeeded, failed, cancelled, finished"
    )
    payload: dict | None = Field(None, description="a JSON object, or null")


REFUSALS_LISTED = 10  # the most wrong fields a refusal of a schedule's body names


class ScheduleRequest(BaseModel):
    """The body of POST /tickerq/api/jobs/<job>/schedule: one run of a registered job (jobs.schedule).

    Each field's description is its rule: a body that breaks one is refused with "<name> must be
    <description>" (refusal). A key: while a run with it is scheduled or running, that run is the
    answer instead of a new one. What only the scheduling itself can check (the job's name, the
    payload's size, an expiry before the run) is refused by jobs.schedule (jobs.ScheduleError).
    """

    model_config = ConfigDict(extra="forbid")

    at: AwareDatetime | None = Field(
        None, description="an ISO 8601 time with its offset (2026-12-24T18:00:00+01:00), or null: as soon as possible"
    )
    payload: dict | None = Field(None, description="a JSON object, or null")
    key: str | None = Field(None, max_length=200, description="a string of at most 200 characters, or null")
    expires: AwareDatetime | None = Field(
        None, description="an ISO 8601 time with its offset, after at, or null (not started by then: never run)"
    )
    then: list[FollowUpRequest] = Field([], description="a list of follow-ups ({job, when, payload})")

    @classmethod
    def refusal(cls, errors: list[dict]) -> str:
        """The message for pydantic's errors of a body: each wrong field's rule ("body" when it is no object).

        The first REFUSALS_LISTED different ones, and how many more: a body of thousands of unknown fields
        gets an answer of one line, as fast as any.
        """
        messages: dict[str, None] = {}  # in order, each once
        for error in errors:
            names = [part for part in error["loc"] if isinstance(part, str) and part != "body"]
            model = FollowUpRequest if names[:1] == ["then"] and len(names) > 1 else cls
            field = model.model_fields.get(names[-1]) if names else None
            if error["type"] == "extra_forbidden":
                message = f"unknown field: {names[-1]} (known: {', '.join(model.model_fields)})"
            elif field:
                message = f"{'then: ' if model is FollowUpRequest else ''}{names[-1]} must be {field.description}"
            else:
                message = "the body must be a JSON object: {at, payload, key, expires, then}, each optional"
            messages[message] = None
        listed = list(messages)[:REFUSALS_LISTED]
        more = len(messages) - len(listed)
        return "; ".join(listed) + (f"; and {more} more" if more else "")


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
    """One occurrence with its timings, its attempts (oldest first), the events it published, a one-off
    run's payload, key and expiry, its result, and its parent and children (follow-ups).

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
        "payload": o.payload,
        "result": o.result,
        "key": o.key or None,
        "expires_at": iso(o.expires_at),
        "parent": related_run(o.parent) if o.parent_id else None,
        # A run's children are the follow-ups of its `then` list, a handful (index occ_parent).
        "children": [related_run(child) for child in o.children.order_by("id")],
    }


def related_run(o: Occurrence) -> dict:
    return {"id": o.id, "url": occurrence_url(o.id), "job": o.job_name, "status": o.status}
