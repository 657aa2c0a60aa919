"""Job code registration: the @job decorator and the registry it fills.

A definition (a PeriodicTask row) names its job in `task`; the scheduler looks the code up
here. Registering a job also declares the defaults its definition is created with.
"""

import dataclasses
from collections.abc import Callable
from datetime import datetime

from .models import MisfirePolicy, Priority


@dataclasses.dataclass(frozen=True)
class JobContext:
    """What a running job is told about its run."""

    job_name: str
    occurrence_id: int
    scheduled_for: datetime
    attempt: int
    manual: bool
    kwargs: dict = dataclasses.field(default_factory=dict)  # the definition's kwargs (JSON)


@dataclasses.dataclass(frozen=True)
class JobSpec:
    name: str
    func: Callable[[JobContext], object]
    cron: str | None
    timezone: str = "UTC"
    priority: Priority = Priority.NORMAL
    retries: int = 0
    retry_intervals: tuple[float, ...] = ()
    timeout: int | None = None
    misfire: MisfirePolicy = MisfirePolicy.RUN_ONCE
    description: str = ""


_registry: dict[str, JobSpec] = {}


class DuplicateJob(ValueError):
    pass


def job(
    name: str,
    *,
    cron: str | None = None,
    timezone: str = "UTC",
    priority: Priority = Priority.NORMAL,
    retries: int = 0,
    retry_intervals: tuple[float, ...] = (),
    timeout: int | None = None,
    misfire: MisfirePolicy = MisfirePolicy.RUN_ONCE,
):
    """Register the decorated function as the job `name` with its default schedule and policy.

    With a cron expression, `migrate` (and scheduler start-up) creates a definition of that
    name when none exists; without one, the job runs only where a definition names it.

    The function receives a JobContext and runs inside one database transaction together with
    the recording of its result: whatever it writes, outbox messages included, commits only
    if it returns.
    """
    from .schedules import validate_cron

    if cron is not None:
        validate_cron(cron, timezone)

    def register(func):
        spec = JobSpec(
            name=name,
            func=func,
            cron=cron,
            timezone=timezone,
            priority=Priority(priority),
            retries=retries,
            retry_intervals=tuple(retry_intervals),
            timeout=timeout,
            misfire=MisfirePolicy(misfire),
            description=(func.__doc__ or "").strip().split("\n")[0],
        )
        existing = _registry.get(name)
        if existing is not None and existing.func.__qualname__ != func.__qualname__:
            raise DuplicateJob(f"job {name!r} is already registered by {existing.func.__module__}")
        _registry[name] = spec
        return func

    return register


def get_job(name: str) -> JobSpec | None:
    return _registry.get(name)


def registered_jobs() -> list[JobSpec]:
    return sorted(_registry.values(), key=lambda spec: spec.name)
