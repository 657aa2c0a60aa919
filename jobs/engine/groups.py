"""Runs of short jobs grouped in one transaction: a runner that also drains ready occurrences in groups.

One transaction locks a few ready occurrences (jobs.engine.store.lock_ready), runs each job in
a savepoint of its own (bookworm_scheduler.kernel.transactions.job_savepoint) and records them
all in one statement (store.record_group) before one commit. The outbox rows the jobs publish
are kept in memory and written with the record, all in one statement
(outbox.publishing.deferred), unless a job sends statements of its own after publishing: then
its rows go first. A job that raises or times out rolls back to its savepoint and its kept rows
are dropped: only its own work is gone, and its failure is recorded with the others. The row
locks are the group's claim: a crash before the commit leaves every occurrence of the group
scheduled, with no attempt counted, for any scheduler to run again; what committed stays
committed.
"""

import dataclasses
import logging
import math
import threading
import time
import traceback
from collections.abc import Callable
from datetime import datetime

from django.db import DEFAULT_DB_ALIAS, DatabaseError, connection, transaction

from bookworm_scheduler.kernel import backoff as backoffs
from bookworm_scheduler.kernel.db import (
    TRANSACTION_CUT,
    connection_lost,
    describe_database_error,
    insert_rows,
    transaction_cut,
)
from bookworm_scheduler.kernel.errors import one_line
from bookworm_scheduler.kernel.transactions import job_savepoint, reset_statement_timeout, statement_timeout
from jobs.engine import observer, store
from jobs.engine import scheduler_metrics as metrics
from jobs.engine.definitions import Definition, definition_for, load_definition
from jobs.engine.registry import JobSpec, get_job
from jobs.engine.runner import JOB_FAILURES, Runner, expired_reason, job_context, job_result, skip_reason
from jobs.engine.timeouts import JobTimeout
from jobs.models import Occurrence
from outbox.publishing import deferred, origin

logger = logging.getLogger(__name__)

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
    result: object = None  # what the job returned, if it succeeded
    duration: float = 0.0
    published: list = dataclasses.field(default_factory=list)  # its outbox rows not written yet (deferred)

    @property
    def outcome(self) -> tuple:
        return (self.occurrence, self.started, self.finished, self.error, self.traceback, self.retry_at, self.result)

    @property
    def status(self) -> str:
        if not self.error:
            return metrics.SUCCEEDED
        return metrics.RETRY_SCHEDULED if self.retry_at else metrics.FAILED


