"""The Celery task of the celery executor: run one occurrence a scheduler handed over.

Registered by name (jobs.run_occurrence) in `celery -A bookworm_scheduler worker` processes;
schedulers publish it (jobs.executors.CeleryExecutor) and never import this module. The message
is acknowledged after the run (acks_late) and put back if the worker process dies
(reject_on_worker_lost); either way the occurrence row decides whether it runs (take_over).
"""

import logging
import signal
import threading
import uuid
from datetime import timedelta

from celery import shared_task
from django.conf import settings

from bookworm_scheduler.clock import DatabaseClock

from .executors import LeaseKeeper, SoftTimeLimit, take_over, worker_identity
from .runner import Runner

logger = logging.getLogger(__name__)


@shared_task(name="jobs.run_occurrence", acks_late=True, reject_on_worker_lost=True, ignore_result=True)
def run_occurrence(occurrence_id: int, session: str, attempt: int) -> str:
    """Take the claim (occurrence_id, session, attempt) over and run it; what happened, in a word."""
    lease = timedelta(seconds=settings.SCHEDULER_LEASE_SECONDS)
    own_session, worker = worker_identity()
    clock = DatabaseClock(max_age=1.0)
    occurrence = take_over(
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
        with LeaseKeeper(occurrence.id, session=own_session, lease=lease):
            Runner(session=own_session, clock=clock, watchdog=SoftTimeLimit).run(occurrence, None)
    finally:
        if main_thread:
            signal.signal(signal.SIGUSR1, soft_limit_handler)
    return "ran"
