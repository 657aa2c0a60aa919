"""Running one claimed occurrence and recording its attempt exactly once.

A job declared atomic (the default) runs inside one transaction that also records its
success, so its own changes and its outbox messages commit if and only if the run is
recorded as succeeded. A job that raises, times out or exits is a failed attempt, recorded
in a transaction of its own and retried per its policy.

A lost database connection is the scheduler's problem, not the job's: the runner
reconnects, finds out whether the run committed, and records it once. But an atomic job whose
transaction the database ended for sitting idle (kernel.db.transaction_cut: the job waited in it
longer than the scheduler's bound, kernel.liveness) failed: its attempt counts. A run that did not
commit through no fault of its job goes back to scheduled without counting an attempt; so
does one whose record lost a conflict (a deadlock or a serialization failure), which is then
claimed again at once. A fault of ours during a run (the recording, or a bug of the runner's
own code) is recorded as the attempt's failure, with its error, and the job's retry policy
applies at once (give_back): the occurrence does not stay running until its lease expires and
is reaped as "presumed dead".

A run whose cancel was asked from the console (jobs.engine.store.cancel) ends as the cancel: the
job may check JobContext.cancelled (CancelCheck) and stop; if it does not, its return (or its
failure) finds the record refused (CancelRequested), its transaction rolls back, its events
with it, and the cancel is recorded instead (_cancelled), never retried.

A job's return value is kept as its occurrence's result (job_result: JSON, or the run fails). A
one-off run (jobs.engine.oneoff) claimed after its expires_at is recorded expired, never run late
(expired_reason, store.expire); its job and policy are its registered job's (definition_for).

Short atomic jobs can also run in groups, one transaction each (jobs.engine.groups). Each run
is reported (span, metrics, log events) through jobs.engine.observer; every state change of its
occurrence is the occurrence store's (jobs.engine.store).
"""

import json
import logging
import threading
import time
import traceback
from collections.abc import Callable
from contextlib import AbstractContextManager
from datetime import datetime

from django.db import DatabaseError, connection, transaction

from bookworm_scheduler.kernel import backoff as backoffs
from bookworm_scheduler.kernel.db import (
    DatabaseFault,
    connection_lost,
    database_fault,
    describe_database_error,
    transaction_cut,
)
from bookworm_scheduler.kernel.errors import one_line
from bookworm_scheduler.kernel.transactions import statement_timeout
from jobs.engine import observer, store
from jobs.engine import scheduler_metrics as metrics
from jobs.engine.definitions import Definition, definition_for
from jobs.engine.policy import Policy
from jobs.engine.registry import JobContext, JobSpec, ParentRun, get_job
from jobs.engine.store import CancelRequested, LeaseLost
from jobs.engine.timeouts import JobTimeout, Watchdog
from jobs.models import Occurrence
from outbox.publishing import origin

# What job code may raise that is the job's own failure. JobTimeout, SystemExit and
# KeyboardInterrupt are not Exceptions (a job's `except Exception:` cannot swallow them).
JOB_FAILURES = (Exception, JobTimeout, SystemExit, KeyboardInterrupt)


class ResultNotJson(TypeError):
    """What a job returned cannot be kept as its occurrence's result: the run fails with this reason."""


def job_result(value):
    """A job's return value, checked: JSON-serializable, or ResultNotJson (the job's failure)."""
    if value is not None:
        try:
            json.dumps(value, allow_nan=False)
        except (TypeError, ValueError) as exc:
            raise ResultNotJson(f"the job's result is not JSON: {exc}") from None
    return value


