"""How a run is reported, whichever path ran it: its span, its metrics and its log events.

A run on its own (jobs.engine.runner), a run in a group (jobs.engine.groups) and the Celery
hand-over (jobs.handover: the scheduler's side and the worker's) all report through here, so a
run has the same span attributes, the same metrics (jobs.engine.scheduler_metrics) and the same
keys in its log events (docs/logging.md) wherever it ran.
"""

import logging
from contextlib import AbstractContextManager
from datetime import datetime, timedelta

from bookworm_scheduler.kernel import tracing
from jobs.engine import scheduler_metrics as metrics
from jobs.models import Occurrence

logger = logging.getLogger(__name__)

# The outcomes whose span is marked failed.
FAILED_OUTCOMES = (metrics.FAILED, metrics.RETRY_SCHEDULED, metrics.LEASE_LOST)


def run_span(occurrence: Occurrence) -> AbstractContextManager:
    """The span of one run (None inside when tracing is off), with the occurrence's attributes."""
    attributes = None
    if tracing.active():
        attributes = {
            "bookworm.job.name": occurrence.job_name,
            "bookworm.occurrence.id": occurrence.id,
            "bookworm.occurrence.attempt": occurrence.attempts,
            "bookworm.occurrence.scheduled_for": occurrence.scheduled_for.isoformat(),
            "bookworm.occurrence.manual": occurrence.manual,
            "bookworm.scheduler.instance": occurrence.scheduler,
        }
    return tracing.span(f"run {occurrence.job_name}", attributes=attributes)


def started(occurrence: Occurrence) -> None:
    """A run began."""
    metrics.labelled(metrics.RUNS_STARTED, occurrence.job_name).inc()


def outcome(span, status: str, error: str = "") -> None:
    """Mark the run's span with how it ended (a scheduler_metrics outcome)."""
    if span is None:
        return
    span.set_attribute("bookworm.run.outcome", status)
    if status in FAILED_OUTCOMES:
        tracing.fail(span, error)


def finished(
    occurrence: Occurrence,
    status: str,
    *,
    job: str = "",
    duration: float | None = None,
    started_at: datetime | None = None,
) -> None:
    """A run ended as status; with duration (seconds), it ran: its duration and fire lag are measured.

    job: the code it ran ("" if unknown); started_at: when it started, for the lag of a first attempt.
    """
    metrics.labelled(metrics.RUNS_FINISHED, occurrence.job_name, status).inc()
    if duration is None:
        return
    metrics.labelled(metrics.RUN_DURATION, job).observe(duration)
    if occurrence.attempts == 1 and started_at is not None:  # a retry's lag would be its retry interval
        metrics.FIRE_LAG.observe(max((started_at - occurrence.scheduled_for).total_seconds(), 0.0))


def ended(
    occurrence: Occurrence, *, error: str = "", retry_at: datetime | None = None, duration_ms: float, **fields
) -> None:
    """The event of a recorded attempt: succeeded, failed, or failed with a retry scheduled."""
    if not error:
        event(occurrence, "occurrence_succeeded", duration_ms=duration_ms, status="succeeded", **fields)
        return
    event(
        occurrence,
        "retry_scheduled" if retry_at else "occurrence_failed",
        error=error,
        retry_at=retry_at.isoformat() if retry_at else None,
        duration_ms=duration_ms,
        status="scheduled" if retry_at else "failed",
        level=logging.WARNING if retry_at else logging.ERROR,
        **fields,
    )


def lease_lost(occurrence: Occurrence, error: str) -> tuple[str, str]:
    """The run's outcome was not recorded: another scheduler reaped the claim meanwhile."""
    event(occurrence, "lease_lost", error=error, level=logging.WARNING)
    return metrics.LEASE_LOST, error


def event(
    occurrence: Occurrence,
    action: str,
    level: int = logging.INFO,
    detail: str = "",
    exc_info: BaseException | None = None,
    **fields,
) -> None:
    """One event about an occurrence, with the keys every run event has (docs/logging.md)."""
    trace_id = tracing.trace_id()
    if trace_id is not None:
        fields["trace_id"] = trace_id
    logger.log(
        level,
        "%s %s scheduled for %s (attempt %d)%s%s",
        action.replace("_", " "),
        occurrence.job_name,
        occurrence.scheduled_for.isoformat(),
        occurrence.attempts,
        f": {detail}" if detail else "",
        f": {fields['error']}" if fields.get("error") else "",
        exc_info=exc_info,
        extra={
            "action": action,
            "job_name": occurrence.job_name,
            "occurrence": occurrence.id,
            "attempt": occurrence.attempts,
            "instance": occurrence.scheduler,
            **fields,
        },
    )


def ms(delta: timedelta) -> float:
    """A duration as an event's duration_ms."""
    return round(delta.total_seconds() * 1000, 1)


def raised(exc: BaseException) -> None:
    """The job raised exc: an event on the current run's span."""
    tracing.record_exception(exc)
