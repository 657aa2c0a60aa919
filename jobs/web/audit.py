"""A manual run and its record in the console's audit log (bookworm_scheduler.web.audit_log), together.

The dashboard's "Run now", the API's trigger and `manage.py jobs trigger` all call run_now_logged,
so the audit log and a job's admin history show every manual run, whichever way it was asked for.
"""

from django.db import transaction
from django_celery_beat.models import PeriodicTask

from bookworm_scheduler.web import audit_log
from jobs.engine.definitions import run_now
from jobs.models import Occurrence


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
