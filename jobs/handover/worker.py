"""The worker's side of the hand-over: the Celery task that runs one occurrence a scheduler handed over.

jobs.run_occurrence is registered by name in `celery -A bookworm_scheduler worker` processes;
schedulers publish it (jobs.handover.executor.CeleryExecutor) and never import this module. The
message is acknowledged after the run (acks_late) and put back if the worker process dies
(reject_on_worker_lost); either way the occurrence row decides whether it runs
(jobs.engine.store.take_over). The job runs through jobs.engine.runner.Runner, its lease renewed
meanwhile (LeaseKeeper), its timeout Celery's soft time limit (SoftTimeLimit). A cancel asked
while it runs is noticed at a renewal: the keeper records it and terminates the task (CancelStop).
"""

import copy
import logging
import os
import signal
import socket
import threading
import uuid
from datetime import timedelta

from billiard.common import terminate_handler_fired
from celery import shared_task
from django.conf import settings
from django.db import DatabaseError, connection, transaction

from bookworm_scheduler.kernel.clock import DatabaseClock, database_now
from bookworm_scheduler.kernel.liveness import Liveness
from jobs.engine import observer, store
from jobs.engine.runner import Runner
from jobs.engine.store import LeaseLost
from jobs.engine.timeouts import JobTimeout, Watchdog
from jobs.handover.executor import celery_app, revoke
from jobs.models import Occurrence

logger = logging.getLogger(__name__)


@shared_task(name="jobs.run_occurrence", acks_late=True, reject_on_worker_lost=True, ignore_result=True)
def run_occurrence(occurrence_id: int, session: str, attempt: int) -> str:
    """Take the claim (occurrence_id, session, attempt) over and run it; what happened, in a word."""
    lease = timedelta(seconds=settings.SCHEDULER_LEASE_SECONDS)
    own_session, worker = worker_identity()
    clock = DatabaseClock(max_age=1.0)
    occurrence = store.take_over(
        occurrence_id,
        handed_by=uuid.UUID(session),
        attempt=attempt,
        session=own_session,
        worker=worker,
        lease=lease,
        now=clock(),
    )
    if occurrence is None:
        logger.info(
            "occurrence %s attempt %d is no longer the claim handed over: not run again",
            occurrence_id,
            attempt,
            extra={"action": "duplicate_delivery", "occurrence": occurrence_id, "attempt": attempt, "instance": worker},
        )
        return "duplicate"
    # Celery's soft time limit signals this process; SoftTimeLimit turns it into the job's timeout.
    # (Time limits need the prefork pool, whose tasks run in each process's main thread.)
    main_thread = threading.current_thread() is threading.main_thread()
    soft_limit_handler = signal.getsignal(signal.SIGUSR1) if main_thread else None
    try:
        terminated = run_claimed(
            occurrence, own_session, clock, lease, watchdog=SoftTimeLimit, task_id=run_occurrence.request.id
        )
    finally:
        if main_thread:
            signal.signal(signal.SIGUSR1, soft_limit_handler)
    if terminated and terminate_handler_fired():
        # Its cancel revoked this task with terminate, and the prefork pool's SIGTERM handler raised
        # SystemExit in the job (the runner recorded the cancel, as for any failure after a cancel).
        # The process goes, as the handler meant: the pool starts another and Celery acknowledges
        # the task as revoked. (A SIGTERM still on its way stops the process as it waits for a task.)
        raise SystemExit("terminated: its run was cancelled")
    return "ran"


def run_claimed(
    occurrence: Occurrence, session, clock, lease: timedelta, *, watchdog=Watchdog, task_id: str | None = None
) -> bool:
    """Run a claim of this worker's session, its lease renewed meanwhile; whether its cancel terminated the task.

    task_id: the Celery task running it, revoked with terminate if the run's cancel is asked (CancelStop).

    watchdog stops the job at its timeout: Celery's soft time limit for a hand-over, the
    runner's timer for a beat message (beat sets no time limit). A fault of ours around the run
    (the lease keeper's thread) is given back at once, as the runner gives back one inside it:
    the attempt is recorded failed and retried per policy, rather than left running until its
    lease expires.
    """
    runner = Runner(session=session, clock=clock, watchdog=watchdog)
    stop = CancelStop(occurrence, session, task_id)
    try:
        with LeaseKeeper(occurrence.id, session=session, lease=lease, on_cancel=stop):
            runner.run(occurrence, None)
    except Exception as exc:
        runner.give_back(occurrence, None, exc)  # raises it again if the claim is no longer this attempt's
    return stop.terminated


