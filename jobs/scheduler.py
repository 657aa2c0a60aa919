"""The scheduling engine of one runscheduler process.

The main thread plans due instants into occurrence rows, keeps the heartbeat, reaps expired
leases and sleeps until the next due instant. `concurrency` worker threads claim ready
occurrences from the database (highest priority first) and run them; LongRunning jobs get a
thread of their own outside that limit. All shared state is in the database; what is held
here (definitions, next due instants) is a cache rebuilt whenever the definitions change.
"""

import logging
import os
import socket
import threading
import uuid
from collections.abc import Callable
from datetime import datetime, timedelta

from django.db import DatabaseError, InterfaceError, OperationalError, close_old_connections, connection, transaction
from django.db.models import Min
from django.utils import timezone

import bookworm_scheduler
from bookworm_scheduler.backoff import Backoff

from .definitions import Definition, Policy, change_marker, create_missing_definitions, load_definitions
from .models import Occurrence, SchedulerInstance
from .planning import plan_due
from .runner import Target, run_occurrence

logger = logging.getLogger(__name__)

# The longest the main thread sleeps: definition changes and manual triggers are seen this fast.
POLL_INTERVAL = timedelta(seconds=1)


class Scheduler:
    def __init__(
        self,
        *,
        instance_id: str,
        concurrency: int,
        lease: timedelta,
        grace: timedelta,
        clock: Callable[[], datetime] = timezone.now,
    ):
        self.instance_id = instance_id
        self.concurrency = concurrency
        self.lease = lease
        self.heartbeat_every = lease / 3
        self.grace = grace
        self.clock = clock
        self.session = uuid.uuid4()
        self.definitions: dict[int, Definition] = {}
        self.invalid: dict[int, str] = {}
        self.next_due: dict[int, datetime] = {}
        self._marker = None
        self._loaded = False
        self._last_heartbeat: datetime | None = None
        self._next_ready: datetime | None = None
        self._in_flight: set[int] = set()
        self._in_flight_lock = threading.Lock()
        self._work = threading.Condition()
        self._generation = 0
        self._stopping = threading.Event()
        self._wake = threading.Event()
        self._threads: list[threading.Thread] = []

    # One-pass methods. Each takes `now`; tests call them with a controlled clock.

    def register(self, now: datetime) -> None:
        """Create this process's heartbeat row and the definitions of registered jobs."""
        create_missing_definitions()
        SchedulerInstance.objects.update_or_create(
            session=self.session,
            defaults=dict(
                instance_id=self.instance_id,
                host=socket.gethostname(),
                pid=os.getpid(),
                version=bookworm_scheduler.__version__,
                started_at=now,
                last_seen=now,
            ),
        )
        self._last_heartbeat = now
        logger.info(
            "scheduler %s started (session %s, concurrency %d)",
            self.instance_id,
            self.session,
            self.concurrency,
            extra={"action": "scheduler_started", "instance": self.instance_id, "session": str(self.session)},
        )

    def refresh_definitions(self) -> bool:
        """Reload the definitions if any changed since the last load; True if reloaded."""
        marker = change_marker()
        if self._loaded and marker == self._marker:
            return False
        definitions, invalid = load_definitions()
        for task_id, reason in invalid.items():
            if self.invalid.get(task_id) != reason:
                logger.error("definition not scheduled: %s", reason, extra={"action": "definition_invalid"})
        self.definitions, self.invalid = definitions, invalid
        self.next_due = {}
        for task_id, definition in definitions.items():
            instant = definition.next_instant()
            if instant is not None:
                self.next_due[task_id] = instant
        self._marker, self._loaded = marker, True
        return True

    def plan(self, now: datetime) -> int:
        """Plan every definition whose next instant is due; return how many definitions had some."""
        due = [task_id for task_id, instant in self.next_due.items() if instant <= now]
        if not due:
            return 0
        cursors = plan_due(self.definitions, due, now=now, grace=self.grace)
        for task_id in due:
            # Planned here: continue after the new cursor (before now if a pass was truncated).
            # Locked or already planned by another scheduler: continue after now.
            instant = next(self.definitions[task_id].instants_after(cursors.get(task_id, now)), None)
            if instant is None:
                self.next_due.pop(task_id, None)
            else:
                self.next_due[task_id] = instant
        return len(cursors)

    def heartbeat(self, now: datetime) -> None:
        """Show this process alive and extend the leases of the occurrences it is running."""
        SchedulerInstance.objects.filter(session=self.session).update(last_seen=now)
        with self._in_flight_lock:
            running = list(self._in_flight)
        Occurrence.renew_leases(running, session=self.session, now=now, lease=self.lease)
        self._last_heartbeat = now

    def reap(self, now: datetime) -> int:
        """Fail (and retry per policy) running occurrences whose scheduler stopped renewing the lease."""
        with transaction.atomic():
            expired = Occurrence.expired_leases(now)
            for occurrence in expired:
                target = Target.of(occurrence, self.definitions.get(occurrence.task_id))
                policy = target.policy if target else Policy()
                retry_at = None
                if occurrence.attempts <= policy.max_retries:
                    retry_at = now + policy.retry_delay(occurrence.attempts)
                error = (
                    f"lease expired at {occurrence.lease_expires_at.isoformat()}: scheduler {occurrence.instance} "
                    f"(session {occurrence.claimed_by}) stopped renewing it and is presumed dead"
                )
                occurrence.record_attempt(
                    claimer=occurrence.claimed_by,
                    started_at=min(occurrence.claimed_at, now),
                    now=now,
                    error=error,
                    retry_at=retry_at,
                )
                logger.warning(
                    "reaped %s scheduled for %s: %s",
                    occurrence.job_name,
                    occurrence.scheduled_for.isoformat(),
                    error,
                    extra={"action": "lease_expired", "occurrence": occurrence.id, "job": occurrence.job_name},
                )
        return len(expired)

    def run_ready(self, now: datetime | None = None, *, long_running: bool = False, limit: int | None = None) -> int:
        """Claim and run ready occurrences one at a time in this thread; return how many ran.

        While more are ready, each run's transaction also claims the next one.
        """
        count = 0

        def claim() -> Occurrence | None:
            if self._stopping.is_set() or (limit is not None and count >= limit):
                return None
            claimed = Occurrence.claim_next(
                now=now or self.clock(),
                session=self.session,
                instance=self.instance_id,
                lease=self.lease,
                long_running=long_running,
            )
            return claimed[0] if claimed else None

        occurrence = claim()
        while occurrence is not None:
            count += 1
            occurrence = self._run(occurrence, claim_following=claim)
        return count

    def tick(self, now: datetime) -> bool:
        """One pass of the main thread; True if it found work (so another pass may find more)."""
        self.refresh_definitions()
        found = False
        if self._last_heartbeat is None or now - self._last_heartbeat >= self.heartbeat_every:
            self.heartbeat(now)
            found |= self.reap(now) > 0
        found |= self.plan(now) > 0
        self._next_ready = Occurrence.objects.filter(status=Occurrence.Status.SCHEDULED).aggregate(
            earliest=Min("run_after")
        )["earliest"]
        if self._next_ready is not None and self._next_ready <= now:
            self._notify_workers()
            found |= self._start_long_running(now) > 0
        return found

    def next_wakeup(self, now: datetime) -> datetime:
        """The next due instant, pending retry or heartbeat, and at most POLL_INTERVAL away."""
        candidates = [now + POLL_INTERVAL]
        if self.next_due:
            candidates.append(min(self.next_due.values()))
        if self._next_ready is not None and self._next_ready > now:
            candidates.append(self._next_ready)
        return max(min(candidates), now)

    # Threads.

    def start_workers(self) -> None:
        for number in range(self.concurrency):
            thread = threading.Thread(target=self._worker, name=f"job-worker-{number}", daemon=True)
            thread.start()
            self._threads.append(thread)

    def sleep_until(self, instant: datetime) -> None:
        """Sleep until instant, or until stop() is called."""
        seconds = (instant - self.clock()).total_seconds()
        if seconds > 0:
            self._wake.wait(seconds)

    def sleep(self, seconds: float) -> None:
        self._wake.wait(seconds)

    @property
    def stopping(self) -> bool:
        return self._stopping.is_set()

    def stop(self) -> None:
        """Stop claiming; running jobs go on. Safe to call from a signal handler."""
        self._stopping.set()
        self._wake.set()

    def shutdown(self, timeout: float) -> int:
        """Wait up to timeout seconds for running jobs; return how many were still running."""
        self.stop()
        with self._work:
            self._work.notify_all()
        deadline = self.clock() + timedelta(seconds=timeout)
        for thread in self._threads:
            thread.join(max(0.0, (deadline - self.clock()).total_seconds()))
        still_running = sum(thread.is_alive() for thread in self._threads)
        if still_running:
            logger.warning(
                "%d jobs still running after %s s; their leases will expire and they will be retried",
                still_running,
                timeout,
                extra={"action": "shutdown_timeout", "running": still_running},
            )
        try:
            SchedulerInstance.objects.filter(session=self.session).update(stopped_at=self.clock())
        except DatabaseError:
            pass  # the row then simply stops being renewed
        logger.info("scheduler %s stopped", self.instance_id, extra={"action": "scheduler_stopped"})
        return still_running

    def _run(self, occurrence: Occurrence, claim_following=lambda: None) -> Occurrence | None:
        with self._in_flight_lock:
            self._in_flight.add(occurrence.id)
        try:
            return run_occurrence(
                occurrence,
                self.definitions.get(occurrence.task_id),
                session=self.session,
                clock=self.clock,
                claim_following=claim_following,
            )
        finally:
            with self._in_flight_lock:
                self._in_flight.discard(occurrence.id)

    def _notify_workers(self) -> None:
        with self._work:
            self._generation += 1
            self._work.notify_all()

    def _worker(self) -> None:
        """Claim and run until nothing is ready, then wait for the main thread to signal more."""
        seen, backoff = -1, Backoff()
        while not self._stopping.is_set():
            with self._work:
                while self._generation == seen and not self._stopping.is_set():
                    self._work.wait()
                seen = self._generation
            try:
                close_old_connections()
                self.run_ready()
                backoff.reset()
            except DatabaseError as exc:
                delay = backoff.next()
                log_database_error(exc, delay, where="worker")
                connection.close()
                seen = -1
                self._stopping.wait(delay)
            except Exception:  # a bug, not a job's failure (those are recorded): keep the worker
                logger.exception("worker pass failed", extra={"action": "worker_error"})
                seen = -1
                self._stopping.wait(backoff.next())
        connection.close()

    def _start_long_running(self, now: datetime) -> int:
        claimed = Occurrence.claim_next(
            now=now,
            session=self.session,
            instance=self.instance_id,
            lease=self.lease,
            long_running=True,
            limit=16,
        )
        for occurrence in claimed:
            thread = threading.Thread(
                target=self._run_long, args=(occurrence,), name=f"long-running-{occurrence.id}", daemon=True
            )
            self._threads = [t for t in self._threads if t.is_alive()] + [thread]
            thread.start()
        return len(claimed)

    def _run_long(self, occurrence: Occurrence) -> None:
        try:
            self._run(occurrence)
        except DatabaseError as exc:
            log_database_error(exc, None, where="long-running")
        finally:
            connection.close()


def log_database_error(exc: Exception, delay: float | None, *, where: str) -> None:
    """One line per failure: the database is unreachable (or the statement failed)."""
    first_line = (str(exc).strip().splitlines() or [type(exc).__name__])[0]
    unavailable = isinstance(exc, (OperationalError, InterfaceError))
    logger.error(
        "%s in the %s thread: %s%s",
        "database unavailable" if unavailable else f"database error ({type(exc).__name__})",
        where,
        first_line,
        f"; retrying in {delay:.0f} s" if delay is not None else "",
        extra={"action": "database_unavailable" if unavailable else "database_error", "retry_in": delay},
    )
