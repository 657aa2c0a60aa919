"""Job definitions as the scheduler sees them: a PeriodicTask, its schedule, policy and cursor.

Definitions are django-celery-beat rows that the admin edits. This module reads them into
plain values (Definition), tells when they changed (DefinitionsVersion, kept by triggers),
and creates the definitions of registered jobs that have none.
"""

import dataclasses
import functools
import json
import logging
from collections.abc import Iterator
from datetime import datetime, timedelta
from itertools import chain, takewhile

from django.core.exceptions import ValidationError
from django.db import DEFAULT_DB_ALIAS, IntegrityError, transaction
from django_celery_beat.models import CrontabSchedule, PeriodicTask

from bookworm_scheduler.kernel.dialect import advisory_lock
from jobs.engine import store
from jobs.engine.policy import Policy
from jobs.engine.registry import get_job, registered_jobs
from jobs.engine.schedules import (
    EPOCH,
    InvalidSchedule,
    clocked_instants,
    cron_instants,
    interval_instants,
    validate_cron,
)
from jobs.models import DefinitionsVersion, JobPolicy, Occurrence, PlanningCursor

logger = logging.getLogger(__name__)


def policy_of(task: PeriodicTask) -> Policy:
    """The task's JobPolicy row, else its registered job's defaults, else the global defaults."""
    try:
        return task.policy.as_policy()
    except JobPolicy.DoesNotExist:
        pass
    spec = get_job(task.task)
    return spec.policy if spec is not None else Policy()


def run_now(task: PeriodicTask, *, by: str) -> Occurrence:
    """A manual run of task at its policy's priority, with its follow-ups, due now; who asked is recorded."""
    return store.trigger(task, priority=policy_of(task).priority, by=by, then=list(follow_ups_of(task)) or None)


def follow_ups_of(task: PeriodicTask) -> tuple[dict, ...]:
    """The definition's follow-ups as an occurrence's `then` keeps them (read with definitions_queryset's prefetch)."""
    return tuple(follow_up.as_then() for follow_up in task.follow_ups.all())


def kwargs_of(task: PeriodicTask) -> dict:
    """The definition's kwargs, passed to the job; the admin form checks they are JSON."""
    try:
        value = json.loads(task.kwargs or "{}")
    except ValueError:
        return {}
    return value if isinstance(value, dict) else {}


def cron_expression(crontab: CrontabSchedule) -> str:
    return " ".join([crontab.minute, crontab.hour, crontab.day_of_month, crontab.month_of_year, crontab.day_of_week])


def describe_schedule(task: PeriodicTask) -> str:
    if task.crontab_id:
        return cron_expression(task.crontab)
    if task.interval_id:
        return f"every {task.interval.every} {task.interval.period}"
    if task.clocked_id:
        return f"at {task.clocked.clocked_time.isoformat()}"
    if task.solar_id:
        return f"solar {task.solar.event}"
    return ""


def schedule_zone(task: PeriodicTask) -> str:
    return str(task.crontab.timezone) if task.crontab_id else "UTC"


@dataclasses.dataclass(frozen=True)
class Schedule:
    """When a definition fires: a crontab in a zone, an interval grid, or one clocked instant."""

    kind: str  # crontab, interval, clocked
    expression: str  # the cron expression, or the description of the schedule
    zone: str
    interval: timedelta | None = None
    anchor: datetime = EPOCH
    clocked_time: datetime | None = None
    start_time: datetime | None = None

    @classmethod
    def of(cls, task: PeriodicTask) -> "Schedule":
        """Raise InvalidSchedule when the task's schedule cannot be run."""
        common = dict(expression=describe_schedule(task), start_time=task.start_time)
        if task.crontab_id:
            zone = schedule_zone(task)
            validate_cron(common["expression"], zone)
            return cls(kind="crontab", zone=zone, **common)
        if task.interval_id:
            interval = timedelta(**{task.interval.period: task.interval.every})
            if interval <= timedelta(0):
                raise InvalidSchedule("interval must be positive")
            return cls(kind="interval", zone="UTC", interval=interval, anchor=task.start_time or EPOCH, **common)
        if task.clocked_id:
            return cls(kind="clocked", zone="UTC", clocked_time=task.clocked.clocked_time, **common)
        if task.solar_id:
            raise InvalidSchedule("solar schedules are not supported; use a crontab in the place's time zone")
        raise InvalidSchedule("the definition has no schedule")

    def instants_after(self, after: datetime) -> Iterator[datetime]:
        """Fire instants strictly after `after` (UTC), none before the start time."""
        if self.start_time and after < self.start_time:
            after = self.start_time - timedelta(microseconds=1)
        if self.kind == "crontab":
            return cron_instants(self.expression, self.zone, after)
        if self.kind == "interval":
            return interval_instants(self.interval, self.anchor, after)
        return clocked_instants(self.clocked_time, after)