def expired_reason(occurrence: Occurrence, now: datetime) -> str:
    """Why a one-off run claimed at now is recorded expired (not started by its expires_at); '' if it is not."""
    if occurrence.expires_at is not None and now > occurrence.expires_at:
        return f"expired: not started by {occurrence.expires_at.isoformat()}"
    return ""


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
        # Celery's soft time limit in a worker process (jobs.handover.executor.SoftTimeLimit).
        self.watchdog = watchdog
        # Seconds the runs of each job (by name) took in this process, an exponential average (one
        # run slowed by a busy machine does not send a quick job out of groups): who may join a group.
        self._took: dict[str, float] = {}

    def run(self, occurrence: Occurrence, definition: Definition | None) -> None:
        """Run a claimed occurrence of definition (None: look it up) and record the attempt.

        Raises only a fault it could not record (see give_back).
        """
        observer.started(occurrence)
        begun, started = time.monotonic(), self.clock()
        with observer.run_span(occurrence) as span:
            try:
                definition = definition or definition_for(occurrence)
                status, error = self._run(occurrence, definition, started)
            except LeaseLost as exc:
                status, error = observer.lease_lost(occurrence, str(exc))
            except CancelRequested:
                status, error = self._cancelled(occurrence, started)
            except Exception as exc:  # a fault of ours, not the job's (_run records those)
                status, error = self.give_back(occurrence, definition, exc, started=started)
            observer.outcome(span, status, error)
        observer.finished(
            occurrence,
            status,
            job=definition.job if definition is not None else "",
            duration=None if status in (metrics.SKIPPED, metrics.EXPIRED) else time.monotonic() - begun,
            started_at=started,
        )

    def _run(self, occurrence: Occurrence, definition: Definition | None, started: datetime) -> tuple[str, str]:
        """Run and record; how it ended (a jobs.engine.scheduler_metrics outcome) and its error, if any."""
        if occurrence.cancel_requested_at is not None:  # asked before this attempt began (a hand-over's wait)
            raise CancelRequested(f"occurrence {occurrence.id}'s cancel was requested before it ran")
        expired = expired_reason(occurrence, started)
        if expired:
            self._write(occurrence, lambda: store.expire(occurrence, session=self.session, now=started, reason=expired))
            observer.event(occurrence, "occurrence_expired", reason=expired, status="expired")
            return metrics.EXPIRED, ""
        reason = skip_reason(occurrence, definition, started)
        if reason:
            self._write(occurrence, lambda: store.skip(occurrence, session=self.session, now=started, reason=reason))
            observer.event(occurrence, "occurrence_skipped", reason=reason, status="skipped")
            return metrics.SKIPPED, ""
        spec = get_job(definition.job)
        if spec is None:
            return self._fail(occurrence, definition, started, f"no such job: {definition.job}", "", retry=False)
        context = job_context(occurrence, definition)
        timeout = definition.policy.timeout
        source = f"occurrence:{occurrence.id}"  # the origin of what the job publishes
        returned, begun = False, time.monotonic()
        try:
            if spec.atomic:
                with transaction.atomic():
                    with statement_timeout(timeout, local=True), self.watchdog(timeout), origin(source):
                        try:
                            result = job_result(spec.func(context))
                        finally:
                            self._timed(spec, begun)
                    returned = True
                    store.record_attempt(
                        occurrence, session=self.session, started_at=started, now=self.clock(), result=result
                    )
            else:
                with statement_timeout(timeout, local=False), self.watchdog(timeout), origin(source):
                    result = job_result(spec.func(context))
                returned = True
                self._write(
                    occurrence,
                    lambda: store.record_attempt(
                        occurrence, session=self.session, started_at=started, now=self.clock(), result=result
                    ),
                )
        except (LeaseLost, CancelRequested):
            raise
        except JOB_FAILURES as exc:
            if not returned and spec.atomic and transaction_cut(exc):
                # The job held its transaction idle past the bound (kernel.liveness), or the process
                # was paused in it: counted as its failure, so that a job that always waits that long
                # in its transaction is not given back and run again without end.
                error = f"its transaction sat idle too long and the database ended it: {describe_database_error(exc)}"
                return self._fail(occurrence, definition, started, error, traceback.format_exc())
            if returned or connection_lost(exc):
                # The job did its part and recording it failed, or the connection broke: not the job's failure.
                doing = "recording the run" if returned else ""
                return self.give_back(occurrence, definition, exc, started=started, doing=doing)
            observer.raised(exc)
            error = f"timed out after {timeout} s" if isinstance(exc, JobTimeout) else one_line(exc)
            return self._fail(occurrence, definition, started, error, traceback.format_exc())
        observer.ended(occurrence, duration_ms=observer.ms(self.clock() - started))
        return metrics.SUCCEEDED, ""

    def give_back(
        self,
        occurrence: Occurrence,
        definition: Definition | None,
        exc: BaseException,
        *,
        started: datetime | None = None,
        doing: str = "",
    ) -> tuple[str, str]:
        """A fault that is not the job's failure, during a run of this claim: settle the attempt now.

        The connection broke: the attempt is settled as after any lost connection
        (_settle_unknown). The record lost a conflict: the transaction rolled back, the job's work
        with it, and the occurrence goes back to scheduled without counting the attempt, to be
        claimed again at once. Anything else (a bug of ours, a statement of ours the database
        refused, the commit of the job's work): the attempt is recorded failed with that error
        and its traceback, and retried per the job's policy (definition, looked up if None; a
        deleted definition's: none), as when the job itself raises. Waiting for the lease to
        expire instead would cost a lease's delay and record the attempt as "presumed dead".

        Raises exc again when the claim is no longer this attempt's: its outcome was recorded
        before the fault, or another scheduler reaped it. doing names what failed, for the error.
        """
        error = f"{doing} failed: {one_line(exc)}" if doing else one_line(exc)
        fault = database_fault(exc)
        if fault is DatabaseFault.UNAVAILABLE:
            return self._settle_unknown(occurrence, error=one_line(exc))
        if fault is DatabaseFault.CONFLICT:
            return self._release_after_conflict(occurrence, exc)
        if not store.still_claimed(occurrence, self.session):
            raise exc
        observer.event(occurrence, "run_error", error=error, level=logging.ERROR, exc_info=exc)
        if definition is None:
            definition = definition_for(occurrence)  # for its retry policy; None once deleted
        trace = "".join(traceback.format_exception(exc))
        try:
            return self._fail(occurrence, definition, started or occurrence.started_at, error, trace)
        except LeaseLost as lost:
            return observer.lease_lost(occurrence, str(lost))
        except CancelRequested:
            return self._cancelled(occurrence, started or occurrence.started_at)

    def _cancelled(self, occurrence: Occurrence, started: datetime) -> tuple[str, str]:
        """Its cancel was asked: the job's work is rolled back (or it never ran); record the cancel instead."""
        try:
            recorded = self._write(
                occurrence,
                lambda: store.record_cancel(occurrence, session=self.session, started_at=started, now=self.clock()),
            )
        except LeaseLost as lost:
            if store.attempt_recorded(occurrence):  # the cancel, by its Celery worker's LeaseKeeper
                return metrics.SKIPPED, ""
            return observer.lease_lost(occurrence, str(lost))
        if not recorded:  # the scheduler stops and the database is away: the reaper records it
            return metrics.LEASE_LOST, ""
        observer.event(occurrence, "occurrence_skipped", reason=occurrence.reason, status="skipped")
        return metrics.SKIPPED, ""

    def _release_after_conflict(self, occurrence: Occurrence, exc: BaseException) -> tuple[str, str]:
        """The run's transaction lost a conflict and rolled back: back to scheduled, the attempt not counted."""
        error = describe_database_error(exc)
        observer.event(occurrence, "database_conflict", error=error, retry_in=0.0, level=logging.WARNING)
        reason = f"released: its record lost a conflict with another transaction ({error})"
        try:
            released = self._write(occurrence, lambda: store.release(occurrence, session=self.session, reason=reason))
        except LeaseLost as lost:
            return observer.lease_lost(occurrence, str(lost))
        if not released:  # the scheduler stops, and the database is unreachable: the lease expires
            return metrics.LEASE_LOST, error
        observer.event(occurrence, "occurrence_released", error=error, status="scheduled", level=logging.WARNING)
        return metrics.RELEASED, error

    def _fail(
        self, occurrence, definition: Definition | None, started, error: str, trace: str, retry: bool = True
    ) -> tuple[str, str]:
        finished = self.clock()
        policy = definition.policy if definition is not None else Policy()
        retry_at = policy.retry_at(occurrence.attempts, finished) if retry else None
        self._write(
            occurrence,
            lambda: store.record_attempt(
                occurrence,
                session=self.session,
                started_at=started,
                now=finished,
                error=error,
                traceback=trace,
                retry_at=retry_at,
            ),
        )
        observer.ended(occurrence, error=error, retry_at=retry_at, duration_ms=observer.ms(finished - started))
        return (metrics.RETRY_SCHEDULED if retry_at else metrics.FAILED), error

    def _settle_unknown(self, occurrence: Occurrence, error: str) -> tuple[str, str]:
        """The connection broke during the run or its commit: did it commit? Record it once."""
        observer.event(occurrence, "run_interrupted", error=error, level=logging.WARNING)
        reason = f"released: the database connection was lost during the run ({error})"
        if self._write(
            occurrence, lambda: store.release(occurrence, session=self.session, reason=reason), reconnect=True
        ):
            observer.event(occurrence, "occurrence_released", error=error, status="scheduled", level=logging.WARNING)
            return metrics.RELEASED, error
        if store.attempt_recorded(occurrence):
            observer.event(occurrence, "occurrence_succeeded", status="succeeded", committed_before_loss=True)
            return metrics.SUCCEEDED, ""
        # Reaped by another scheduler, or given up while stopping: another scheduler records it.
        return metrics.LEASE_LOST, error

    def _write(self, occurrence: Occurrence, write: Callable[[], object], *, reconnect: bool = False) -> bool:
        """Run write() in a transaction until it commits; False if the occurrence stopped being ours.

        After a lost connection (or with reconnect=True, when the connection was lost already)
        the write is tried again on a new connection, but only while the claim is still this
        session's: if the earlier try committed before the connection broke, or another
        scheduler reaped the claim, there is nothing left to write. Gives up when the scheduler
        stops; the lease then expires and another scheduler records the attempt. A write that
        lost a conflict (a deadlock, a serialization failure) rolled back, surely: it is tried
        again after a short delay, on the same connection.
        """
        backoff, conflicts = backoffs.recording(), backoffs.conflict()
        uncertain = reconnect
        while True:
            try:
                if uncertain:
                    connection.close()
                    if not store.still_claimed(occurrence, self.session):
                        return False
                with transaction.atomic():
                    write()
                return True
            except DatabaseError as exc:
                fault = database_fault(exc)
                if fault is DatabaseFault.CONFLICT:
                    delay = conflicts.next()
                    observer.event(
                        occurrence,
                        "database_conflict",
                        error=describe_database_error(exc),
                        retry_in=delay,
                        level=logging.WARNING,
                        detail=f"recording it lost a conflict, retrying in {delay:.2f} s",
                    )
                    threading.Event().wait(delay)
                    continue
                if fault is not DatabaseFault.UNAVAILABLE:
                    raise
                if self.stopping():
                    observer.event(
                        occurrence,
                        "record_abandoned",
                        error=one_line(exc),
                        level=logging.ERROR,
                        detail="the database is unreachable and the scheduler is stopping; its lease will expire "
                        "and another scheduler will record it",
                    )
                    return False
                delay = backoff.next()
                observer.event(
                    occurrence,
                    "record_retry",
                    error=one_line(exc),
                    retry_in=delay,
                    level=logging.WARNING,
                    detail=f"the database is unreachable, retrying in {delay:.1f} s",
                )
                threading.Event().wait(delay)  # not time.sleep, which fails under libfaketime (EINVAL)
                uncertain = True

    def _timed(self, spec: JobSpec, begun: float) -> None:
        took, average = time.monotonic() - begun, self._took.get(spec.name)
        self._took[spec.name] = took if average is None else average + (took - average) * 0.2


