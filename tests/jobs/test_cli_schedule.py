"""manage.py jobs schedule JOB: a one-off run from the command line, audited as the command line's."""

import subprocess
from datetime import UTC, datetime, timedelta
from io import StringIO

import pytest
from django.contrib.admin.models import LogEntry
from django.core.management import call_command
from django.core.management.base import CommandError

from bookworm_scheduler.kernel.clock import database_now
from bookworm_scheduler.web.audit_log import source
from jobs.models import Occurrence
from tests.jobs.helpers import MANAGE

pytestmark = pytest.mark.django_db

AT = "2030-03-01T12:00:00+01:00"


@pytest.fixture(autouse=True)
def os_user(monkeypatch):
    monkeypatch.setattr("getpass.getuser", lambda: "alice")


def schedule(*args) -> str:
    out = StringIO()
    call_command("jobs", "schedule", *args, stdout=out)
    return out.getvalue()


def refused(*args) -> CommandError:
    with pytest.raises(CommandError) as raised:
        schedule(*args)
    assert not Occurrence.objects.exists()
    assert not LogEntry.objects.exists()
    return raised.value


def test_a_run_is_scheduled_at_a_time_with_a_payload_and_a_key():
    output = schedule("CleanUpSentEmailJob", "--at", AT, "--payload", '{"order_id": 7}', "--key", "reminder:7")

    occurrence = Occurrence.objects.get()
    assert output == f"scheduled CleanUpSentEmailJob: occurrence {occurrence.id} at 2030-03-01 11:00:00 UTC\n"
    assert (occurrence.job, occurrence.payload, occurrence.key, occurrence.scheduled_for) == (
        "CleanUpSentEmailJob",
        {"order_id": 7},
        "reminder:7",
        datetime(2030, 3, 1, 11, 0, tzinfo=UTC),
    )
    assert occurrence.triggered_by == "alice via manage.py jobs schedule"


def test_a_scheduled_run_is_in_the_audit_log_as_the_command_lines():
    schedule("CleanUpSentEmailJob", "--at", "2030-03-01T11:00:00Z")

    occurrence = Occurrence.objects.get()
    entry = LogEntry.objects.get()
    assert (entry.user.username, entry.change_message, entry.object_id, source(entry)) == (
        "command line",
        f"Scheduled from the command line by OS user alice: occurrence {occurrence.id} at 2030-03-01 11:00:00 UTC",
        str(occurrence.id),
        "command line",
    )


@pytest.mark.parametrize(
    "delay, length", [("30s", timedelta(seconds=30)), ("10m", timedelta(minutes=10)), ("2h", timedelta(hours=2))]
)
def test_in_schedules_that_long_from_now(delay, length):
    before = database_now()

    schedule("CleanUpSentEmailJob", "--in", delay)

    after = database_now()
    assert before + length <= Occurrence.objects.get().scheduled_for <= after + length


def test_without_a_time_the_run_is_due_at_once():
    before = database_now()

    schedule("CleanUpSentEmailJob")

    occurrence = Occurrence.objects.get()
    assert before <= occurrence.scheduled_for <= database_now()
    assert occurrence.payload is None


def test_a_repeated_key_keeps_the_scheduled_run():
    first = schedule("CleanUpSentEmailJob", "--at", AT, "--key", "reminder:7")

    again = schedule("CleanUpSentEmailJob", "--in", "1d", "--key", "reminder:7")

    occurrence = Occurrence.objects.get()
    assert first == f"scheduled CleanUpSentEmailJob: occurrence {occurrence.id} at 2030-03-01 11:00:00 UTC\n"
    assert again == (
        f"already scheduled CleanUpSentEmailJob: occurrence {occurrence.id} at 2030-03-01 11:00:00 UTC "
        "(key reminder:7)\n"
    )
    assert LogEntry.objects.count() == 1


@pytest.mark.parametrize(
    "args, message",
    [
        (["CleanUpSentMailJob"], "no registered job is named 'CleanUpSentMailJob' (did you mean CleanUpSentEmailJob?)"),
        (
            ["CleanUpSentEmailJob", "--at", "2030-03-01T12:00:00"],
            "--at needs its offset (2026-12-24T18:00:00+01:00, or Z for UTC): 2030-03-01T12:00:00",
        ),
        (["CleanUpSentEmailJob", "--at", "next week"], "--at is not an ISO-8601 instant: next week"),
        (
            ["CleanUpSentEmailJob", "--at", "2030-02-30T12:00:00Z"],
            "--at is not an ISO-8601 instant: 2030-02-30T12:00:00Z",
        ),
        (
            ["CleanUpSentEmailJob", "--in", "10 minutes"],
            "--in is a whole number and a unit (30s, 10m, 2h or 1d), not '10 minutes'",
        ),
        (
            ["CleanUpSentEmailJob", "--payload", "{order: 7}"],
            "--payload is not JSON: Expecting property name enclosed in double quotes: line 1 column 2 (char 1)",
        ),
        (["CleanUpSentEmailJob", "--payload", "[7]"], "the payload must be a JSON object (a dict), not list"),
    ],
)
def test_bad_input_is_a_usage_error_saying_why(args, message):
    error = refused(*args)

    assert (str(error), error.returncode) == (message, 2)


def test_an_unknown_job_exits_2_with_one_line_on_stderr(subprocess_env):
    result = subprocess.run(
        [*MANAGE, "jobs", "schedule", "CleanUpSentMailJob"],
        env=subprocess_env,
        capture_output=True,
        text=True,
        timeout=60,
    )

    assert result.returncode == 2
    assert result.stdout == ""
    assert result.stderr.strip() == (
        "CommandError: no registered job is named 'CleanUpSentMailJob' (did you mean CleanUpSentEmailJob?)"
    )


def test_at_and_in_together_are_refused_by_the_parser(subprocess_env):
    result = subprocess.run(
        [*MANAGE, "jobs", "schedule", "CleanUpSentEmailJob", "--at", AT, "--in", "10m"],
        env=subprocess_env,
        capture_output=True,
        text=True,
        timeout=60,
    )

    assert result.returncode == 2
    assert "argument --in: not allowed with argument --at" in result.stderr
    assert not Occurrence.objects.exists()