_worker_identity: tuple[int, uuid.UUID, str] | None = None


def worker_identity() -> tuple[uuid.UUID, str]:
    """This worker process's session and name (a new one after a fork: each pool process is its own)."""
    global _worker_identity
    pid = os.getpid()
    if _worker_identity is None or _worker_identity[0] != pid:
        _worker_identity = (pid, uuid.uuid4(), f"celery@{socket.gethostname()}/{pid}")
    return _worker_identity[1], _worker_identity[2]


class CancelStop:
    """What a worker does when its run's cancel was asked: record the cancel, then terminate the task.

    The cancel is recorded first, on the keeper's connection: the job's own record is then refused
    (its claim is gone) and its transaction rolls back, even if it returns before the terminate
    (Celery's revoke, SIGTERM to the pool process running task_id) reaches it. Without a task_id
    the job runs on until it checks JobContext.cancelled or returns.
    """

    def __init__(self, occurrence: Occurrence, session, task_id: str | None):
        # A copy: the record sets the instance's fields, and the job's thread uses its own.
        self.occurrence, self.session, self.task_id = copy.copy(occurrence), session, task_id
        self.terminated = False  # the revoke with terminate was sent

    def __call__(self) -> None:
        try:
            with transaction.atomic():
                now = database_now()
                store.record_cancel(
                    self.occurrence, session=self.session, started_at=self.occurrence.started_at, now=now
                )
        except LeaseLost:
            return  # it ended meanwhile
        observer.event(self.occurrence, "occurrence_skipped", reason=self.occurrence.reason, status="skipped")
        if self.task_id:
            revoke(celery_app, self.task_id)
            self.terminated = True


class LeaseKeeper:
    """Renews one occurrence's lease from a thread while its job runs, as a scheduler does (liveness).

    At each renewal it also reads whether the run's cancel was asked; if so, it calls on_cancel once.
    """

    def __init__(self, occurrence_id: int, *, session, lease: timedelta, on_cancel=None):
        self.occurrence_id, self.session, self.lease = occurrence_id, session, lease
        self.on_cancel = on_cancel
        self._stop = threading.Event()
        self._thread = threading.Thread(target=self._run, name=f"lease-{occurrence_id}", daemon=True)

    def __enter__(self):
        self._thread.start()
        return self

    def __exit__(self, *exc):
        self._stop.set()
        self._thread.join(timeout=10)
        return False

    def _run(self) -> None:
        try:
            while not self._stop.wait(Liveness.of_lease(self.lease).renew_every.total_seconds()):
                try:
                    store.renew_leases([self.occurrence_id], session=self.session, now=database_now(), lease=self.lease)
                    if self.on_cancel is not None and store.cancel_requested(self.occurrence_id):
                        self.on_cancel()
                        self.on_cancel = None  # once; after a DatabaseError, again at the next beat
                except DatabaseError:
                    connection.close()  # tried again at the next beat; the lease has two more
        finally:
            connection.close()


class SoftTimeLimit:
    """The job's timeout in a Celery worker process: Celery's soft time limit, as JobTimeout.

    The pool signals the process (SIGUSR1) when the soft limit passes; while the job runs that
    raises JobTimeout (not an Exception: the job's `except Exception:` cannot swallow it, as
    Celery's SoftTimeLimitExceeded could be). A job stuck in a C call that ignores the signal is
    killed at the hard limit. Outside the job the signal is ignored (the recording is not cut).
    """

    def __init__(self, seconds: int | None):
        self.seconds = seconds
        self._previous = None

    def __enter__(self):
        if self.seconds and threading.current_thread() is threading.main_thread():
            self._previous = signal.signal(signal.SIGUSR1, self._fire)
        return self

    @staticmethod
    def _fire(signum, frame):
        raise JobTimeout()

    def __exit__(self, *exc):
        if self._previous is not None:
            signal.signal(signal.SIGUSR1, signal.SIG_IGN)
        return False