@dataclasses.dataclass(frozen=True)
class Cursor:
    """A PlanningCursor's values: instants after planned_through are not planned yet, and
    none in (paused_at, resumed_at] ever will be (the definition was disabled then)."""

    planned_through: datetime
    paused_at: datetime | None = None
    resumed_at: datetime | None = None

    @classmethod
    def of(cls, row: PlanningCursor) -> "Cursor":
        return cls(row.planned_through, row.paused_at, row.resumed_at)

    def unplanned(self, schedule: Schedule) -> Iterator[datetime]:
        """The schedule's instants after the cursor, without those that fell while disabled."""
        after = schedule.instants_after(self.planned_through)
        if self.paused_at is None or self.resumed_at is None:
            return after
        before_pause = takewhile(lambda instant: instant <= self.paused_at, after)
        return chain(before_pause, schedule.instants_after(max(self.resumed_at, self.planned_through)))

    def moved_to(self, instant: datetime) -> "Cursor":
        """Planned through instant; the pause is forgotten once planning is past it."""
        if self.resumed_at is not None and instant >= self.resumed_at:
            return Cursor(instant)
        return dataclasses.replace(self, planned_through=instant)


@functools.lru_cache(maxsize=4096)
def first_unplanned(schedule: Schedule, cursor: Cursor) -> datetime | None:
    """The schedule's first instant after cursor: a function of the two values, so kept per pair.

    Definitions that share a schedule also share their cursor once planned (planning moves it to
    the instant it planned): the jobs list, the API and a scheduler's reload evaluate each
    crontab about once, not once per definition.
    """
    return next(cursor.unplanned(schedule), None)


@dataclasses.dataclass(frozen=True)
class Definition:
    """An immutable snapshot of one PeriodicTask: what to run, when, and how."""

    id: int | None  # None: a one-off run's (job_definition)
    name: str
    job: str
    enabled: bool
    one_off: bool
    schedule: Schedule | None  # None: a definition the scheduler cannot plan (it can still run it by hand)
    expires: datetime | None
    expire_seconds: int | None
    policy: Policy
    kwargs: dict
    cursor: Cursor | None
    then: tuple[dict, ...] = ()  # its follow-ups (DefinitionFollowUp.as_then), copied onto each run's `then`

    @functools.cached_property
    def then_json(self) -> str | None:
        """`then` as the planning statement writes it: JSON text, or None (SQL null) when it has none; once per
        snapshot, however many of its instants are planned."""
        return json.dumps(list(self.then)) if self.then else None

    @classmethod
    def from_task(cls, task: PeriodicTask, *, strict: bool = True) -> "Definition":
        """Raise InvalidSchedule when strict and the task's schedule cannot be planned."""
        try:
            schedule = Schedule.of(task)
        except InvalidSchedule:
            if strict:
                raise
            schedule = None
        try:
            cursor = Cursor.of(task.planning)
        except PlanningCursor.DoesNotExist:
            cursor = None
        return cls(
            id=task.id,
            name=task.name,
            job=task.task,
            enabled=task.enabled,
            one_off=task.one_off,
            schedule=schedule,
            expires=task.expires,
            expire_seconds=task.expire_seconds,
            policy=policy_of(task),
            kwargs=kwargs_of(task),
            cursor=cursor,
            then=follow_ups_of(task),
        )

    def next_instant(self, cursor: Cursor | None = None) -> datetime | None:
        """The first instant not planned by cursor (default: the snapshot's own)."""
        cursor = cursor or self.cursor
        if cursor is None or self.schedule is None:
            return None
        return first_unplanned(self.schedule, cursor)

    def expired(self, scheduled_for: datetime, now: datetime) -> bool:
        if self.expires is not None and now > self.expires:
            return True
        return self.expire_seconds is not None and now > scheduled_for + timedelta(seconds=self.expire_seconds)


