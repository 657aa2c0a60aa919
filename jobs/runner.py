"""Running one claimed occurrence and recording its attempt exactly once.

A job declared atomic (the default) runs inside one transaction that also records its
success, so its own changes and its outbox messages commit if and only if the run is
recorded as succeeded. A job that raises, times out or exits is a failed attempt, recorded
in a transaction of its own and retried per its policy.

A lost database connection is the scheduler's problem, not the job's: the runner
reconnects, finds out whether the run committed, and records it once. A run that did not
commit through no fault of its job goes back to scheduled without counting an attempt.

Each run is one span when tracing is on (what the job publishes carries its context to the
relay, see bookworm_scheduler.tracing) and updates this process's metrics (jobs.metrics).
"""

import logging
import threading
import time
import traceback
from collections.abc import Callable
from contextlib import AbstractContextManager, contextmanager, suppress
from datetime import datetime

import psycopg
from django.db import DatabaseError, connection, transaction

from bookworm_scheduler import tracing
from bookworm_scheduler.backoff import Backoff
from outbox.publishing import origin

from . import metrics
from .definitions import Definition, load_definition
from .models import LeaseLost, Occurrence
from .registry import JobContext, get_job
from .timeouts import JobTimeout, Watchdog

logger = logging.getLogger(__name__)

# What job code may raise that is the job's own failure. JobTimeout, SystemExit and
# KeyboardInterrupt are not Exceptions (a job's `except Exception:` cannot swallow them).
JOB_FAILURES = (Exception, JobTimeout, SystemExit, KeyboardInterrupt)


# SQLSTATEs of a connection that broke (class 08) or a server that shut down or restarts.
LOST_CONNECTION_STATES = ("08", "57P01", "57P02", "57P03")


def connection_lost(exc: BaseException) -> bool:
    """Whether exc, or what caused it, says the database connection broke (not that a statement failed).

    Django reconnects on its own when an atomic block fails this way, so the connection's
    state after the fact cannot tell; the driver's error does. A statement timeout (57014)
    or a deadlock is a statement that failed.
    """
    seen = set()
    while exc is not None and id(exc) not in seen:
        seen.add(id(exc))
        if isinstance(exc, (psycopg.OperationalError, psycopg.InterfaceError)):
            state = exc.sqlstate
            if state is None or state.startswith(LOST_CONNECTION_STATES):
                return True
        exc = exc.__cause__ or exc.__context__
    return False


def skip_reason(occurrence: Occurrence, definition: Definition | None, now: datetime) -> str:
    if definition is None:
        return "skipped: the definition was deleted"
    if not occurrence.manual and not definition.enabled:
        return "skipped: the definition is disabled"
    if definition.expired(occurrence.scheduled_for, now):
        return "skipped: expired before it could run"
    return ""


