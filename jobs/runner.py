"""Running one claimed occurrence: the job's work and its result in one transaction."""

import dataclasses
import logging
import traceback
from collections.abc import Callable
from datetime import datetime

from django.db import connection, transaction
from django_celery_beat.models import PeriodicTask

from .definitions import Definition, Policy, kwargs_of, policy_of
from .models import LeaseLost, Occurrence
from .registry import JobContext, get_job
from .timeouts import JobTimeout, Watchdog

logger = logging.getLogger(__name__)


@dataclasses.dataclass(frozen=True)
class Target:
    """What the runner needs to know of an occurrence's definition."""

    job: str
    enabled: bool
    policy: Policy
    kwargs: dict
    definition: Definition | None = None

    @classmethod
    def of(cls, occurrence: Occurrence, definition: Definition | None) -> "Target | None":
        """From the scheduler's cached definition, else from the database (a disabled one)."""
        if definition is not None:
            return cls(definition.job, definition.enabled, definition.policy, definition.kwargs, definition)
        if occurrence.task_id is None:
            return None
        task = PeriodicTask.objects.select_related("policy").filter(id=occurrence.task_id).first()
        if task is None:
            return None
        return cls(task.task, task.enabled, policy_of(task), kwargs_of(task))


def skip_reason(occurrence: Occurrence, target: Target | None, now: datetime) -> str:
    if target is None:
        return "skipped: the definition was deleted"
    if not occurrence.manual and not target.enabled:
        return "skipped: the definition is disabled"
    if target.definition is not None and target.definition.expired(occurrence.scheduled_for, now):
        return "skipped: expired before it could run"
    return ""


def run_occurrence(
    occurrence: Occurrence,
    definition: Definition | None,
    *,
    session,
    clock: Callable[[], datetime],
    claim_following: Callable[[], Occurrence | None] = lambda: None,
) -> Occurrence | None:
    """Run a claimed occurrence and record the attempt; return the following one, if claimed.

    The job runs inside one transaction that also records its success, so its own changes
    and its outbox messages commit if and only if the run is recorded as succeeded. A job
    that raises is recorded as a failed attempt in a new transaction and retried per policy.
    If the claim was reaped meanwhile (LeaseLost), everything rolls back and nothing is recorded.

    claim_following claims the next ready occurrence inside the transaction that records
    this one, so a busy worker commits once per run instead of twice.
    """
    try:
        return _run(occurrence, definition, session=session, clock=clock, claim_following=claim_following)
    except LeaseLost as exc:
        _log(occurrence, "lease_lost", error=str(exc), level=logging.WARNING)
        return None


def _run(occurrence, definition, *, session, clock, claim_following) -> Occurrence | None:
    target = Target.of(occurrence, definition)
    started = clock()
    reason = skip_reason(occurrence, target, started)
    if reason:
        occurrence.skip(claimer=session, now=started, reason=reason)
        _log(occurrence, "occurrence_skipped", reason=reason)
        return claim_following()
    spec = get_job(target.job)
    if spec is None:
        error = f"no such job: {target.job}"
        occurrence.record_attempt(claimer=session, started_at=started, now=clock(), error=error)
        _log(occurrence, "occurrence_failed", error=error, level=logging.ERROR)
        return claim_following()
    context = JobContext(
        job_name=occurrence.job_name,
        occurrence_id=occurrence.id,
        scheduled_for=occurrence.scheduled_for,
        attempt=occurrence.attempts,
        manual=occurrence.manual,
        kwargs=target.kwargs,
    )
    timeout = target.policy.timeout
    try:
        with transaction.atomic():
            if timeout and connection.vendor == "postgresql":
                with connection.cursor() as cursor:
                    cursor.execute("SELECT set_config('statement_timeout', %s, true)", [f"{timeout * 1000}"])
            with Watchdog(timeout):
                spec.func(context)
            occurrence.record_attempt(claimer=session, started_at=started, now=clock())
            following = claim_following()
    except LeaseLost:
        raise
    except Exception as exc:  # the job's own failure: recorded, never fatal to the scheduler
        error = f"timed out after {timeout} s" if isinstance(exc, JobTimeout) else _one_line(exc)
        finished = clock()
        retry_at = None
        if occurrence.attempts <= target.policy.max_retries:
            retry_at = max(finished + target.policy.retry_delay(occurrence.attempts), occurrence.scheduled_for)
        with transaction.atomic():
            occurrence.record_attempt(
                claimer=session,
                started_at=started,
                now=finished,
                error=error,
                traceback=traceback.format_exc(),
                retry_at=retry_at,
            )
            following = claim_following()
        _log(
            occurrence,
            "retry_scheduled" if retry_at else "occurrence_failed",
            error=error,
            retry_at=retry_at.isoformat() if retry_at else None,
            level=logging.WARNING if retry_at else logging.ERROR,
        )
        return following
    _log(occurrence, "occurrence_succeeded", duration_ms=round((clock() - started).total_seconds() * 1000, 1))
    return following


def _one_line(exc: BaseException) -> str:
    text = str(exc).strip().splitlines()
    return f"{type(exc).__name__}: {text[0]}" if text else type(exc).__name__


def _log(occurrence: Occurrence, action: str, level: int = logging.INFO, **fields) -> None:
    logger.log(
        level,
        "%s %s scheduled for %s (attempt %d)%s",
        action.replace("_", " "),
        occurrence.job_name,
        occurrence.scheduled_for.isoformat(),
        occurrence.attempts,
        f": {fields['error']}" if fields.get("error") else "",
        extra={
            "action": action,
            "job": occurrence.job_name,
            "occurrence": occurrence.id,
            "attempt": occurrence.attempts,
            **fields,
        },
    )
