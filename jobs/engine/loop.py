"""The scheduling engine of one runscheduler process: the loop, calling each part in order.

- planning.Planner turns due instants into occurrence rows (the project's own cursors);
- leases.Leases keeps this process's heartbeat and claims alive, and reaps dead ones;
- the executor (Executor, below) runs claimed occurrences: pool.WorkerPool in threads, through
  runner.Runner, or jobs.handover.executor.CeleryExecutor hands them to Celery workers
  (SCHEDULER_EXECUTOR). With the
  pool, a slot given an ordinary claim runs it, then drains what else is ready: short atomic
  jobs a group per transaction (groups.GroupRunner.run_group), the others claimed and run one at a time;
- store.prune keeps the history bounded;
- alerts.AlertSender sends the alerts of failed jobs, recorded with the failures.

All shared state is in the database, and all time is the database's (DatabaseClock). The
main thread wakes at the next due instant or ready retry, when a run finishes, when its leases
are due for renewal (a third of the lease), and on NOTIFY jobs_occurrence: occurrences inserted
or scheduled again, a definition written by any path (migrations 0003 and 0009), a Celery worker
taking a hand-over over, rows a group locked and left at its commit (store.announce_ready), the
listening connection (re)established. Each pass claims what is
ready; housekeeping (definitions, planning, leases, pruning, alerts) comes with a definition's
NOTIFY, a due instant, a renewal, or otherwise every POLL_INTERVAL, as a safety net (every
second on SQLite, which has no NOTIFY).
"""

import logging
import threading
import time
import uuid
from collections.abc import Callable
from datetime import datetime, timedelta
from typing import Protocol

from django.conf import settings
from django.db import DatabaseError, close_old_connections, connection
from django.utils import timezone

from bookworm_scheduler.kernel import backoff as backoffs
from bookworm_scheduler.kernel.clock import DatabaseClock
from bookworm_scheduler.kernel.db import DatabaseFault, database_fault, describe_database_error, fault_event
from bookworm_scheduler.kernel.dialect import postgresql
from bookworm_scheduler.kernel.listen import Listener
from jobs.alerts.delivery import AlertSender
from jobs.engine import store
from jobs.engine.definitions import Definition, create_missing_definitions, load_definition
from jobs.engine.groups import GROUP_RUNS, GROUP_SECONDS, GroupRunner
from jobs.engine.leases import Leases
from jobs.engine.planning import Planner
from jobs.engine.pool import Slot, WorkerPool
from jobs.engine.store import DEFINITIONS_CHANGED, NOTIFY_CHANNEL
from jobs.models import Occurrence

logger = logging.getLogger(__name__)

# The longest the main thread sleeps: with NOTIFY (PostgreSQL), and without (SQLite).
POLL_INTERVAL = timedelta(seconds=10)
POLL_INTERVAL_WITHOUT_NOTIFY = timedelta(seconds=1)
# The clock's offset from the database's is re-read when older than this, at a pass.
CLOCK_MAX_AGE = 1.0
# History pruning: rows per transaction, transactions per pass, and how often to look.
PRUNE_BATCH, PRUNE_BATCHES, PRUNE_EVERY = 2000, 2, timedelta(minutes=10)
# After a group failed for a reason other than a lost connection, ordinary jobs are claimed and run
# one at a time for this long: a job whose work only fails at the commit is then recorded as failed.
GROUPS_PAUSE = 60.0


