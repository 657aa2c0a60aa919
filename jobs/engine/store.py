"""The occurrence store: every change of an occurrence's state, each one named operation.

An occurrence is made scheduled (planning, trigger; a one-off run: jobs.engine.oneoff_store.insert),
claimed (claim_ready, claim_one, or for a group lock_ready then claim_locked), taken over by a Celery
worker (take_over), kept alive (renew_leases), and ended once: record_attempt or record_group
(succeeded, failed, or back to scheduled for a retry), release (back to scheduled, the attempt not
counted), miss, expire, skip or cancel; reaping records an expired claim's attempt (expired_leases,
then record_attempt); prune (jobs.engine.retention) deletes finished ones. A running occurrence's
cancel is a request, after which its attempt ends only as record_cancel. The scheduler's loop, the
runner and its groups, the reaper, the Celery worker, the admin's actions and the API call these;
models.Occurrence is the schema.

A final status (an end above but release and a retry) creates the follow-ups of a one-off run that
it meets (its `then`), in the same transaction (_ended, jobs.engine.oneoff_store.follow_ups): they
exist if and only if that end committed.

Every change of a running occurrence is guarded by one rule, `_claimed`: still running, by
this session, at this attempt. A write that finds the claim gone (reaped, or taken over) raises
LeaseLost, so the caller's transaction, the job's own work with it, rolls back. The rows a
group locked are its claim (no session is written until its record), so record_group guards
on what the lock left: scheduled, the attempt not counted yet.

On PostgreSQL the hot operations are single statements (jobs.engine.sql); elsewhere (SQLite,
the embedded default) the same changes go through the ORM, in this module alone.
"""

import enum
import json
from datetime import datetime, timedelta

from django.db import connections, router, transaction
from django.db.models import F, Q, Value
from django.db.models.functions import Concat
from django_celery_beat.models import PeriodicTask

from bookworm_scheduler.kernel.clock import default_clock
from bookworm_scheduler.kernel.db import insert_row, prepared_cursor
from bookworm_scheduler.kernel.dialect import notify, postgresql
from jobs.engine import oneoff_store, sql
from jobs.engine.retention import prune  # noqa: F401  (the store's deletion, kept in its own module)
from jobs.models import Alert, Attempt, Occurrence

Status = Occurrence.Status


class LeaseLost(Exception):
    """The occurrence is no longer claimed by this session: its lease expired and was reaped."""


class CancelRequested(Exception):
    """The occurrence's cancel was asked: its attempt ends as record_cancel, never as a success or a retry."""


class CancelOutcome(enum.StrEnum):
    """What cancel did. NOTHING is "" (falsy): the occurrence had finished, or its cancel was asked already."""

    CANCELLED = "cancelled"  # it was scheduled: it will not run
    REQUESTED = "requested"  # it is running: its runner stops it
    NOTHING = ""


# The channel schedulers LISTEN on to wake up: migrations 0003 and 0009 notify it when occurrences
# are inserted or scheduled again and when a definition is written, take_over when a scheduler's
# hand-over room frees, a group when it leaves rows it locked (announce_ready).
NOTIFY_CHANNEL = "jobs_occurrence"
# Its payload when a definition, schedule or policy was written (migration 0009); the others
# ('', 'scheduled': READY_AGAIN) say that occurrences may be ready to claim.
DEFINITIONS_CHANGED = "definitions"
READY_AGAIN = "scheduled"


def _claimed(occurrence_id: int, session, attempt: int) -> Q:
    """The guard of every change of a running occurrence (sql.record_attempt says it in SQL)."""
    return Q(pk=occurrence_id, status=Status.RUNNING, session=session, attempts=attempt)


def _lost(occurrence: Occurrence, session) -> LeaseLost:
    return LeaseLost(
        f"occurrence {occurrence.pk} attempt {occurrence.attempts} is no longer claimed by session {session}"
    )


# Made scheduled.


def trigger(task: PeriodicTask, *, priority: int, by: str = "", now: datetime | None = None, **fields) -> Occurrence:
    """A manual run of task, due now by the database's clock; an idle scheduler claims it at once."""
    now = now or default_clock()
    return Occurrence.objects.create(
        task=task,
        job_name=task.name,
        scheduled_for=now,
        run_after=now,
        manual=True,
        triggered_by=by[:150],
        priority=priority,
        **fields,
    )


