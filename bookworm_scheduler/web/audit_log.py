"""The console's audit log: Django's admin log (LogEntry), written whichever way an operator acts.

The dashboard's own pages and actions write it as Django's admin does (ModelAdmin.log_change and
kin). The API and the command line write the same rows through log(): who (a user; the command
line's is COMMAND_LINE_USER), what (the action's message and the object), when (action_time),
and from where, said after the action's verb ("Ran now from the API: occurrence 7", "Requeued from
the command line by OS user alice: 3 dead messages"). source() reads the "from where" back for the Audit page
(bookworm_scheduler/web/audit_admin.py); the two are kept together here.
"""

import getpass
import os

from django.contrib.admin.models import CHANGE, LogEntry
from django.contrib.auth import get_user_model
from django.contrib.auth.hashers import make_password
from django.contrib.contenttypes.models import ContentType

COMMAND_LINE_USER = "command line"  # a LogEntry needs a user: the command line's, which no one can log in as
FROM_API = "from the API"
FROM_COMMAND_LINE = "from the command line"

DASHBOARD, API, COMMAND_LINE = "dashboard", "API", "command line"


def os_user() -> str:
    """The command line's OS user, for the record of what it does; its uid when it has no name."""
    try:
        return getpass.getuser()
    except (KeyError, OSError):  # no name for this uid, as in a container run as an arbitrary user
        return f"uid {os.getuid()}"


def from_command_line() -> str:
    """Where a command-line action came from, as its log message ends."""
    return f"{FROM_COMMAND_LINE} by OS user {os_user()}"


def command_line_user():
    """The account COMMAND_LINE_USER, inactive and without a password, made at its first use."""
    model = get_user_model()
    user, _ = model._default_manager.get_or_create(
        **{model.USERNAME_FIELD: COMMAND_LINE_USER},
        defaults={"is_active": False, "password": make_password(None)},
    )
    return user


def message(verb: str, via: str, detail: str = "") -> str:
    """An entry's message: "<verb>[ <via>][: <detail>]"; via "" for the dashboard's own."""
    return f"{verb}{f' {via}' if via else ''}{f': {detail}' if detail else ''}"


def log(user, objects, verb: str, *, via: str, detail: str = "", flag: int = CHANGE) -> None:
    """One entry per object; user None: the command line's.

    via: "" (the dashboard), FROM_API, or from_command_line(). Call in the transaction of the change
    it records, so that the two commit together.
    """
    user = user if user is not None else command_line_user()
    LogEntry.objects.log_actions(
        user_id=user.pk,
        queryset=objects,
        action_flag=flag,
        change_message=message(verb, via, detail),
        single_object=True,
    )


def log_many(user, model, count: int, verb: str, *, via: str, detail: str = "", flag: int = CHANGE) -> None:
    """One entry for count rows of model at once (a bulk command's), not one per row; user None: the command line's."""
    user = user if user is not None else command_line_user()
    LogEntry.objects.create(
        user_id=user.pk,
        content_type=ContentType.objects.get_for_model(model),
        object_id=None,
        object_repr=f"{count} {model._meta.verbose_name if count == 1 else model._meta.verbose_name_plural}",
        action_flag=flag,
        change_message=message(verb, via, detail),
    )


def source(entry: LogEntry) -> str:
    """Where an entry's action was asked from: the dashboard, the API or the command line."""
    if entry.user.get_username() == COMMAND_LINE_USER:
        return COMMAND_LINE
    if entry.change_message.partition(":")[0].endswith(FROM_API):
        return API
    return DASHBOARD
