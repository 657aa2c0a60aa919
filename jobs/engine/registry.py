"""Job code registration: the @job decorator and the registry it fills.

A definition (a PeriodicTask row) names its job in `task`; the scheduler looks the code up
here. Registering a job also declares the defaults its definition is created with.
"""

import dataclasses
from collections.abc import Callable
from datetime import datetime

from jobs.engine.policy import Policy


class Cancelled(Exception):
    """Raised by a job that stops because its run was cancelled (JobContext.stop_if_cancelled).

    The runner records the cancel ("cancelled by <who> while running") and rolls the job's
    transaction back, as for any run whose cancel was asked; never a retry.
    """


@dataclasses.dataclass(frozen=True)
class ParentRun:
    """A follow-up's parent: the run whose final outcome created it."""

    id: int
    status: str  # its final status: succeeded, failed, skipped (cancelled), missed or expired
    result: object = None  # what its job returned, when it succeeded


@dataclasses.dataclass(frozen=True)
class JobContext:
    """What a running job is told about its run.

    cancelled(): whether someone cancelled this run from the console (a read of its row at most
    once a second; once True, always True). A long job checks it now and then and stops: it
    returns, or raises Cancelled (stop_if_cancelled). One that never checks is stopped when it
    returns to the runner: its work is rolled back and the cancel recorded instead of its success.

    payload: a one-off run's JSON object (jobs.engine.oneoff.schedule); {} for a definition's run.
    parent: a follow-up's parent run; None otherwise. A job may return a JSON-serializable value: it
    is kept as the occurrence's result when the run succeeds (one that is not JSON fails the run).
    """

    job_name: str
    occurrence_id: int
    scheduled_for: datetime
    attempt: int
    manual: bool
    kwargs: dict = dataclasses.field(default_factory=dict)  # the definition's kwargs (JSON)
    cancelled: Callable[[], bool] = dataclasses.field(default=lambda: False, repr=False, compare=False)
    payload: dict = dataclasses.field(default_factory=dict)
    parent: ParentRun | None = None

    def stop_if_cancelled(self) -> None:
        """Raise Cancelled if this run was cancelled."""
        if self.cancelled():
            raise Cancelled(f"occurrence {self.occurrence_id} was cancelled")


@dataclasses.dataclass(frozen=True)
class JobSpec:
    name: str
    func: Callable[[JobContext], object]
    cron: str | None
    timezone: str = "UTC"
    policy: Policy = Policy()
    # True: the job runs inside the transaction that records its success. False: it manages
    # its own transactions (a job that runs for minutes), and its success is recorded after.
    atomic: bool = True
    description: str = ""


_registry: dict[str, JobSpec] = {}


class DuplicateJob(ValueError):
    pass


def job(name: str, *, cron: str | None = None, timezone: str = "UTC", atomic: bool = True, **policy):
    """Register the decorated function as the job `name` with its default schedule and policy.

    `policy` takes the keywords of jobs.engine.policy.Policy: priority, retries, retry_intervals,
    timeout, misfire. With a cron expression (five fields, or a Debian macro such as @daily,
    kept as its five fields), `migrate` (and scheduler start-up) creates a definition of that
    name when none exists; without one, the job runs only where a definition names it.

    The function receives a JobContext. With atomic (the default) it runs inside one database
    transaction together with the recording of its result: whatever it writes, outbox messages
    included, commits only if it returns. With atomic=False it opens its own transactions
    (publish() still needs one around it): what it commits stays even if it fails later, and
    no transaction is held open while it runs.
    """
    from jobs.engine.schedules import validate_cron

    if cron is not None:
        cron = validate_cron(cron, timezone)  # a macro (@daily) as the five fields a CrontabSchedule stores
    job_policy = Policy(**policy)

    def register(func):
        spec = JobSpec(
            name=name,
            func=func,
            cron=cron,
            timezone=timezone,
            policy=job_policy,
            atomic=atomic,
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
