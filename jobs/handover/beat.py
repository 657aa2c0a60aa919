"""Stock celery beat's messages: each registered job is also a Celery task of its own name.

Stock celery beat (`celery beat -S django_celery_beat.schedulers:DatabaseScheduler`) sends, for
each due PeriodicTask row, a message naming the row's `task` (a registered @job) with the row's
name in the periodic_task_name header. Each job is registered below as a Celery task of its own
name, which turns such a message into a manual occurrence of that definition, claimed by this
worker in the same insert, and runs it as a hand-over is run (jobs.handover.worker): history,
attempts, the outbox write in the run's transaction. A pending retry (the job's policy) comes
back as a Celery retry of the same task carrying the occurrence id (BEAT_OCCURRENCE). The
definition's planning cursor moves to the run, so that a runscheduler started in beat's place
plans from there (jobs.engine.planning.hand_over_through).
"""

import logging
from datetime import timedelta

from celery import shared_task
from django.conf import settings
from django.db import transaction
from django_celery_beat.models import PeriodicTask

from bookworm_scheduler.kernel.clock import DatabaseClock
from jobs.engine import store
from jobs.engine.definitions import follow_ups_of, policy_of
from jobs.engine.leases import Leases
from jobs.engine.planning import hand_over_through
from jobs.engine.registry import registered_jobs
from jobs.handover.worker import run_claimed, run_occurrence, worker_identity
from jobs.models import Occurrence

logger = logging.getLogger(__name__)

BEAT_OCCURRENCE = "bookworm_occurrence"  # the keyword of a retry's message: the occurrence to resume
BEAT_TRIGGERED_BY = "celery beat (message {id})"  # an occurrence's triggered_by: the message that made it


def run_beat_message(task, *args, **kwargs) -> str:
    """The body of every job's Celery task: one beat message, one occurrence; what happened, in a word.

    The message's own args and kwargs are not used: the job reads the definition's kwargs, as
    when a scheduler runs it.
    """
    lease = timedelta(seconds=settings.SCHEDULER_LEASE_SECONDS)
    own_session, worker = worker_identity()
    clock = DatabaseClock(max_age=1.0)
    occurrence_id = kwargs.get(BEAT_OCCURRENCE)
    if occurrence_id is None:
        definition = beat_definition(task.name, getattr(task.request, "periodic_task_name", None))
        if definition is None:
            return "unmatched"
        marker = BEAT_TRIGGERED_BY.format(id=task.request.id)
        redelivered = (task.request.delivery_info or {}).get("redelivered")
        existing = None
        if redelivered:  # its first worker may have died after making the occurrence: resume that one
            existing = Occurrence.objects.filter(task=definition, manual=True, triggered_by=marker).first()
        if existing is not None:
            occurrence_id = existing.id
        else:
            now = clock()
            with transaction.atomic():
                occurrence = store.trigger_claimed(
                    definition,
                    priority=policy_of(definition).priority,
                    by=marker,
                    session=own_session,
                    scheduler=worker,
                    lease=lease,
                    now=now,
                    then=list(follow_ups_of(definition)) or None,
                )
                hand_over_through(definition.id, now)
            logger.info(
                "celery beat sent %s: occurrence %s",
                definition.name,
                occurrence.id,
                extra={"action": "beat_occurrence_created", "occurrence": occurrence.id, "job_name": definition.name},
            )
            run_claimed(occurrence, own_session, clock, lease, task_id=task.request.id)
            return _follow_up(task, occurrence.id, clock, lease)
    now = clock()
    occurrence = store.claim_one(occurrence_id, now=now, session=own_session, scheduler=worker, lease=lease)
    if occurrence is not None:
        run_claimed(occurrence, own_session, clock, lease, task_id=task.request.id)
        return _follow_up(task, occurrence.id, clock, lease)
    expired = Occurrence.objects.filter(
        id=occurrence_id, status=Occurrence.Status.RUNNING, lease_expires_at__lt=now
    ).exists()
    if expired:  # its worker died, and no scheduler may be running to reap it
        Leases(session=own_session, scheduler=worker, lease=lease).reap(now, {})
    return _follow_up(task, occurrence_id, clock, lease)


def beat_definition(job_name: str, periodic_task_name: str | None) -> PeriodicTask | None:
    """The definition a beat message is for: the row its header names, else the only row of that job."""
    rows = PeriodicTask.objects.filter(task=job_name)
    if periodic_task_name is not None:
        rows = rows.filter(name=periodic_task_name)
    found = list(rows[:2])
    if len(found) == 1:
        return found[0]
    logger.error(
        "a message for job %s matches %s definitions (periodic_task_name %r): not run",
        job_name,
        len(found) if found else "no",
        periodic_task_name,
        extra={"action": "beat_message_unmatched", "job_name": job_name, "definition": periodic_task_name},
    )
    return None


def _follow_up(task, occurrence_id: int, clock, lease: timedelta) -> str:
    """Until the occurrence has finished, the task comes back (a Celery retry); then its status.

    A pending retry comes back at its time; one that another process runs (a worker that may
    have died, or a scheduler on the same rows) when that one's lease is due.
    """
    row = Occurrence.objects.filter(id=occurrence_id).values("status", "run_after").first()
    if row is None:
        return "deleted"
    if row["status"] == Occurrence.Status.SCHEDULED:
        countdown = max((row["run_after"] - clock()).total_seconds(), 0.0)
    elif row["status"] == Occurrence.Status.RUNNING:
        countdown = lease.total_seconds()
    else:
        return row["status"]
    raise task.retry(kwargs={BEAT_OCCURRENCE: occurrence_id}, countdown=countdown, max_retries=None)


def register_job_tasks() -> list[str]:
    """A Celery task per registered job, named as the job, for the messages of stock celery beat."""
    names = []
    for spec in registered_jobs():
        if spec.name == run_occurrence.name:
            continue
        shared_task(name=spec.name, bind=True, acks_late=True, reject_on_worker_lost=True, ignore_result=True)(
            run_beat_message
        )
        names.append(spec.name)
    return names


register_job_tasks()