class Runner:
    """Runs the occurrences one scheduler session claimed; safe to share between threads."""

    def __init__(
        self,
        *,
        session,
        clock: Callable[[], datetime],
        stopping: Callable[[], bool] = lambda: False,
        watchdog: Callable[[int | None], AbstractContextManager] = Watchdog,
    ):
        self.session = session
        self.clock = clock
        self.stopping = stopping
        # What raises JobTimeout in the job after its timeout: a timer thread in a scheduler;
        # Celery's soft time limit in a worker process (jobs.executors.SoftTimeLimit).
        self.watchdog = watchdog

    def run(self, occurrence: Occurrence, definition: Definition | None) -> None:
        """Run a claimed occurrence of definition (None: look it up) and record the attempt."""
        job = occurrence.job_name
        metrics.RUNS_STARTED.labels(job).inc()
        begun, lag = time.monotonic(), self.clock() - occurrence.scheduled_for
        with tracing.span(f"run {job}", attributes=_span_attributes(occurrence)) as span:
            try:
                status, error = self._run(occurrence, definition or load_definition(occurrence.task_id))
            except LeaseLost as exc:
                status, error = metrics.LEASE_LOST, str(exc)
                _log(occurrence, "lease_lost", error=error, level=logging.WARNING)
            if span is not None:
                span.set_attribute("bookworm.run.outcome", status)
                if status in (metrics.FAILED, metrics.RETRY_SCHEDULED, metrics.LEASE_LOST):
                    tracing.fail(span, error)
        metrics.RUNS_FINISHED.labels(job, status).inc()
        if status != metrics.SKIPPED:
            metrics.RUN_DURATION.labels(job).observe(time.monotonic() - begun)
            if occurrence.attempts == 1:  # a retry's lag would be its retry interval
                metrics.FIRE_LAG.observe(max(lag.total_seconds(), 0.0))

    def _run(self, occurrence: Occurrence, definition: Definition | None) -> tuple[str, str]:
        """Run and record; how it ended (a jobs.metrics outcome) and its error, if any."""
        started = self.clock()
        reason = skip_reason(occurrence, definition, started)
        if reason:
            self._write(occurrence, lambda: occurrence.skip(session=self.session, now=started, reason=reason))
            _log(occurrence, "occurrence_skipped", reason=reason, status="skipped")
            return metrics.SKIPPED, ""
        spec = get_job(definition.job)
        if spec is None:
            return self._fail(occurrence, definition, started, f"no such job: {definition.job}", "", retry=False)
        context = JobContext(
            job_name=occurrence.job_name,
            occurrence_id=occurrence.id,
            scheduled_for=occurrence.scheduled_for,
            attempt=occurrence.attempts,
            manual=occurrence.manual,
            kwargs=definition.kwargs,
        )
        timeout = definition.policy.timeout
        source = f"occurrence:{occurrence.id}"  # the origin of what the job publishes
        returned = False
        try:
            if spec.atomic:
                with transaction.atomic():
                    with _statement_timeout(timeout, local=True), self.watchdog(timeout), origin(source):
                        spec.func(context)
                    returned = True
                    occurrence.record_attempt(session=self.session, started_at=started, now=self.clock())
            else:
                with _statement_timeout(timeout, local=False), self.watchdog(timeout), origin(source):
                    spec.func(context)
                returned = True
                self._write(
                    occurrence,
                    lambda: occurrence.record_attempt(session=self.session, started_at=started, now=self.clock()),
                )
        except LeaseLost:
            raise
        except JOB_FAILURES as exc:
            if connection_lost(exc):
                return self._settle_unknown(occurrence, error=_one_line(exc))
            if returned:
                # The job did its part; recording it failed for a reason of the database's.
                return self._fail(occurrence, definition, started, f"recording the run failed: {_one_line(exc)}", "")
            tracing.record_exception(exc)
            error = f"timed out after {timeout} s" if isinstance(exc, JobTimeout) else _one_line(exc)
            return self._fail(occurrence, definition, started, error, traceback.format_exc())
        _log(occurrence, "occurrence_succeeded", duration_ms=_ms(self.clock() - started), status="succeeded")
        return metrics.SUCCEEDED, ""

    def _fail(
        self, occurrence, definition: Definition, started, error: str, trace: str, retry: bool = True
    ) -> tuple[str, str]:
        finished = self.clock()
        retry_at = definition.policy.retry_at(occurrence.attempts, finished) if retry else None
        self._write(
            occurrence,
            lambda: occurrence.record_attempt(
                session=self.session, started_at=started, now=finished, error=error, traceback=trace, retry_at=retry_at
            ),
        )
        _log(
            occurrence,
            "retry_scheduled" if retry_at else "occurrence_failed",
            error=error,
            retry_at=retry_at.isoformat() if retry_at else None,
            duration_ms=_ms(finished - started),
            status="scheduled" if retry_at else "failed",
            level=logging.WARNING if retry_at else logging.ERROR,
        )
        return (metrics.RETRY_SCHEDULED if retry_at else metrics.FAILED), error

    def _settle_unknown(self, occurrence: Occurrence, error: str) -> tuple[str, str]:
        """The connection broke during the run or its commit: did it commit? Record it once."""
        _log(occurrence, "run_interrupted", error=error, level=logging.WARNING)
        reason = f"released: the database connection was lost during the run ({error})"
        if self._write(occurrence, lambda: occurrence.release(session=self.session, reason=reason), reconnect=True):
            _log(occurrence, "occurrence_released", error=error, status="scheduled", level=logging.WARNING)
            return metrics.RELEASED, error
        if occurrence.attempt_recorded():
            _log(occurrence, "occurrence_succeeded", status="succeeded", committed_before_loss=True)
            return metrics.SUCCEEDED, ""
        # Reaped by another scheduler, or given up while stopping: another scheduler records it.
        return metrics.LEASE_LOST, error

    def _write(self, occurrence: Occurrence, write: Callable[[], object], *, reconnect: bool = False) -> bool:
        """Run write() in a transaction until it commits; False if the occurrence stopped being ours.

        After a lost connection (or with reconnect=True, when the connection was lost already)
        the write is tried again on a new connection, but only while the claim is still this
        session's: if the earlier try committed before the connection broke, or another
        scheduler reaped the claim, there is nothing left to write. Gives up when the scheduler
        stops; the lease then expires and another scheduler records the attempt.
        """
        backoff = Backoff(first=0.2, ceiling=5.0)
        uncertain = reconnect
        while True:
            try:
                if uncertain:
                    connection.close()
                    if not self._still_claimed(occurrence):
                        return False
                with transaction.atomic():
                    write()
                return True
            except DatabaseError as exc:
                if not connection_lost(exc):
                    raise
                if self.stopping():
                    _log(
                        occurrence,
                        "record_abandoned",
                        error=_one_line(exc),
                        level=logging.ERROR,
                        detail="the database is unreachable and the scheduler is stopping; its lease will expire "
                        "and another scheduler will record it",
                    )
                    return False
                delay = backoff.next()
                _log(
                    occurrence,
                    "record_retry",
                    error=_one_line(exc),
                    retry_in=delay,
                    level=logging.WARNING,
                    detail=f"the database is unreachable, retrying in {delay:.1f} s",
                )
                threading.Event().wait(delay)  # not time.sleep, which fails under libfaketime (EINVAL)
                uncertain = True

    def _still_claimed(self, occurrence: Occurrence) -> bool:
        return Occurrence.objects.filter(
            id=occurrence.id, status=Occurrence.Status.RUNNING, session=self.session, attempts=occurrence.attempts
        ).exists()