def job_context(occurrence: Occurrence, definition: Definition) -> JobContext:
    """What a job is told about the run it is in."""
    return JobContext(
        job_name=occurrence.job_name,
        occurrence_id=occurrence.id,
        scheduled_for=occurrence.scheduled_for,
        attempt=occurrence.attempts,
        manual=occurrence.manual,
        kwargs=definition.kwargs,
        cancelled=CancelCheck(occurrence.id),
        payload=occurrence.payload or {},
        parent=parent_run(occurrence.parent_id),
    )


def parent_run(parent_id: int | None) -> ParentRun | None:
    """A follow-up's parent as its job sees it (one read by key); None for a run that is no follow-up."""
    if parent_id is None:
        return None
    row = Occurrence.objects.filter(pk=parent_id).values_list("status", "result").first()
    return ParentRun(parent_id, *row) if row else ParentRun(parent_id, "", None)


class CancelCheck:
    """A job's JobContext.cancelled: the row read (store.cancel_requested) at most every `every` seconds.

    Cheap enough to call in a job's inner loop; once True, always True (no further read). It reads
    on the job's own connection, in its transaction: a committed request is seen at once.
    """

    def __init__(self, occurrence_id: int, every: float = 1.0):
        self.occurrence_id, self.every = occurrence_id, every
        self._read_at: float | None = None
        self._cancelled = False

    def __call__(self) -> bool:
        if not self._cancelled and (self._read_at is None or time.monotonic() - self._read_at >= self.every):
            self._read_at = time.monotonic()
            self._cancelled = store.cancel_requested(self.occurrence_id)
        return self._cancelled
