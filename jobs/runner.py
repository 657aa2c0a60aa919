"""Running one claimed occurrence and recording its attempt exactly once.

A job declared atomic (the default) runs inside one transaction that also records its
success, so its own changes and its outbox messages commit if and only if the run is
recorded as succeeded. A job that raises, times out or exits is a failed attempt, recorded
in a transaction of its own and retried per its policy.

A lost database connection is the scheduler's problem, not the job's: the runner
reconnects, finds out whether the run committed, and records it once. A run that did not
commit through no fault of its job goes back to scheduled without counting an attempt; so
does one whose record lost a conflict (a deadlock or a serialization failure), which is then
claimed again at once. A fault of ours during a run (the recording, or a bug of the runner's
own code) is recorded as the attempt's failure, with its error, and the job's retry policy
applies at once (give_back): the occurrence does not stay running until its lease expires and
is reaped as "presumed dead".

Occurrences of short atomic jobs can run together (run_group): one transaction locks a few
ready occurrences, runs each job in a savepoint of its own and records them all in one
statement before one commit. The outbox rows the jobs publish are kept in memory and written
with the record, all in one statement (outbox.publishing.deferred), unless a job sends
statements of its own after publishing: then its rows go first. A job that raises or times out
rolls back to its savepoint and its kept rows are dropped: only its own work is gone, and its
failure is recorded with the others. The row locks are the
group's claim: a crash before the commit leaves every occurrence of the group scheduled, with
no attempt counted, for any scheduler to run again; what committed stays committed.

Each run is one span when tracing is on (what the job publishes carries its context to the
relay, see bookworm_scheduler.tracing) and updates this process's metrics (jobs.metrics).
"""

import dataclasses
import itertools
import logging
import math
import threading
import time
import traceback
from collections.abc import Callable
from contextlib import AbstractContextManager, contextmanager, suppress
from datetime import datetime

import psycopg
from django.db import DEFAULT_DB_ALIAS, DatabaseError, connection, connections, transaction
from django.db.transaction import TransactionManagementError

from bookworm_scheduler import backoff as backoffs
from bookworm_scheduler import tracing
from bookworm_scheduler.db import (
    DatabaseFault,
    connection_lost,
    database_fault,
    describe_database_error,
    insert_rows,
)
from bookworm_scheduler.errors import one_line
from outbox.publishing import deferred, origin

from . import metrics
from .definitions import Definition, load_definition
from .models import Attempt, LeaseLost, Occurrence
from .policy import Policy
from .registry import JobContext, JobSpec, get_job
from .timeouts import JobTimeout, Watchdog

logger = logging.getLogger(__name__)

# What job code may raise that is the job's own failure. JobTimeout, SystemExit and
# KeyboardInterrupt are not Exceptions (a job's `except Exception:` cannot swallow them).
JOB_FAILURES = (Exception, JobTimeout, SystemExit, KeyboardInterrupt)


# A group starts no more runs once it ran GROUP_RUNS, or its thread spent GROUP_SECONDS of CPU time
# in it, or its transaction has been open GROUP_WALL_FACTOR times GROUP_SECONDS; it locks at most
# GROUP_LOCK ready occurrences at a time. CPU time, because on a busy machine a thread waits for a
# core (or the GIL) between its runs: measured on the wall clock alone, a group of short runs then
# ended after its first run, and a burst paid a group's statements for every run
# (docs/benchmarks.md). Only a job whose runs here took less than GROUP_JOB_FACTOR times
# GROUP_SECONDS of wall time (on average) joins a group, so a run waits for its commit at most
# about GROUP_WALL_FACTOR times that long: a job not seen yet, or a slower one, runs on its own
# (Runner.run).
GROUP_RUNS, GROUP_SECONDS, GROUP_LOCK, GROUP_JOB_FACTOR, GROUP_WALL_FACTOR = 20, 0.01, 10, 5, 10


