"""Job definitions as the scheduler sees them: a PeriodicTask, its schedule and its policy.

Definitions are django-celery-beat rows that the admin edits. This module reads them into
plain values (Definition), tells when they changed, and creates the definitions of
registered jobs that have none.
"""

import dataclasses
import json
import logging
from collections.abc import Iterator
from datetime import datetime, timedelta

from django.core.exceptions import ValidationError
from django.db import DEFAULT_DB_ALIAS, IntegrityError, transaction
from django.db.models import Max
from django_celery_beat.models import CrontabSchedule, PeriodicTask, PeriodicTasks

from .models import JobPolicy, MisfirePolicy, Priority
from .registry import get_job, registered_jobs
from .schedules import (
    EPOCH,
    InvalidSchedule,
    clocked_instants,
    cron_instants,
    interval_instants,
    validate_cron,
)

logger = logging.getLogger(__name__)


@dataclasses.dataclass(frozen=True)
class Policy:
    priority: Priority = Priority.NORMAL
    misfire: MisfirePolicy = MisfirePolicy.RUN_ONCE
    max_retries: int = 0
    retry_intervals: tuple[float, ...] = ()
    timeout: int | None = None

    def retry_delay(self, attempt: int) -> timedelta:
        """The wait after failed attempt number `attempt` (1-based); the last interval repeats."""
        if not self.retry_intervals:
            return timedelta(0)
        return timedelta(seconds=self.retry_intervals[min(attempt, len(self.retry_intervals)) - 1])


def policy_of(task: PeriodicTask) -> Policy:
    """The task's JobPolicy row, else its registered job's defaults, else the global defaults."""
    try:
        row = task.policy
    except JobPolicy.DoesNotExist:
        row = None
    if row is not None:
        return Policy(
            priority=Priority(row.priority),
            misfire=MisfirePolicy(row.misfire_policy),
            max_retries=row.max_retries,
            retry_intervals=tuple(row.retry_intervals or ()),
            timeout=row.timeout_seconds,
        )
    spec = get_job(task.task)
    if spec is not None:
        return Policy(spec.priority, spec.misfire, spec.retries, spec.retry_intervals, spec.timeout)
    return Policy()


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


def planned_through(last_run_at: datetime | None, changed_at: datetime) -> datetime:
    """The planning cursor: instants after it are not planned yet.

    It is PeriodicTask.last_run_at, the last instant planned. django-celery-beat clears it when
    a task is disabled, so a task never planned, or enabled again, starts from its last change
    instead of from old instants.
    """
    return last_run_at if last_run_at is not None else changed_at


@dataclasses.dataclass(frozen=True)
class Definition:
    """An immutable snapshot of one PeriodicTask, enough to compute its fire instants."""

    id: int
    name: str
    job: str
    enabled: bool
    one_off: bool
    kind: str  # crontab, interval, clocked
    expression: str  # the cron expression, or the description of the schedule
    zone: str
    interval: timedelta | None
    anchor: datetime
    clocked_time: datetime | None
    start_time: datetime | None
    expires: datetime | None
    expire_seconds: int | None
    changed_at: datetime
    last_run_at: datetime | None
    policy: Policy
    kwargs: dict

    @classmethod
    def from_task(cls, task: PeriodicTask) -> "Definition":
        """Raise InvalidSchedule when the task's schedule cannot be run."""
        interval = clocked_time = None
        if task.crontab_id:
            kind, zone = "crontab", schedule_zone(task)
            validate_cron(cron_expression(task.crontab), zone)
        elif task.interval_id:
            kind, zone = "interval", "UTC"
            interval = timedelta(**{task.interval.period: task.interval.every})
            if interval <= timedelta(0):
                raise InvalidSchedule("interval must be positive")
        elif task.clocked_id:
            kind, zone = "clocked", "UTC"
            clocked_time = task.clocked.clocked_time
        elif task.solar_id:
            raise InvalidSchedule("solar schedules are not supported; use a crontab in the place's time zone")
        else:
            raise InvalidSchedule("the definition has no schedule")
        return cls(
            id=task.id,
            name=task.name,
            job=task.task,
            enabled=task.enabled,
            one_off=task.one_off,
            kind=kind,
            expression=describe_schedule(task),
            zone=zone,
            interval=interval,
            anchor=task.start_time or EPOCH,
            clocked_time=clocked_time,
            start_time=task.start_time,
            expires=task.expires,
            expire_seconds=task.expire_seconds,
            changed_at=task.date_changed,
            last_run_at=task.last_run_at,
            policy=policy_of(task),
            kwargs=kwargs_of(task),
        )

    def instants_after(self, after: datetime) -> Iterator[datetime]:
        """Fire instants strictly after `after` (UTC), none before the start time."""
        if self.start_time and after < self.start_time:
            after = self.start_time - timedelta(microseconds=1)
        if self.kind == "crontab":
            return cron_instants(self.expression, self.zone, after)
        if self.kind == "interval":
            return interval_instants(self.interval, self.anchor, after)
        return clocked_instants(self.clocked_time, after)

    def next_instant(self) -> datetime | None:
        """The first instant not yet planned when this snapshot was taken."""
        return next(self.instants_after(planned_through(self.last_run_at, self.changed_at)), None)

    def expired(self, scheduled_for: datetime, now: datetime) -> bool:
        if self.expires is not None and now > self.expires:
            return True
        return self.expire_seconds is not None and now > scheduled_for + timedelta(seconds=self.expire_seconds)


def definitions_queryset():
    return PeriodicTask.objects.select_related("crontab", "interval", "clocked", "solar", "policy")


def load_definitions(using: str = DEFAULT_DB_ALIAS) -> tuple[dict[int, Definition], dict[int, str]]:
    """All enabled definitions, and the reason each unusable one was left out."""
    definitions, invalid = {}, {}
    for task in definitions_queryset().using(using).filter(enabled=True):
        try:
            definitions[task.id] = Definition.from_task(task)
        except InvalidSchedule as exc:
            invalid[task.id] = f"{task.name}: {exc}"
    return definitions, invalid


def change_marker(using: str = DEFAULT_DB_ALIAS) -> tuple:
    """A value that moves whenever a definition, its schedule or its policy changes.

    django-celery-beat stamps PeriodicTasks.last_update on every save and delete of a task
    or schedule; JobPolicy.updated_at covers policies. Two indexed single-row reads.
    """
    return (
        PeriodicTasks.objects.using(using).filter(ident=1).values_list("last_update", flat=True).first(),
        JobPolicy.objects.using(using).aggregate(latest=Max("updated_at"))["latest"],
    )


def create_missing_definitions(using: str = DEFAULT_DB_ALIAS) -> list[str]:
    """Give every registered job without a definition one, with its declared defaults.

    An existing definition (same name) is never changed, so what an admin edited stays. A
    definition without a policy gets the registered defaults. Returns the names created.
    """
    created = []
    for spec in registered_jobs():
        if spec.cron is None:
            continue
        try:
            with transaction.atomic(using=using):
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
        logger.info("created definition %s", spec.name, extra={"action": "definition_created", "job": spec.name})
    if task.task == spec.name and not JobPolicy.objects.using(using).filter(task=task).exists():
        JobPolicy.objects.using(using).create(
            task=task,
            priority=spec.priority,
            misfire_policy=spec.misfire,
            max_retries=spec.retries,
            retry_intervals=list(spec.retry_intervals),
            timeout_seconds=spec.timeout,
        )
    return created