def trigger_claimed(
    task: PeriodicTask, *, priority: int, by: str, session, scheduler: str, lease: timedelta, now: datetime, then=None
) -> Occurrence:
    """A manual run of task, due now and claimed by session in the same insert (its first attempt).

    For a process that runs it at once itself (a Celery worker fed by stock celery beat): no
    scheduler can claim it between the insert and the run.
    """
    return trigger(
        task,
        priority=priority,
        by=by,
        now=now,
        then=then,
        status=Status.RUNNING,
        attempts=1,
        scheduler=scheduler,
        session=session,
        lease_expires_at=now + lease,
        started_at=now,
    )


# Claimed.


def next_ready_at() -> datetime | None:
    """The earliest run_after of a scheduled occurrence (index occ_scheduled_run_after)."""
    return (
        Occurrence.objects.filter(status=Status.SCHEDULED)
        .order_by("run_after")
        .values_list("run_after", flat=True)
        .first()
    )


def claim_ready(*, now, session, scheduler: str, lease: timedelta, long_running: bool, limit: int = 1):
    """Claim up to `limit` ready occurrences, highest priority and oldest first (sql.claim)."""
    using = router.db_for_write(Occurrence)
    connection = connections[using]
    statement, names, convert = sql.claim(using, long_running)

    def value(field, v):
        return Occurrence._meta.get_field(field).get_db_prep_value(v, connection)

    params = [
        Status.RUNNING,
        scheduler,
        value("session", session),
        value("lease_expires_at", now + lease),
        value("started_at", now),
        value("run_after", now),
        limit,
    ]
    # One statement in autocommit mode: atomic on its own, one round trip.
    return _fetch(using, statement, params, names, convert)


def claim_one(occurrence_id: int, *, now, session, scheduler: str, lease: timedelta) -> Occurrence | None:
    """Compare-and-set one ready occurrence to running for session; None if not ready."""
    updated = Occurrence.objects.filter(id=occurrence_id, status=Status.SCHEDULED, run_after__lte=now).update(
        status=Status.RUNNING,
        attempts=F("attempts") + 1,
        scheduler=scheduler,
        session=session,
        lease_expires_at=now + lease,
        started_at=now,
    )
    return Occurrence.objects.get(id=occurrence_id) if updated else None


def lock_ready(*, now, limit: int, besides=()) -> list[Occurrence]:
    """Lock up to `limit` ready ordinary occurrences for the current transaction, unchanged (sql.lock_ready).

    Call inside transaction.atomic(): they stay locked (a group's claim, see
    jobs.engine.groups) until it ends. besides: the ids this transaction locked already.
    """
    using = router.db_for_write(Occurrence)
    statement, names, convert = sql.lock_ready(using)
    value = Occurrence._meta.get_field("run_after").get_db_prep_value(now, connections[using])
    params = [value, list(besides), limit]
    return _fetch(using, statement, params, names, convert)


def announce_ready() -> None:
    """At the commit of the current transaction (a group's that leaves rows it locked), wake the schedulers:
    they skipped those rows while locked, and a ready time in the past is no wake-up time."""
    notify(NOTIFY_CHANNEL, READY_AGAIN)


def claim_locked(occurrence: Occurrence, *, session, scheduler: str, now) -> None:
    """Claim an occurrence lock_ready locked, in memory only: record_group writes it with the outcome."""
    occurrence.status, occurrence.attempts, occurrence.started_at = Status.RUNNING, occurrence.attempts + 1, now
    occurrence.scheduler, occurrence.session = scheduler, session


def _fetch(using: str, statement: str, params, names, convert) -> list[Occurrence]:
    with prepared_cursor(using) as cursor:
        cursor.execute(statement, params)
        rows = cursor.fetchall()
    if convert:
        rows = convert(rows)
    claimed = [Occurrence.from_db(using, names, row) for row in rows]
    return sorted(claimed, key=lambda o: (-o.priority, o.run_after, o.id))