def skip_reason(occurrence: Occurrence, definition: Definition | None, now: datetime) -> str:
    if definition is None:
        return "skipped: the definition was deleted"
    if not occurrence.manual and not definition.enabled:
        return "skipped: the definition is disabled"
    if definition.expired(occurrence.scheduled_for, now):
        return "skipped: expired before it could run"
    return ""


@dataclasses.dataclass
class GroupRun:
    """One run of a group, until the group commits: what record_group writes and what is logged after."""

    occurrence: Occurrence
    definition: Definition
    started: datetime
    finished: datetime
    error: str = ""
    traceback: str = ""
    retry_at: datetime | None = None
    duration: float = 0.0
    published: list = dataclasses.field(default_factory=list)  # its outbox rows not written yet (deferred)

    @property
    def outcome(self) -> tuple:
        return (self.occurrence, self.started, self.finished, self.error, self.traceback, self.retry_at)

    @property
    def status(self) -> str:
        if not self.error:
            return metrics.SUCCEEDED
        return metrics.RETRY_SCHEDULED if self.retry_at else metrics.FAILED


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
        # Seconds the runs of each job (by name) took in this process, an exponential average (one
        # run slowed by a busy machine does not send a quick job out of groups): who may join a group.
        self._took: dict[str, float] = {}
        # CPU seconds a run in a group took in this thread, its share of the group's statements
        # included (an exponential average): how many ready occurrences to lock at a time (_fitting).
        self._pace = 0.0
        self.group_runs, self.group_seconds, self.group_lock = GROUP_RUNS, GROUP_SECONDS, GROUP_LOCK

    def run(self, occurrence: Occurrence, definition: Definition | None) -> None:
        """Run a claimed occurrence of definition (None: look it up) and record the attempt.

        Raises only a fault it could not record (see give_back).
        """
        job = occurrence.job_name
        metrics.labelled(metrics.RUNS_STARTED, job).inc()
        begun, started = time.monotonic(), self.clock()
        lag = started - occurrence.scheduled_for
        with tracing.span(f"run {job}", attributes=_span_attributes(occurrence)) as span:
            try:
                definition = definition or load_definition(occurrence.task_id)
                status, error = self._run(occurrence, definition, started)
            except LeaseLost as exc:
                status, error = _lease_lost(occurrence, exc)
            except Exception as exc:  # a fault of ours, not the job's (_run records those)
                status, error = self.give_back(occurrence, definition, exc, started=started)
            if span is not None:
                span.set_attribute("bookworm.run.outcome", status)
                if status in (metrics.FAILED, metrics.RETRY_SCHEDULED, metrics.LEASE_LOST):
                    tracing.fail(span, error)
        metrics.labelled(metrics.RUNS_FINISHED, job, status).inc()
        if status != metrics.SKIPPED:
            task = definition.job if definition is not None else ""
            metrics.labelled(metrics.RUN_DURATION, task).observe(time.monotonic() - begun)
            if occurrence.attempts == 1:  # a retry's lag would be its retry interval
                metrics.FIRE_LAG.observe(max(lag.total_seconds(), 0.0))

    def _run(self, occurrence: Occurrence, definition: Definition | None, started: datetime) -> tuple[str, str]:
        """Run and record; how it ended (a jobs.metrics outcome) and its error, if any."""
        reason = skip_reason(occurrence, definition, started)
        if reason:
            self._write(occurrence, lambda: occurrence.skip(session=self.session, now=started, reason=reason))
            _log(occurrence, "occurrence_skipped", reason=reason, status="skipped")
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
                    with _statement_timeout(timeout, local=True), self.watchdog(timeout), origin(source):
                        try:
                            spec.func(context)
                        finally:
                            self._timed(spec, begun)
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
            if returned or connection_lost(exc):
                # The job did its part and recording it failed, or the connection broke: not the job's failure.
                doing = "recording the run" if returned else ""
                return self.give_back(occurrence, definition, exc, started=started, doing=doing)
            tracing.record_exception(exc)
            error = f"timed out after {timeout} s" if isinstance(exc, JobTimeout) else one_line(exc)
            return self._fail(occurrence, definition, started, error, traceback.format_exc())
        _log(occurrence, "occurrence_succeeded", duration_ms=_ms(self.clock() - started), status="succeeded")
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
        if not self._still_claimed(occurrence):
            raise exc
        _log(occurrence, "run_error", error=error, level=logging.ERROR, exc_info=exc)
        if definition is None:
            definition = load_definition(occurrence.task_id)  # for its retry policy; None once deleted
        trace = "".join(traceback.format_exception(exc))
        try:
            return self._fail(occurrence, definition, started or occurrence.started_at, error, trace)
        except LeaseLost as lost:
            return _lease_lost(occurrence, lost)

    def _release_after_conflict(self, occurrence: Occurrence, exc: BaseException) -> tuple[str, str]:
        """The run's transaction lost a conflict and rolled back: back to scheduled, the attempt not counted."""
        error = describe_database_error(exc)
        _log(occurrence, "database_conflict", error=error, retry_in=0.0, level=logging.WARNING)
        reason = f"released: its record lost a conflict with another transaction ({error})"
        try:
            released = self._write(occurrence, lambda: occurrence.release(session=self.session, reason=reason))
        except LeaseLost as lost:
            return _lease_lost(occurrence, lost)
        if not released:  # the scheduler stops, and the database is unreachable: the lease expires
            return metrics.LEASE_LOST, error
        _log(occurrence, "occurrence_released", error=error, status="scheduled", level=logging.WARNING)
        return metrics.RELEASED, error

    def _fail(
        self, occurrence, definition: Definition | None, started, error: str, trace: str, retry: bool = True
    ) -> tuple[str, str]:
        finished = self.clock()
        policy = definition.policy if definition is not None else Policy()
        retry_at = policy.retry_at(occurrence.attempts, finished) if retry else None
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
                    if not self._still_claimed(occurrence):
                        return False
                with transaction.atomic():
                    write()
                return True
            except DatabaseError as exc:
                fault = database_fault(exc)
                if fault is DatabaseFault.CONFLICT:
                    delay = conflicts.next()
                    _log(
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
                    _log(
                        occurrence,
                        "record_abandoned",
                        error=one_line(exc),
                        level=logging.ERROR,
                        detail="the database is unreachable and the scheduler is stopping; its lease will expire "
                        "and another scheduler will record it",
                    )
                    return False
                delay = backoff.next()
                _log(
                    occurrence,
                    "record_retry",
                    error=one_line(exc),
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

    # Groups.

    def run_group(
        self,
        lock_ready: Callable[[int, list[int]], list[Occurrence]],
        *,
        scheduler: str,
        definition_of: Callable[[int | None], Definition | None] = load_definition,
    ) -> tuple[int, bool]:
        """Lock ready occurrences and run them in one transaction, each job in a savepoint.

        lock_ready(limit, ids) locks up to limit more, besides the ids this group has: as many as
        fit in the group's CPU time at the pace of the groups before (_fitting), so that few rows
        are locked and read only to be left for the next group. Stops before an occurrence that
        cannot join a group (see _groupable) and leaves it scheduled.
        Returns how many ran, and whether such an occurrence is next: the caller claims and runs
        it on its own (run).
        """
        runs: list[GroupRun] = []
        alone_next = False
        try:
            with transaction.atomic():
                began, began_cpu = time.monotonic(), time.thread_time()
                while len(runs) < self.group_runs and not alone_next and not (runs and self._full(began, began_cpu)):
                    wanted = min(self.group_lock, self.group_runs - len(runs), self._fitting(began_cpu))
                    ready = lock_ready(wanted, [run.occurrence.id for run in runs])
                    for occurrence in ready:
                        if runs and self._full(began, began_cpu):
                            break  # what is left of the batch stays scheduled: unlocked at the commit
                        definition = definition_of(occurrence.task_id)
                        spec = self._groupable(occurrence, definition)
                        if spec is None:
                            alone_next = True
                            break  # it and what follows stay scheduled: unlocked at the commit
                        runs.append(self._run_in_group(occurrence, definition, spec, scheduler))
                    if len(ready) < wanted:
                        break
                if runs:
                    insert_rows([message for run in runs for message in run.published], DEFAULT_DB_ALIAS)
                    Occurrence.record_group([run.outcome for run in runs], session=self.session, scheduler=scheduler)
                    pace = (time.thread_time() - began_cpu) / len(runs)
                    self._pace = pace if not self._pace else self._pace + (pace - self._pace) * 0.2
        except JOB_FAILURES as exc:
            if not connection_lost(exc):
                raise
            return self._settle_group(runs, one_line(exc)), False
        for run in runs:
            self._finished_in_group(run)
        return len(runs), alone_next

    def _full(self, began: float, began_cpu: float) -> bool:
        """Whether a group begun at began (time.monotonic(); time.thread_time(): began_cpu) starts no more runs."""
        return (
            time.thread_time() - began_cpu >= self.group_seconds
            or time.monotonic() - began >= self.group_seconds * GROUP_WALL_FACTOR
        )

    def _fitting(self, began_cpu: float) -> int:
        """How many more runs fit in the CPU time left to a group begun at began_cpu (at least one)."""
        if not self._pace:
            return self.group_lock
        return max(1, math.ceil((self.group_seconds - (time.thread_time() - began_cpu)) / self._pace))

    def _groupable(self, occurrence: Occurrence, definition: Definition | None) -> JobSpec | None:
        """The job, if this occurrence may run in a group: an atomic job, due to run, last seen to be quick.

        A skip, an unknown job, a job that runs its own transactions (atomic=False), one not run
        yet in this process or one whose runs took GROUP_JOB_FACTOR times group_seconds or more (on
        average) runs on its own: a slow job in a group would hold back the commit of the runs
        before it.
        """
        if definition is None or skip_reason(occurrence, definition, self.clock()):
            return None
        spec = get_job(definition.job)
        slow = GROUP_JOB_FACTOR * self.group_seconds
        if spec is None or not spec.atomic or self._took.get(spec.name, slow) >= slow:
            return None
        return spec

    def _run_in_group(self, occurrence: Occurrence, definition: Definition, spec: JobSpec, scheduler: str) -> GroupRun:
        """Run one job of a group in a savepoint; how it ended (recorded later, with the group)."""
        started = self.clock()
        occurrence.take(session=self.session, scheduler=scheduler, now=started)
        metrics.labelled(metrics.RUNS_STARTED, occurrence.job_name).inc()
        context = job_context(occurrence, definition)
        timeout = definition.policy.timeout
        run = GroupRun(occurrence, definition, started, started)
        begun = time.monotonic()
        with tracing.span(f"run {occurrence.job_name}", attributes=_span_attributes(occurrence)) as span:
            try:
                with _savepoint():
                    with (
                        _statement_timeout(timeout, local=True),
                        self.watchdog(timeout),
                        origin(f"occurrence:{occurrence.id}"),
                        deferred() as kept,
                    ):
                        try:
                            spec.func(context)
                        finally:
                            self._timed(spec, begun)
                run.published = kept.rows  # written with the group's record; dropped if the job failed
                if timeout:
                    _reset_statement_timeout()  # SET LOCAL outlives the savepoint; the next job has its own
            except JOB_FAILURES as exc:
                if connection_lost(exc):
                    raise  # the group is lost with the connection
                tracing.record_exception(exc)
                run.error = f"timed out after {timeout} s" if isinstance(exc, JobTimeout) else one_line(exc)
                run.traceback = traceback.format_exc()
            run.finished = self.clock()
            run.duration = time.monotonic() - begun
            if run.error:
                run.retry_at = definition.policy.retry_at(occurrence.attempts, run.finished)
            if span is not None:
                span.set_attribute("bookworm.run.outcome", run.status)
                if run.error:
                    tracing.fail(span, run.error)
        return run

    def _timed(self, spec: JobSpec, begun: float) -> None:
        took, average = time.monotonic() - begun, self._took.get(spec.name)
        self._took[spec.name] = took if average is None else average + (took - average) * 0.2

    def _finished_in_group(self, run: GroupRun) -> None:
        """After the group committed: the run's event and metrics, as run() has them."""
        occurrence, status = run.occurrence, run.status
        duration_ms = _ms(run.finished - run.started)
        if status == metrics.SUCCEEDED:
            _log(occurrence, "occurrence_succeeded", duration_ms=duration_ms, status="succeeded", grouped=True)
        else:
            _log(
                occurrence,
                "retry_scheduled" if run.retry_at else "occurrence_failed",
                error=run.error,
                retry_at=run.retry_at.isoformat() if run.retry_at else None,
                duration_ms=duration_ms,
                status="scheduled" if run.retry_at else "failed",
                grouped=True,
                level=logging.WARNING if run.retry_at else logging.ERROR,
            )
        job = occurrence.job_name
        metrics.labelled(metrics.RUNS_FINISHED, job, status).inc()
        metrics.labelled(metrics.RUN_DURATION, run.definition.job).observe(run.duration)
        if occurrence.attempts == 1:
            metrics.FIRE_LAG.observe(max((run.started - occurrence.scheduled_for).total_seconds(), 0.0))

    def _settle_group(self, runs: list[GroupRun], error: str) -> int:
        """The connection broke during a group or its commit: did it commit? Nothing was claimed outside it.

        Either every run of the group committed, or none did and their occurrences are still
        scheduled, their attempts not counted (the lock was the claim). Returns how many ran.
        """
        for run in runs:
            _log(run.occurrence, "run_interrupted", error=error, grouped=True, level=logging.WARNING)
        if not runs:
            return 0
        first = runs[0]
        backoff = backoffs.recording()
        while True:
            try:
                connection.close()
                committed = Attempt.objects.filter(
                    occurrence_id=first.occurrence.id,
                    number=first.occurrence.attempts,
                    started_at=min(first.started, first.finished),
                ).exists()
                break
            except DatabaseError:
                if self.stopping():
                    return 0  # committed or not, nothing is held: the history says which
                threading.Event().wait(backoff.next())
        for run in runs:
            if committed:
                self._finished_in_group(run)
            else:
                _log(run.occurrence, "occurrence_released", error=error, status="scheduled", level=logging.WARNING)
                metrics.labelled(metrics.RUNS_FINISHED, run.occurrence.job_name, metrics.RELEASED).inc()
        return len(runs) if committed else 0


@contextmanager
def _savepoint():
    """The savepoint of one job in a group: rolled back if the job raises, left for the commit if it returns.

    Sent with the job's first statement, not on its own (_QueuedSavepoint). Not released: that
    would be one more round trip per run, and the group's commit ends them all (a group of
    GROUP_RUNS nests that many). Like transaction.atomic() it drops the on_commit callbacks of a
    job rolled back and clears needs_rollback after the rollback; a job that returns with its
    transaction marked for rollback (an error it swallowed inside atomic(savepoint=False), say),
    or aborted (an error it swallowed outside any atomic block), has failed: its work is rolled
    back, not committed silently, and the next job starts from a usable transaction.
    """
    db = connections[DEFAULT_DB_ALIAS]  # the proxy `connection` looks it up at every attribute
    sid = f"run_{next(_savepoint_numbers)}"
    queued = _QueuedSavepoint(db, sid)
    db.savepoint_ids.append(sid)
    returned = False
    try:
        try:
            yield
        finally:
            queued.close()  # what the job sent is answered: an error of it is the job's
        if db.needs_rollback:
            raise TransactionManagementError("the job returned with its transaction marked for rollback")
        if db.connection.info.transaction_status == psycopg.pq.TransactionStatus.INERROR:
            # A database error it swallowed outside any atomic block: the next job would get it.
            raise TransactionManagementError("the job returned with its transaction aborted by a database error")
        returned = True
    finally:
        db.savepoint_ids.pop()
        if not returned:
            db.needs_rollback = False  # cleared first, or Django refuses the rollback itself
            try:
                db.savepoint_rollback(sid)
            except DatabaseError:
                db.needs_rollback = True  # the connection broke: the group is lost (connection_lost)
                raise


_savepoint_numbers = itertools.count(1)  # names of the runs' savepoints: unique within a process


class _QueuedSavepoint:
    """A run's SAVEPOINT sent together with the job's first statement: one round trip for both.

    psycopg's pipeline mode queues the SAVEPOINT. The first statement the job sends through
    Django's connection (an execute_wrapper) is queued behind it, and the pipeline is left as
    soon as it is: its result, or its error, reaches the job from execute() as it would have
    without the pipeline. A job that sent nothing (one that only publishes: its rows are kept for
    the group's statement, outbox.publishing.deferred) leaves the pipeline when it ends, which
    costs the savepoint's round trip. A statement sent on psycopg's own connection
    (connection.connection) goes into the same pipeline, after the savepoint: covered by it.
    """

    def __init__(self, db, sid: str):
        self._db = db
        raw = db.connection
        self._pipeline = raw.pipeline()
        self._pipeline.__enter__()
        try:
            raw.execute(db.ops.savepoint_create_sql(sid))
        except BaseException:
            self._pipeline.__exit__(None, None, None)
            raise
        db.execute_wrappers.append(self._sent_with)

    def _sent_with(self, execute, sql, params, many, context):
        try:
            return execute(sql, params, many, context)
        finally:
            self.close()

    def close(self) -> None:
        """Leave the pipeline, once: send what is queued and wait for the answers (raises the first error)."""
        if self._pipeline is None:
            return
        pipeline, self._pipeline = self._pipeline, None
        self._db.execute_wrappers.remove(self._sent_with)
        with self._db.wrap_database_errors:
            pipeline.__exit__(None, None, None)


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


def _reset_statement_timeout() -> None:
    if connection.vendor == "postgresql":
        with connection.cursor() as cursor:
            cursor.execute("RESET statement_timeout")


def _ms(delta) -> float:
    return round(delta.total_seconds() * 1000, 1)


def job_context(occurrence: Occurrence, definition: Definition) -> JobContext:
    """What a job is told about the run it is in."""
    return JobContext(
        job_name=occurrence.job_name,
        occurrence_id=occurrence.id,
        scheduled_for=occurrence.scheduled_for,
        attempt=occurrence.attempts,
        manual=occurrence.manual,
        kwargs=definition.kwargs,
    )


def _span_attributes(occurrence: Occurrence) -> dict | None:
    if not tracing.active():
        return None  # there is no span to give them to
    return {
        "bookworm.job.name": occurrence.job_name,
        "bookworm.occurrence.id": occurrence.id,
        "bookworm.occurrence.attempt": occurrence.attempts,
        "bookworm.occurrence.scheduled_for": occurrence.scheduled_for.isoformat(),
        "bookworm.occurrence.manual": occurrence.manual,
        "bookworm.scheduler.instance": occurrence.scheduler,
    }


def _lease_lost(occurrence: Occurrence, exc: LeaseLost) -> tuple[str, str]:
    """The run's outcome was not recorded: another scheduler reaped the claim meanwhile."""
    error = str(exc)
    _log(occurrence, "lease_lost", error=error, level=logging.WARNING)
    return metrics.LEASE_LOST, error


def _log(
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