class GroupRunner(Runner):
    """A Runner that also runs groups (run_group): the scheduler's; a Celery worker runs one at a time."""

    def __init__(
        self,
        *,
        group_runs: int = GROUP_RUNS,
        group_seconds: float = GROUP_SECONDS,
        idle_bound: float | None = None,
        **runner,
    ):
        super().__init__(**runner)
        self.group_runs, self.group_seconds, self.group_lock = group_runs, group_seconds, GROUP_LOCK
        # How long the database lets a transaction of this process sit idle (kernel.liveness), in seconds.
        self.idle_bound = idle_bound
        # CPU seconds a run in a group took in this thread, its share of the group's statements
        # included (an exponential average): how many ready occurrences to lock at a time (_fitting).
        self._pace = 0.0

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
        it on its own (run). The rows locked after it are free at the commit, which announces them
        (store.announce_ready, one statement only then): an idle scheduler claims them at once rather
        than at its next wake-up, while this slot runs the one that cannot join.
        """
        runs: list[GroupRun] = []
        alone_next = False
        began, began_cpu = time.monotonic(), time.thread_time()
        try:
            with transaction.atomic():
                while len(runs) < self.group_runs and not alone_next and not (runs and self._full(began, began_cpu)):
                    wanted = min(self.group_lock, self.group_runs - len(runs), self._fitting(began_cpu))
                    ready = lock_ready(wanted, [run.occurrence.id for run in runs])
                    for index, occurrence in enumerate(ready):
                        if runs and self._full(began, began_cpu):
                            break  # what is left of the batch stays scheduled: this slot's next group runs it
                        definition = definition_for(occurrence, definition_of)
                        spec = self._groupable(occurrence, definition)
                        if spec is None:
                            alone_next = True
                            if index + 1 < len(ready):
                                # It and what follows stay scheduled, unlocked at the commit; this slot
                                # claims it next, and the others are told of the rest at the commit.
                                store.announce_ready()
                            break
                        runs.append(self._run_in_group(occurrence, definition, spec, scheduler))
                    if len(ready) < wanted:
                        break
                if runs:
                    insert_rows([message for run in runs for message in run.published], DEFAULT_DB_ALIAS)
                    store.record_group([run.outcome for run in runs], session=self.session, scheduler=scheduler)
                    pace = (time.thread_time() - began_cpu) / len(runs)
                    self._pace = pace if not self._pace else self._pace + (pace - self._pace) * 0.2
        except JOB_FAILURES as exc:
            if not connection_lost(exc):
                raise
            self._if_cut(exc, time.monotonic() - began, len(runs))
            return self._settle_group(runs, one_line(exc)), False
        for run in runs:
            self._finished_in_group(run)
        return len(runs), alone_next

    def _if_cut(self, exc: BaseException, open_for: float, runs: int) -> None:
        """Log a group's lost connection as transaction_cut when the database ended it for sitting idle.

        Paused or stalled with the group open, past the bound: its rows were free for the others
        meanwhile, and none of its runs committed (_settle_group logs each). The server says so
        (SQLSTATE 25P03) unless the cut came while a job had sent nothing yet
        (kernel.transactions._QueuedSavepoint: a pipeline, whose lost connection has no SQLSTATE);
        then a transaction open past the bound tells.
        """
        if not (transaction_cut(exc) or (self.idle_bound is not None and open_for >= self.idle_bound)):
            return
        logger.error(
            "database session ended: a group's transaction, open %.1f s, sat idle too long; its runs did not commit",
            open_for,
            extra={
                "action": TRANSACTION_CUT,
                "runs": runs,
                "open_s": round(open_for, 3),
                "error": describe_database_error(exc),
            },
        )

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

        A skip, an expiry, a cancel asked before its release (Runner.run records it), an unknown job, a job that
        runs its own transactions (atomic=False), one not run yet in this process or one whose runs
        took GROUP_JOB_FACTOR times group_seconds or more (on average) runs on its own: a slow job in
        a group would hold back the commit of the runs before it.
        """
        now = self.clock()
        if definition is None or occurrence.cancel_requested_at or skip_reason(occurrence, definition, now):
            return None
        if expired_reason(occurrence, now):
            return None
        spec = get_job(definition.job)
        slow = GROUP_JOB_FACTOR * self.group_seconds
        if spec is None or not spec.atomic or self._took.get(spec.name, slow) >= slow:
            return None
        return spec

    def _run_in_group(self, occurrence: Occurrence, definition: Definition, spec: JobSpec, scheduler: str) -> GroupRun:
        """Run one job of a group in a savepoint; how it ended (recorded later, with the group)."""
        started = self.clock()
        store.claim_locked(occurrence, session=self.session, scheduler=scheduler, now=started)
        observer.started(occurrence)
        context = job_context(occurrence, definition)
        timeout = definition.policy.timeout
        run = GroupRun(occurrence, definition, started, started)
        begun = time.monotonic()
        with observer.run_span(occurrence) as span:
            try:
                with job_savepoint():
                    with (
                        statement_timeout(timeout, local=True),
                        self.watchdog(timeout),
                        origin(f"occurrence:{occurrence.id}"),
                        deferred() as kept,
                    ):
                        try:
                            run.result = job_result(spec.func(context))
                        finally:
                            self._timed(spec, begun)
                run.published = kept.rows  # written with the group's record; dropped if the job failed
                if timeout:
                    reset_statement_timeout()  # SET LOCAL outlives the savepoint; the next job has its own
            except JOB_FAILURES as exc:
                if connection_lost(exc):
                    raise  # the group is lost with the connection
                observer.raised(exc)
                run.error = f"timed out after {timeout} s" if isinstance(exc, JobTimeout) else one_line(exc)
                run.result = None
                run.traceback = traceback.format_exc()
            run.finished = self.clock()
            run.duration = time.monotonic() - begun
            if run.error:
                run.retry_at = definition.policy.retry_at(occurrence.attempts, run.finished)
            observer.outcome(span, run.status, run.error)
        return run

    def _finished_in_group(self, run: GroupRun) -> None:
        """After the group committed: the run's event and metrics, as run() has them."""
        occurrence = run.occurrence
        duration_ms = observer.ms(run.finished - run.started)
        observer.ended(occurrence, error=run.error, retry_at=run.retry_at, duration_ms=duration_ms, grouped=True)
        observer.finished(occurrence, run.status, job=run.definition.job, duration=run.duration, started_at=run.started)

    def _settle_group(self, runs: list[GroupRun], error: str) -> int:
        """The connection broke during a group or its commit: did it commit? Nothing was claimed outside it.

        Either every run of the group committed, or none did and their occurrences are still
        scheduled, their attempts not counted (the lock was the claim). Returns how many ran.
        """
        for run in runs:
            observer.event(run.occurrence, "run_interrupted", error=error, grouped=True, level=logging.WARNING)
        if not runs:
            connection.close()
            return 0
        first = runs[0]
        backoff = backoffs.recording()
        while True:
            try:
                connection.close()
                committed = store.attempt_recorded(first.occurrence, started_at=min(first.started, first.finished))
                break
            except DatabaseError:
                if self.stopping():
                    return 0  # committed or not, nothing is held: the history says which
                threading.Event().wait(backoff.next())
        for run in runs:
            if committed:
                self._finished_in_group(run)
            else:
                observer.event(
                    run.occurrence, "occurrence_released", error=error, status="scheduled", level=logging.WARNING
                )
                observer.finished(run.occurrence, metrics.RELEASED)
        return len(runs) if committed else 0