def take_over(occurrence_id: int, *, handed_by, attempt: int, session, worker: str, lease: timedelta, now: datetime):
    """Move the claim from the scheduler that handed it over to this worker.

    A compare-and-set on the claim (handed_by, attempt) with a fresh lease; None when the
    occurrence is no longer that claim (taken already, released or reaped): a duplicate.
    The schedulers are then woken (NOTIFY_CHANNEL): the one that handed it over has room for
    another hand-over (CeleryExecutor.free) and uses it at once rather than at its next poll.
    """
    updated = Occurrence.objects.filter(_claimed(occurrence_id, handed_by, attempt)).update(
        session=session, scheduler=worker, lease_expires_at=now + lease, started_at=now
    )
    if not updated:
        return None
    notify(NOTIFY_CHANNEL)
    return Occurrence.objects.get(id=occurrence_id)


def renew_leases(ids, *, session, now, lease: timedelta) -> int:
    """Extend the leases of this session's running occurrences."""
    if not ids:
        return 0
    return Occurrence.objects.filter(id__in=ids, status=Status.RUNNING, session=session).update(
        lease_expires_at=now + lease
    )


def expired_leases(now, limit: int = 100) -> list[Occurrence]:
    """Running occurrences whose claimer stopped renewing; call inside a transaction.

    Rows locked by a live transaction are skipped. Uses the partial index occ_running_lease.
    """
    return list(
        Occurrence.objects.select_for_update(skip_locked=True).filter(status=Status.RUNNING, lease_expires_at__lt=now)[
            :limit
        ]
    )


def still_claimed(occurrence: Occurrence, session) -> bool:
    """Whether the occurrence is still this session's claim, at this attempt."""
    return Occurrence.objects.filter(_claimed(occurrence.pk, session, occurrence.attempts)).exists()


def attempt_recorded(occurrence: Occurrence, started_at: datetime | None = None) -> bool:
    """Whether the current attempt's record committed (after a lost connection, say).

    started_at: the attempt's start, when a record of this number may be an earlier run's (a
    group's claim, which counts the attempt only in its record).
    """
    attempts = Attempt.objects.filter(occurrence_id=occurrence.pk, number=occurrence.attempts)
    if started_at is not None:
        attempts = attempts.filter(started_at=started_at)
    return attempts.exists()


# Ended.


def record_attempt(
    occurrence: Occurrence,
    *,
    session,
    started_at,
    now,
    error: str = "",
    traceback: str = "",
    retry_at=None,
    result=None,
) -> None:
    """Record how the occurrence's current attempt ended: success when error is empty (result: what the
    job returned, JSON-serializable, kept on the occurrence), else failure.

    A failure with retry_at goes back to scheduled for that instant (the pending retry is a
    row, so it survives restarts); without it, the occurrence has failed, and its alert (if
    any channel is configured) is written in the same transaction. Raises LeaseLost if the
    claim is no longer session's (reaped meanwhile), CancelRequested if its cancel was asked
    (record_cancel is then its end), so the caller's transaction (the job's own work included)
    rolls back.
    """
    fields, attempt_status, started_at = _outcome(
        occurrence, started_at=started_at, now=now, error=error, retry_at=retry_at, result=result
    )
    using = router.db_for_write(Occurrence)
    if not postgresql(using):
        _transition(occurrence, session=session, cancellable=True, **fields)
        _alert_if_failed(occurrence, now, using)
        attempt = Attempt(
            occurrence=occurrence,
            number=occurrence.attempts,
            status=attempt_status,
            scheduler=occurrence.scheduler,
            started_at=started_at,
            finished_at=now,
            duration=now - started_at,
            error=error,
            traceback=traceback,
        )
        insert_row(attempt, using)
        return
    with prepared_cursor(using) as cursor:
        cursor.execute(
            sql.record_attempt(using),
            {
                "id": occurrence.pk,
                "session": session,
                "status": fields["status"],
                "run_after": fields.get("run_after"),
                "finished_at": fields.get("finished_at"),
                "reason": fields["reason"],
                "result": _json(fields.get("result")),
                "number": occurrence.attempts,
                "attempt_status": attempt_status,
                "scheduler": occurrence.scheduler,
                "started_at": started_at,
                "now": now,
                "duration": now - started_at,
                "error": error,
                "traceback": traceback,
            },
        )
        row = cursor.fetchone()
    if row is None:
        raise _refused(occurrence, session)
    _ended(occurrence, fields)
    _alert_if_failed(occurrence, now, using)


