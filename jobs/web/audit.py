"""Operator actions and their record in the console's audit log (bookworm_scheduler.web.audit_log), together.

The dashboard's "Run now", the API's trigger and `manage.py jobs trigger` all call run_now_logged;
the dashboard's Cancel, the API's cancel and `manage.py jobs cancel` all call cancel_logged; the
API's schedule and `manage.py jobs schedule` call schedule_logged; a user's page and `manage.py apitoken`
call token_issued_logged and token_revoked_logged. So the audit log and an object's
admin history show every manual run, cancel and one-off run, whichever way it was asked for, in the
same words.
"""

from datetime import datetime

from django.contrib.admin.models import ADDITION
from django.db import transaction
from django_celery_beat.models import PeriodicTask

from bookworm_scheduler.web import audit_log
from jobs.engine import store
from jobs.engine.definitions import run_now
from jobs.engine.oneoff import Run, schedule_or_get
from jobs.engine.store import CancelOutcome
from jobs.models import ApiToken, Occurrence

CANCEL_VERBS = {CancelOutcome.CANCELLED: "Cancelled", CancelOutcome.REQUESTED: "Cancel requested"}


def run_now_logged(task: PeriodicTask, *, user=None, by: str, via: str) -> Occurrence:
    """run_now, recorded in the audit log as a change of task; the occurrence and its record commit together.

    user: who asked (the dashboard's or the API's user); None for the command line. by: the
    occurrence's triggered_by. via: where it was asked from (audit_log.FROM_API,
    audit_log.from_command_line(); "" for the dashboard's own).
    """
    with transaction.atomic():
        occurrence = run_now(task, by=by)
        audit_log.log(user, [task], "Ran now", via=via, detail=f"occurrence {occurrence.id}")
    return occurrence


def cancel_logged(occurrence: Occurrence, *, user=None, by: str, via: str, now: datetime) -> CancelOutcome:
    """store.cancel, recorded in the audit log as "Cancelled" or "Cancel requested" in the same transaction.

    user, via: as run_now_logged's. by: who the occurrence's reason names ("cancelled by <by>").
    Nothing is recorded when nothing was done (CancelOutcome.NOTHING: see cancel_refusal).
    """
    with transaction.atomic():
        outcome = store.cancel(occurrence, by=by, now=now)
        if outcome:
            audit_log.log(user, [occurrence], CANCEL_VERBS[outcome], via=via)
    return outcome


def cancel_refusal(occurrence: Occurrence) -> str:
    """Why a cancel of occurrence did nothing, read from its row as it is now: one sentence, without a full stop."""
    occurrence.refresh_from_db(fields=["status", "cancel_requested_by"])
    if occurrence.status in Occurrence.FINISHED:
        return f"occurrence {occurrence.id} has finished ({occurrence.status}): there is nothing to cancel"
    if occurrence.status == Occurrence.Status.RUNNING:
        return f"occurrence {occurrence.id} was asked to stop already, by {occurrence.cancel_requested_by}"
    return f"occurrence {occurrence.id} changed while being cancelled (now {occurrence.status}): try again"


def schedule_logged(job: str, *, user=None, by: str, via: str, **run) -> tuple[Occurrence, bool]:
    """One run of the registered job (jobs.schedule; run: its keywords at, payload, key, expires, then),
    recorded as "Scheduled: occurrence N at <time>" in the same transaction; whether it is new.

    Not new: a run with its key was scheduled or running already, and is returned; nothing is recorded.
    user, by, via: as run_now_logged's. Raises jobs.ScheduleError (UnknownJob, PayloadError).
    """
    with transaction.atomic():
        [(occurrence, new)] = schedule_or_get([Run(job, **run)], by=by)
        if new:
            detail = f"occurrence {occurrence.id} at {occurrence.scheduled_utc}"
            audit_log.log(user, [occurrence], "Scheduled", via=via, detail=detail)
    return occurrence, new


def token_issued_logged(
    owner, *, user=None, via: str, name: str, read_only: bool, expires_days: int | None, now: datetime
) -> tuple[ApiToken, str]:
    """ApiToken.objects.issue for owner, recorded as "Created API token" in the same transaction.

    Returns the row and the token itself, which the caller shows once. user, via: as run_now_logged's.
    """
    with transaction.atomic():
        row, token = ApiToken.objects.issue(owner, name=name, read_only=read_only, expires_days=expires_days, now=now)
        terms = [f"for {owner.get_username()}", "read-only" if read_only else "read-write"]
        terms += [f"expires {row.expires_at:%Y-%m-%d %H:%M} UTC"] if row.expires_at else []
        audit_log.log(user, [row], "Created API token", via=via, detail=", ".join(terms), flag=ADDITION)
    return row, token


def token_revoked_logged(row: ApiToken, *, user=None, via: str, now: datetime) -> bool:
    """row.revoke, recorded as "Revoked API token" in the same transaction; False (nothing recorded) when it was."""
    with transaction.atomic():
        revoked = row.revoke(now)
        if revoked:
            audit_log.log(user, [row], "Revoked API token", via=via, detail=f"of {row.user.get_username()}")
    return revoked
