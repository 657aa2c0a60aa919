"""manage.py jobs cancel ID: the dashboard's Cancel from the command line, audited as the command line's."""

import subprocess
from datetime import UTC, datetime
from io import StringIO

import pytest
from django.contrib.admin.models import LogEntry
from django.core.management import call_command
from django.core.management.base import CommandError

from bookworm_scheduler.kernel.clock import database_now
from bookworm_scheduler.web.audit_log import source
from jobs.engine import store
from jobs.models import Occurrence
from tests.jobs.helpers import MANAGE

pytestmark = pytest.mark.django_db

AT = datetime(2030, 3, 1, 12, 0, tzinfo=UTC)


@pytest.fixture(autouse=True)
def os_user(monkeypatch):
    monkeypatch.setattr("getpass.getuser", lambda: "alice")


def cancel(occurrence_id) -> str:
    out = StringIO()
    call_command("jobs", "cancel", str(occurrence_id), stdout=out)
    return out.getvalue()


def test_a_scheduled_occurrence_is_cancelled(waiting):
    output = cancel(waiting.id)

    assert output == f"cancelled {waiting.id}\n"
    waiting.refresh_from_db()
    assert (waiting.status, waiting.reason) == ("skipped", "cancelled by alice via manage.py jobs cancel")


def test_a_cancel_is_in_the_audit_log_as_the_command_lines(waiting):
    cancel(waiting.id)

    entry = LogEntry.objects.get()
    assert (entry.user.username, entry.change_message, entry.object_id, source(entry)) == (
        "command line",
        "Cancelled from the command line by OS user alice",
        str(waiting.id),
        "command line",
    )


def test_a_running_occurrence_is_asked_to_stop(running):
    output = cancel(running.id)

    assert output == f"asked {running.id} to stop (running)\n"
    running.refresh_from_db()
    assert (running.status, running.cancel_requested_by) == ("running", "alice via manage.py jobs cancel")
    assert LogEntry.objects.get().change_message == "Cancel requested from the command line by OS user alice"


def test_an_unknown_occurrence_is_an_error():
    with pytest.raises(CommandError) as raised:
        cancel(999999999)

    assert (str(raised.value), raised.value.returncode) == ("no such occurrence: 999999999", 1)


def test_a_finished_occurrence_is_an_error_and_nothing_is_logged(waiting):
    Occurrence.objects.filter(id=waiting.id).update(status="failed", finished_at=AT)

    with pytest.raises(CommandError) as raised:
        cancel(waiting.id)

    assert (str(raised.value), raised.value.returncode) == (
        f"occurrence {waiting.id} has finished (failed): there is nothing to cancel",
        1,
    )
    assert not LogEntry.objects.exists()


def test_a_running_occurrence_asked_to_stop_already_is_an_error(running):
    store.cancel(running, by="bob", now=database_now())

    with pytest.raises(CommandError) as raised:
        cancel(running.id)

    assert str(raised.value) == f"occurrence {running.id} was asked to stop already, by bob"
    assert raised.value.returncode == 1


def test_an_id_that_is_not_a_number_is_a_usage_error(subprocess_env):
    result = subprocess.run(
        [*MANAGE, "jobs", "cancel", "seven"], env=subprocess_env, capture_output=True, text=True, timeout=60
    )

    assert result.returncode == 2
    assert "invalid int value: 'seven'" in result.stderr


def test_a_finished_occurrence_exits_1_with_one_line_on_stderr(subprocess_env, waiting):
    Occurrence.objects.filter(id=waiting.id).update(status="succeeded", finished_at=AT)

    result = subprocess.run(
        [*MANAGE, "jobs", "cancel", str(waiting.id)], env=subprocess_env, capture_output=True, text=True, timeout=60
    )

    assert result.returncode == 1
    assert result.stdout == ""
    assert result.stderr.strip() == (
        f"CommandError: occurrence {waiting.id} has finished (succeeded): there is nothing to cancel"
    )