def record_group(outcomes, *, session, scheduler: str) -> None:
    """Record the attempts of a group's runs in one statement (sql.record_group), alerts included.

    outcomes: (occurrence, started_at, now, error, traceback, retry_at[, result]) per run, each
    occurrence claimed (claim_locked) from the rows this transaction locked with lock_ready.
    Raises LeaseLost, and so rolls the whole group back, if a row was not where the lock left it.
    """
    using = router.db_for_write(Occurrence)
    columns: list[list] = [[] for _ in range(12)]
    finished = []
    for occurrence, started_at, now, error, traceback, retry_at, *result in outcomes:
        fields, attempt_status, started_at = _outcome(
            occurrence, started_at=started_at, now=now, error=error, retry_at=retry_at, result=next(iter(result), None)
        )
        row = (
            occurrence.pk,
            occurrence.attempts,
            fields["status"],
            fields.get("run_after"),
            fields.get("finished_at"),
            fields["reason"],
            attempt_status,
            started_at,
            now,
            error,
            traceback,
            _json(fields.get("result")),
        )
        for column, value in zip(columns, row, strict=True):
            column.append(value)
        finished.append((occurrence, fields, now))
    with prepared_cursor(using) as cursor:
        cursor.execute(sql.record_group(using), [*columns, scheduler, session])
        recorded = len(cursor.fetchall())
    if recorded != len(finished):
        raise LeaseLost(f"{len(finished) - recorded} of the group's {len(finished)} locked occurrences moved")
    for occurrence, fields, now in finished:
        _ended(occurrence, fields)
        _alert_if_failed(occurrence, now, using)


def release(occurrence: Occurrence, *, session, reason: str) -> None:
    """Back to scheduled without counting the attempt: the run did not commit, through no fault of its job."""
    _transition(occurrence, session=session, status=Status.SCHEDULED, attempts=occurrence.attempts - 1, reason=reason)


def miss(occurrence: Occurrence, *, session, now, reason: str) -> None:
    """Finish as missed without running (its misfire policy: it could not start in time); no attempt is counted."""
    _finish_unrun(occurrence, Status.MISSED, session=session, now=now, reason=reason)


def expire(occurrence: Occurrence, *, session, now, reason: str) -> None:
    """Finish a one-off run claimed after its expires_at as expired, never run late; no attempt is counted."""
    _finish_unrun(occurrence, Status.EXPIRED, session=session, now=now, reason=reason)


def skip(occurrence: Occurrence, *, session, now, reason: str) -> None:
    """Finish without running (definition disabled, deleted or expired); no attempt is counted."""
    _finish_unrun(occurrence, Status.SKIPPED, session=session, now=now, reason=reason)


def _finish_unrun(occurrence: Occurrence, status: str, *, session, now, reason: str) -> None:
    fields = dict(status=status, finished_at=now, reason=reason, attempts=occurrence.attempts - 1)
    _transition(occurrence, session=session, **fields)


def cancel(occurrence: Occurrence, *, by: str, now) -> CancelOutcome:
    """The console's cancel: a scheduled occurrence is skipped ("cancelled by <by>"); a running one is asked to stop.

    The request (who, when) is recorded once; the claim's holder then ends it (record_cancel): a
    job that checks (JobContext.cancelled) stops, one that does not is stopped at its return to the
    runner, a Celery hand-over is revoked. A row a group locked waits for the group's commit here. A
    scheduled one's follow-ups (when="cancelled" or "finished") are created with its cancel.
    """
    scheduled = Occurrence.objects.filter(pk=occurrence.pk, status=Status.SCHEDULED)
    with transaction.atomic():  # its follow-ups with it
        if scheduled.update(status=Status.SKIPPED, finished_at=now, reason=f"cancelled by {by}"):
            _ended(
                occurrence, Occurrence.objects.values("status", "finished_at", "reason", "then").get(pk=occurrence.pk)
            )
            return CancelOutcome.CANCELLED
    running = Occurrence.objects.filter(pk=occurrence.pk, status=Status.RUNNING, cancel_requested_at=None)
    if running.update(cancel_requested_at=now, cancel_requested_by=by[:150]):
        return CancelOutcome.REQUESTED
    return CancelOutcome.NOTHING