def job_definition(name: str) -> Definition:
    """What runs a one-off run of the registered job `name` (jobs.engine.oneoff): no row, schedule or
    kwargs, enabled, with the job's own policy (an unknown job's: the defaults; the runner fails it)."""
    spec = get_job(name)
    return Definition(
        id=None,
        name=name,
        job=name,
        enabled=True,
        one_off=False,
        schedule=None,
        expires=None,
        expire_seconds=None,
        policy=spec.policy if spec is not None else Policy(),
        kwargs={},
        cursor=None,
    )


def definition_for(occurrence: Occurrence, definition_of=None) -> Definition | None:
    """What runs the occurrence: its registered job's for a one-off run, else its definition
    (definition_of(task_id), by default load_definition; None once deleted)."""
    if occurrence.job:
        return job_definition(occurrence.job)
    return (definition_of or load_definition)(occurrence.task_id)


def definitions_queryset():
    related = PeriodicTask.objects.select_related("crontab", "interval", "clocked", "solar", "policy", "planning")
    return related.prefetch_related("follow_ups")


def load_definition(task_id: int | None) -> Definition | None:
    """One definition as it is now, enabled or not, plannable or not; None if deleted."""
    task = definitions_queryset().filter(id=task_id).first() if task_id is not None else None
    return Definition.from_task(task, strict=False) if task is not None else None


def load_definitions(using: str = DEFAULT_DB_ALIAS) -> tuple[dict[int, Definition], dict[int, str]]:
    """All enabled definitions, and the reason each unusable one was left out."""
    definitions, invalid = {}, {}
    for task in definitions_queryset().using(using).filter(enabled=True):
        try:
            definitions[task.id] = Definition.from_task(task)
        except InvalidSchedule as exc:
            invalid[task.id] = f"{task.name}: {exc}"
    return definitions, invalid


def definitions_version(using: str = DEFAULT_DB_ALIAS) -> int | None:
    """A value that moves whenever a definition, a schedule or a policy is written (one indexed read)."""
    return DefinitionsVersion.current(using)


def create_missing_definitions(using: str = DEFAULT_DB_ALIAS) -> list[str]:
    """Give every registered job without a definition one, with its declared defaults.

    An existing definition (same name) is never changed, so what an admin edited stays. A
    definition without a policy gets the registered defaults. Returns the names created.
    Schedulers starting together take turns (a transaction-level advisory lock on PostgreSQL):
    two inserts of one name, each moving jobs_definitionsversion by trigger and django-celery-beat's
    PeriodicTasks row by signal, deadlocked.
    """
    created = []
    for spec in registered_jobs():
        if spec.cron is None:
            continue
        try:
            with transaction.atomic(using=using):
                advisory_lock("create_missing_definitions", using)
                if _create_definition(spec, using):
                    created.append(spec.name)
        except (IntegrityError, ValidationError):
            pass  # another process created it at the same moment (PeriodicTask.save validates)
    return created


def _create_definition(spec, using: str) -> bool:
    task = PeriodicTask.objects.using(using).filter(name=spec.name).first()
    created = task is None
    if created:
        minute, hour, dom, month, dow = spec.cron.split()
        fields = dict(
            minute=minute, hour=hour, day_of_month=dom, month_of_year=month, day_of_week=dow, timezone=spec.timezone
        )
        schedules = CrontabSchedule.objects.using(using)
        crontab = schedules.filter(**fields).first() or schedules.create(**fields)
        task = PeriodicTask.objects.using(using).create(
            name=spec.name, task=spec.name, crontab=crontab, description=spec.description
        )
        logger.info("created definition %s", spec.name, extra={"action": "definition_created", "job_name": spec.name})
    if task.task == spec.name and not JobPolicy.objects.using(using).filter(task=task).exists():
        JobPolicy.objects.using(using).create(task=task, **JobPolicy.fields_of(spec.policy))
    return created