class Scheduler:
    def __init__(
        self,
        *,
        instance_id: str,
        concurrency: int,
        lease: timedelta,
        grace: timedelta,
        long_running_concurrency: int = 1,
        history: timedelta = timedelta(days=30),
        clock: Callable[[], datetime] | None = None,
        executor: str = "inline",
        group_runs: int = GROUP_RUNS,
        group_seconds: float = GROUP_SECONDS,
    ):
        self.instance_id = instance_id
        self.session = uuid.uuid4()
        # The database's time, its offset re-measured at least once per pass of housekeeping.
        self.clock = clock or DatabaseClock(max_age=CLOCK_MAX_AGE)
        self.history = history
        self.planner = Planner(grace=grace)
        self.leases = Leases(session=self.session, scheduler=instance_id, lease=lease)
        self.runner = GroupRunner(
            session=self.session,
            clock=self.clock,
            stopping=lambda: self.stopping,
            group_runs=group_runs,
            group_seconds=group_seconds,
            idle_bound=self.leases.liveness.idle_in_transaction.total_seconds(),
        )
        self.pool = build_executor(
            executor,
            session=self.session,
            concurrency=concurrency,
            long_running_concurrency=long_running_concurrency,
            on_done=self.wake,
            definition_of=self._definition_of,
        )
        self.listener = Listener(NOTIFY_CHANNEL, self.notified)
        self.poll_interval = POLL_INTERVAL if postgresql(connection.alias) else POLL_INTERVAL_WITHOUT_NOTIFY
        self.alerts = AlertSender(history=history)
        self._stopping = threading.Event()
        self._wake = threading.Event()
        self._next_ready: datetime | None = None
        self._next_prune: datetime | None = None
        self._housekeeping_at: datetime | None = None
        self._notified = threading.Event()  # a definition changed (or a gap in listening) since the last housekeeping
        self._groups_paused_until = 0.0  # time.monotonic()

    def run(self, *, once: bool = False, shutdown_timeout: float = 30) -> int:
        """Until stop() (or, once, until nothing is due or running); the jobs still running at the end."""
        started, backoff, conflicts = False, backoffs.after_outage(), backoffs.conflict()
        self.listener.start()
        while not self.stopping:
            try:
                close_old_connections()
                now = self.clock()
                if not started:
                    self.start(now)
                    started = True
                found = self.run_pass(now)
                backoff.reset()
                conflicts.reset()
            except DatabaseError as exc:
                # A conflict rolled its transaction back and left the connection usable: the pass
                # is run again soon. Anything else may be an outage: a new connection, later.
                conflict = database_fault(exc) is DatabaseFault.CONFLICT
                delay = (conflicts if conflict else backoff).next()
                log_database_error(exc, delay, where="main")
                if not conflict:
                    connection.close()
                self.sleep(delay)
                continue
            if once and not found and self.pool.idle:
                break
            if not found:
                self.sleep_until(self.next_wakeup(now))
        return self.shutdown(shutdown_timeout)

    def run_pass(self, now: datetime) -> bool:
        """One pass of the main thread; True if it found work (so another pass may find more).

        Claiming runs every pass (a run that finished or a NOTIFY wakes the loop for it); the rest
        after a definition's NOTIFY, when a definition or a lease renewal falls due, and at least
        once per poll interval.
        """
        found = False
        housekeeping = self._housekeeping_at is None or now >= self._housekeeping_at
        if housekeeping or self._notified.is_set() or self.planner.due(now) or self.leases.due(now):
            self._notified.clear()
            self._housekeeping_at = now + self.poll_interval
            self.planner.refresh()
            # Renewed a little early rather than in a pass of its own (the next poll comes with the next renewal).
            if self.leases.due(now, early=self.leases.renew_every / 2):
                self.leases.renew(now, self.pool.running_ids())
                self.pool.stop_cancelled(now)
                found |= self.reap(now) > 0
            found |= self.planner.plan(now) > 0
            found |= self.prune(now)
            found |= self.alerts.run(now)  # jobs.alerts.delivery: logs its failures, never raises
        found |= self.dispatch(now) > 0
        return found

    # The passes. Each takes `now`; tests call them with a clock they move.

    def start(self, now: datetime) -> None:
        """Create this process's instance row and the definitions of registered jobs."""
        create_missing_definitions()
        self.leases.register(now, concurrency=self.pool.capacity)
        offset = (now - timezone.now()).total_seconds()
        logger.info(
            "scheduler %s started (session %s); the database's clock is %+.3f s from this host's",
            self.instance_id,
            self.session,
            offset,
            extra={
                "action": "scheduler_started",
                "instance": self.instance_id,
                "session": str(self.session),
                "clock_offset_s": round(offset, 3),
            },
        )

    def reap(self, now: datetime) -> int:
        """Record and retry the runs of dead schedulers (see Leases.reap)."""
        return self.leases.reap(now, self.planner.definitions)

    def dispatch(self, now: datetime) -> int:
        """Claim what is ready, as many as there are free slots, and hand it to the executor.

        With the thread pool, an ordinary slot is given a drain (_drain) that runs its claim and
        then goes on with what else is ready, a group at a time.
        """
        claimed, drained = 0, True
        for long_running in (False, True):
            free = self.pool.free(long_running)
            if free <= 0 or self.stopping:
                drained = False
                continue
            occurrences = self._claim(now, long_running=long_running, limit=free)
            if not long_running and self._groups():
                for occurrence in occurrences:
                    self.pool.submit_drain(occurrence, self._drain)
            else:
                self.pool.submit_all(occurrences, self._run, long_running=long_running)
            claimed += len(occurrences)
            drained &= len(occurrences) < free
        if drained:  # nothing more is ready: when will something be? (a finished run wakes us otherwise)
            self._next_ready = store.next_ready_at()
        return claimed

    def run_ready(self, now: datetime, *, long_running: bool = False, limit: int | None = None) -> int:
        """Claim and run ready occurrences one at a time in this thread; return how many ran."""
        count = 0
        while limit is None or count < limit:
            claimed = self._claim(now, long_running=long_running, limit=1)
            if not claimed:
                break
            self._run(claimed[0])
            count += 1
        return count

    def run_group(self, now: datetime) -> tuple[int, bool]:
        """Run ordinary occurrences ready at `now` as one group in this thread (groups.GroupRunner.run_group)."""
        return self.runner.run_group(
            lambda limit, besides: store.lock_ready(now=now, limit=limit, besides=besides),
            scheduler=self.instance_id,
            definition_of=self._definition_of,
        )

    def prune(self, now: datetime) -> bool:
        """Delete old history now and then (one scheduler at a time); True if more is left."""
        if self._next_prune is not None and now < self._next_prune:
            return False
        deleted, more = store.prune(now, keep=self.history, batch=PRUNE_BATCH, batches=PRUNE_BATCHES)
        if deleted:
            logger.info("pruned %d old occurrences", deleted, extra={"action": "history_pruned", "count": deleted})
        self._next_prune = None if more else now + PRUNE_EVERY
        return more

    def next_wakeup(self, now: datetime) -> datetime:
        """The next due instant, pending retry or lease renewal, at most the poll interval away.

        What is ready already waits for a free slot: a finished run wakes the loop.
        """
        candidates = [now + self.poll_interval, self.planner.next_due_at(), self.leases.next_renewal_at()]
        if self._next_ready is not None and self._next_ready > now:
            candidates.append(self._next_ready)
        return max(min(c for c in candidates if c is not None), now)

    # Threads and signals.

    def wake(self) -> None:
        self._wake.set()

    def notified(self, payload: str | None) -> None:
        """NOTIFY jobs_occurrence (the listener's thread): look at what is ready, which every pass
        does; on 'definitions' (a definition written) or None (listening again after a gap,
        anything may have been missed) at the definitions too: a pass of housekeeping."""
        if payload is None or payload == DEFINITIONS_CHANGED:
            self._notified.set()
        self._wake.set()

    def sleep_until(self, instant: datetime) -> None:
        """Sleep until instant, a wake-up or stop()."""
        self.sleep((instant - self.clock()).total_seconds())

    def sleep(self, seconds: float) -> None:
        if seconds > 0:
            self._wake.wait(seconds)
        self._wake.clear()

    @property
    def stopping(self) -> bool:
        return self._stopping.is_set()

    def stop(self) -> None:
        """Stop claiming; running jobs go on. From any thread but never from a signal handler, which may have
        interrupted the main thread inside _wake's lock (runscheduler: bookworm_scheduler.kernel.signals)."""
        self._stopping.set()
        self._wake.set()

    def shutdown(self, timeout: float) -> int:
        """Wait up to timeout seconds for running jobs, renewing their leases; return how many still run."""
        self.stop()
        self.listener.close()
        deadline = self.clock() + timedelta(seconds=timeout)
        while not self.pool.idle and self.clock() < deadline:
            remaining = (deadline - self.clock()).total_seconds()
            if self.pool.wait(min(remaining, self.leases.renew_every.total_seconds())):
                break
            try:
                self.leases.renew(self.clock(), self.pool.running_ids())
            except DatabaseError:
                connection.close()
        self.pool.shutdown()  # the celery executor gives back what no worker took over
        still_running = len(self.pool.running_ids())
        if still_running:
            logger.warning(
                "%d jobs still running after %s s; their leases will expire and they will be retried",
                still_running,
                timeout,
                extra={"action": "shutdown_timeout", "count": still_running, "instance": self.instance_id},
            )
        self.leases.retire(self.clock())
        connection.close()
        logger.info(
            "scheduler %s stopped",
            self.instance_id,
            extra={"action": "scheduler_stopped", "instance": self.instance_id, "session": str(self.session)},
        )
        return still_running

    def _claim(self, now: datetime, *, long_running: bool, limit: int) -> list[Occurrence]:
        return store.claim_ready(
            now=now,
            session=self.session,
            scheduler=self.instance_id,
            lease=self.leases.lease,
            long_running=long_running,
            limit=limit,
        )

    def _groups(self) -> bool:
        """Whether free ordinary slots drain in groups: the thread pool, on PostgreSQL (sql.record_group)."""
        return (
            isinstance(self.pool, WorkerPool)
            and self.runner.group_runs > 1
            and postgresql(connection.alias)
            and time.monotonic() >= self._groups_paused_until
        )

    def _drain(self, first: Occurrence, slot: Slot) -> None:
        """A pool slot's work: its claim, run alone (as a lone job's always is), then while ordinary
        work is ready, groups of short jobs and the others one at a time."""
        self._run(first)
        slot.occurrence_id = None
        try:
            while not self.stopping:
                ran, alone_next = self.run_group(self.clock())
                if alone_next:
                    claimed = self._claim(self.clock(), long_running=False, limit=1)
                    for occurrence in claimed:
                        slot.occurrence_id = occurrence.id  # a committed claim: its lease is renewed
                        self._run(occurrence)
                        slot.occurrence_id = None
                    ran += len(claimed)
                if not ran:
                    break
        except Exception as exc:
            fault = database_fault(exc)
            if fault is DatabaseFault.CONFLICT:
                # The group rolled back: its occurrences are still scheduled, no attempt counted,
                # and are claimed again when this slot's end wakes the main thread.
                log_database_error(exc, None, where="worker")
                return
            connection.close()
            if fault is DatabaseFault.UNAVAILABLE:  # the main thread notices too, and backs off
                log_database_error(exc, None, where="worker")
                return
            # A bug of ours, or a group that failed at its commit (a deferred constraint of a job's
            # work, say): one at a time for a while, so that the job's failure is recorded as its own.
            self._groups_paused_until = time.monotonic() + GROUPS_PAUSE
            logger.exception(
                "a group of runs failed; ordinary jobs run one at a time for %.0f s",
                GROUPS_PAUSE,
                extra={"action": "group_failed", "instance": self.instance_id, "retry_in": GROUPS_PAUSE},
            )

    def _definition_of(self, task_id: int | None):
        return self.planner.definitions.get(task_id) or load_definition(task_id)

    def _run(self, occurrence: Occurrence) -> None:
        try:
            self.runner.run(occurrence, self.planner.definitions.get(occurrence.task_id))
        except Exception:
            # A fault of ours the runner could not give back (Runner.give_back): the outcome was
            # recorded before it, or recording it failed as well. Log it and keep the worker; a
            # claim left running is reaped when its lease expires.
            logger.exception(
                "running occurrence %s failed",
                occurrence.id,
                extra={
                    "action": "worker_error",
                    "occurrence": occurrence.id,
                    "job_name": occurrence.job_name,
                    "attempt": occurrence.attempts,
                },
            )
            connection.close()