@contextmanager
def _statement_timeout(seconds: int | None, *, local: bool):
    """On PostgreSQL, cancel a query that outlives the job's timeout (the watchdog cannot stop a query)."""
    if not seconds or connection.vendor != "postgresql":
        yield
        return
    with connection.cursor() as cursor:
        cursor.execute("SELECT set_config('statement_timeout', %s, %s)", [f"{seconds * 1000}", local])
    try:
        yield
    finally:
        if not local:
            with suppress(DatabaseError), connection.cursor() as cursor:
                cursor.execute("RESET statement_timeout")


def _ms(delta) -> float:
    return round(delta.total_seconds() * 1000, 1)


def _one_line(exc: BaseException) -> str:
    text = str(exc).strip().splitlines()
    return f"{type(exc).__name__}: {text[0]}" if text else type(exc).__name__


def _span_attributes(occurrence: Occurrence) -> dict:
    return {
        "bookworm.job.name": occurrence.job_name,
        "bookworm.occurrence.id": occurrence.id,
        "bookworm.occurrence.attempt": occurrence.attempts,
        "bookworm.occurrence.scheduled_for": occurrence.scheduled_for.isoformat(),
        "bookworm.occurrence.manual": occurrence.manual,
        "bookworm.scheduler.instance": occurrence.scheduler,
    }


def _log(occurrence: Occurrence, action: str, level: int = logging.INFO, detail: str = "", **fields) -> None:
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
        extra={
            "action": action,
            "job": occurrence.job_name,
            "occurrence": occurrence.id,
            "attempt": occurrence.attempts,
            "instance": occurrence.scheduler,
            **fields,
        },
    )