def cancel_requested(occurrence_id: int) -> bool:
    """Whether the occurrence's cancel was asked (a job's check, JobContext.cancelled): one read by key."""
    return Occurrence.objects.filter(pk=occurrence_id).exclude(cancel_requested_at=None).exists()


def record_cancel(occurrence: Occurrence, *, session, started_at, now) -> None:
    """End a claim whose cancel was asked: skipped, "cancelled by <who> while running", never retried; its
    attempt failed with that reason. A compare-and-set on the claim and its request; LeaseLost if gone."""
    claim = Occurrence.objects.filter(_claimed(occurrence.pk, session, occurrence.attempts))
    reason = Concat(Value("cancelled by "), F("cancel_requested_by"), Value(" while running"))
    if claim.exclude(cancel_requested_at=None).update(
        status=Status.SKIPPED, finished_at=now, reason=reason, lease_expires_at=None
    ):
        fields = Occurrence.objects.values("status", "finished_at", "reason", "scheduler", "then").get(pk=occurrence.pk)
        started_at = min(started_at or now, now)
        Attempt.objects.create(
            occurrence=occurrence,
            number=occurrence.attempts,
            status=Attempt.Status.FAILED,
            scheduler=fields["scheduler"],
            started_at=started_at,
            finished_at=now,
            duration=now - started_at,
            error=fields["reason"],
        )
        return _ended(occurrence, fields)
    raise _lost(occurrence, session)


def _transition(occurrence: Occurrence, *, session, cancellable: bool = False, **fields) -> None:
    """Compare-and-set from the claim (running, session, this attempt) to `fields`; LeaseLost if it is gone
    (cancellable, record_attempt's: CancelRequested, not the change, once the claim's cancel was asked)."""
    claim = Occurrence.objects.filter(_claimed(occurrence.pk, session, occurrence.attempts))
    if cancellable:
        claim = claim.filter(cancel_requested_at=None)
    if claim.update(lease_expires_at=None, **fields) != 1:
        raise _refused(occurrence, session) if cancellable else _lost(occurrence, session)
    _ended(occurrence, fields)


def _refused(occurrence: Occurrence, session) -> Exception:
    """Why a guarded record found nothing to change: the claim's cancel was asked (or recorded), or it is gone."""
    claim = Occurrence.objects.filter(pk=occurrence.pk, session=session, attempts=occurrence.attempts)
    if claim.filter(status__in=[Status.RUNNING, Status.SKIPPED]).exclude(cancel_requested_at=None).exists():
        return CancelRequested(f"occurrence {occurrence.pk}'s cancel was requested while it ran")
    return _lost(occurrence, session)


def _ended(occurrence: Occurrence, fields: dict) -> None:
    """The instance as the row now is: the fields written, the lease gone; a final status creates the
    follow-ups it meets, in the same transaction (oneoff_store.follow_ups)."""
    for name, value in fields.items():
        setattr(occurrence, name, value)
    occurrence.lease_expires_at = None
    if occurrence.then and occurrence.status in Occurrence.FINISHED:
        oneoff_store.follow_ups(occurrence)


def _outcome(occurrence: Occurrence, *, started_at, now, error: str, retry_at, result) -> tuple[dict, str, datetime]:
    """The fields an ended attempt sets on the occurrence, the attempt's status and its start (at most now)."""
    if not error:
        fields = dict(status=Status.SUCCEEDED, finished_at=now, reason="", result=result)
    elif retry_at is not None:
        fields = dict(status=Status.SCHEDULED, run_after=max(retry_at, occurrence.scheduled_for), reason=error)
    else:
        fields = dict(status=Status.FAILED, finished_at=now, reason=error)
    return fields, Attempt.Status.FAILED if error else Attempt.Status.SUCCEEDED, min(started_at, now)


def _json(value) -> str | None:
    """A job's result as the SQL statements take it: JSON text, or None for SQL null."""
    return None if value is None else json.dumps(value)


def _alert_if_failed(occurrence: Occurrence, now, using: str) -> None:
    """A run that failed for good writes its alert in the same transaction; jobs.alerts.delivery sends it."""
    if occurrence.status == Status.FAILED and Alert.enabled():
        insert_row(Alert.job_failed(occurrence, now), using)