# The main thread's and the workers' log actions for each kind of database fault.
class Executor(Protocol):
    """Where claimed occurrences run, as the loop calls it: pool.WorkerPool or handover's CeleryExecutor.

    The pool also takes submit_drain(occurrence, drain): a slot that runs its claim, then groups of
    quick jobs (Scheduler._drain); the loop groups only with it.
    """

    idle: bool  # nothing of this process's is running
    capacity: int  # at most this many occurrences at once (SchedulerInstance.concurrency)

    def free(self, long_running: bool) -> int:
        """How many more claims of that kind to take now."""

    def running_ids(self) -> list[int]:
        """The claims whose leases this process renews."""

    def wait(self, timeout: float) -> bool:
        """Until a slot frees up or timeout seconds pass; whether one did."""

    def submit_all(self, occurrences: list[Occurrence], run: Callable[[Occurrence], None], *, long_running: bool):
        """Run (or hand over) each claim."""

    def stop_cancelled(self, now: datetime) -> None:
        """At each lease renewal: stop the claims whose cancel was asked, if this executor stops them itself
        (a Celery hand-over's; the pool's jobs check JobContext.cancelled, or are stopped at their return)."""

    def shutdown(self) -> None:
        """Stop taking work; give back what never started."""


def build_executor(
    kind: str,
    *,
    session,
    concurrency: int,
    long_running_concurrency: int,
    on_done: Callable[[], None],
    definition_of: Callable[[int | None], Definition | None],
):
    """The executor that SCHEDULER_EXECUTOR names ("inline" or "celery")."""
    if kind == "inline":
        return WorkerPool(concurrency, long_running_concurrency, on_done=on_done)
    if kind == "celery":
        from jobs.handover.executor import CeleryExecutor, celery_app  # Celery only where it is used

        # A publish must fail at once while the broker is away: by default kombu retries the
        # connection for broker_connection_timeout (4 s) on every try, and this process's main
        # thread (planning, lease renewal) would wait that long each time. Only this process's app.
        celery_app.conf.broker_transport_options = {**celery_app.conf.broker_transport_options, "max_retries": 0}
        return CeleryExecutor(
            session=session,
            definition_of=definition_of,
            queue=settings.SCHEDULER_CELERY_QUEUE,
            max_in_flight=settings.SCHEDULER_CELERY_MAX_IN_FLIGHT,
            hard_limit_margin=settings.SCHEDULER_CELERY_HARD_LIMIT_MARGIN_SECONDS,
            grace=timedelta(seconds=settings.SCHEDULER_MISFIRE_GRACE_SECONDS),
        )
    raise ValueError(f"unknown executor {kind!r}")


DATABASE_FAULT_ACTIONS = {
    DatabaseFault.UNAVAILABLE: "database_unavailable",
    DatabaseFault.CONFLICT: "database_conflict",
    DatabaseFault.ERROR: "database_error",
}


def log_database_error(exc: Exception, delay: float | None, *, where: str) -> None:
    """One line per failure: the database is unreachable, a transaction lost a conflict, or a statement failed."""
    _, action, level, words = fault_event(exc, DATABASE_FAULT_ACTIONS)
    error = describe_database_error(exc)
    logger.log(
        level,
        "%s in the %s thread: %s%s",
        words,
        where,
        error,
        f"; retrying in {delay:.2f} s" if delay is not None else "",
        extra={"action": action, "retry_in": delay, "error": error},
    )
