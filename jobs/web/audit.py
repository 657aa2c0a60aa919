"""The console's record of what an operator did: Django's admin log, whichever way they asked.

The dashboard's "Run now", the API's trigger and `manage.py jobs trigger` all write the same
LogEntry (run_now_logged), so the admin's history of a job shows every manual run.
"""

import getpass
import os

from django.contrib.admin.models import CHANGE, LogEntry
from django.contrib.auth import get_user_model
from django.contrib.auth.hashers import make_password
from django.db import transaction
from django_celery_beat.models import PeriodicTask

from jobs.engine.definitions import run_now
from jobs.models import Occurrence

COMMAND_LINE_USER = "command line"  # a LogEntry needs a user: the command line's, which no one can log in as


def run_now_logged(task: PeriodicTask, *, user=None, by: str, via: str) -> Occurrence:
    """run_now, recorded in the admin's log as a change of task; the occurrence and its record commit together.

    user: who asked (the dashboard's or the API's user); None for the command line, recorded as the
    account COMMAND_LINE_USER, inactive and without a password, made at its first use. by: the
    occurrence's triggered_by. via: where it was asked from, in the log's message ("" for the
    dashboard's own).
    """
    with transaction.atomic():
        if user is None:
            model = get_user_model()
            user, _ = model._default_manager.get_or_create(
                **{model.USERNAME_FIELD: COMMAND_LINE_USER},
                defaults={"is_active": False, "password": make_password(None)},
            )
        occurrence = run_now(task, by=by)
        LogEntry.objects.log_actions(
            user_id=user.pk,
            queryset=[task],
            action_flag=CHANGE,
            change_message=f"Ran now{f' {via}' if via else ''}: occurrence {occurrence.id}",
            single_object=True,
        )
    return occurrence


def os_user() -> str:
    """The command line's OS user, for the record of what it triggers; its uid when it has no name."""
    try:
        return getpass.getuser()
    except (KeyError, OSError):  # no name for this uid, as in a container run as an arbitrary user
        return f"uid {os.getuid()}"
