import json
import subprocess
from datetime import timedelta

import pytest
from django.core.management import call_command
from django.core.management.base import CommandError

from jobs.models import Occurrence, Priority
from tests.jobs.helpers import MANAGE, make_definition

pytestmark = pytest.mark.django_db


def run_jobs(*args) -> str:
    from io import StringIO

    out = StringIO()
    call_command("jobs", *args, stdout=out)
    return out.getvalue()


def test_list_shows_the_seed_definitions_as_json():
    rows = {row["name"]: row for row in json.loads(run_jobs("list", "--json"))}
    assert rows["CleanUpSentEmailJob"] == {
        "name": "CleanUpSentEmailJob",
        "job": "CleanUpSentEmailJob",
        "schedule": "0 0 * * *",
        "timezone": "UTC",
        "priority": "normal",
        "enabled": True,
        "next_run": rows["CleanUpSentEmailJob"]["next_run"],
        "last_status": None,
    }
    assert rows["ResendErrorEmailJob"]["schedule"] == "0 * * * *"
    assert rows["ResendErrorEmailJob"]["priority"] == "high"
    assert rows["CleanUpSentEmailJob"]["next_run"].endswith("T00:00:00+00:00")


def test_list_shows_the_last_status_and_no_next_run_when_disabled(clock, no_seed_definitions):
    task = make_definition("paused", cron="*/5 * * * *", tz="Europe/Berlin", enabled=False)
    Occurrence.objects.create(
        task=task, job_name="paused", scheduled_for=clock.now, run_after=clock.now, status="failed"
    )
    [row] = json.loads(run_jobs("list", "--json"))
    assert (row["schedule"], row["timezone"], row["enabled"], row["next_run"], row["last_status"]) == (
        "*/5 * * * *",
        "Europe/Berlin",
        False,
        None,
        "failed",
    )


def test_history_lists_occurrences_newest_first_and_filters_by_job(clock, no_seed_definitions):
    a = make_definition("a", every=60)
    b = make_definition("b", every=60)
    for minutes, task in [(1, a), (2, b), (3, a)]:
        at = clock.now + timedelta(minutes=minutes)
        Occurrence.objects.create(task=task, job_name=task.name, scheduled_for=at, run_after=at)
    rows = json.loads(run_jobs("history", "--json"))
    assert [r["job"] for r in rows] == ["a", "b", "a"]
    assert set(rows[0]) >= {
        "job",
        "scheduled_for",
        "status",
        "attempt",
        "instance",
        "started_at",
        "finished_at",
        "manual",
        "error",
    }
    rows = json.loads(run_jobs("history", "--job", "a", "--limit", "1", "--json"))
    assert len(rows) == 1 and rows[0]["scheduled_for"] == (clock.now + timedelta(minutes=3)).isoformat()


def test_history_filters_by_status_and_by_manual_or_scheduled_runs(clock, no_seed_definitions):
    task = make_definition("a", every=60)
    for minutes, (status, manual) in enumerate([("succeeded", False), ("failed", False), ("failed", True)], start=1):
        at = clock.now + timedelta(minutes=minutes)
        Occurrence.objects.create(task=task, job_name="a", scheduled_for=at, run_after=at, status=status, manual=manual)

    def history(*args):
        return [(row["status"], row["manual"]) for row in json.loads(run_jobs("history", *args, "--json"))]

    assert history("--status", "failed") == [("failed", True), ("failed", False)]
    assert history("--manual") == [("failed", True)]
    assert history("--no-manual") == [("failed", False), ("succeeded", False)]
    assert history("--job", "a", "--status", "succeeded", "--no-manual") == [("succeeded", False)]


@pytest.mark.parametrize("limit", ["0", "1001"])
def test_history_limit_outside_1_to_1000_is_a_usage_error(limit):
    with pytest.raises(CommandError, match="--limit must be a whole number from 1 to 1000") as raised:
        run_jobs("history", "--limit", limit)

    assert raised.value.returncode == 2


def test_trigger_writes_a_manual_occurrence_with_the_definitions_priority():
    output = run_jobs("trigger", "ResendErrorEmailJob")
    occurrence = Occurrence.objects.get()
    assert f"occurrence {occurrence.id}" in output
    assert occurrence.manual and occurrence.status == "scheduled" and occurrence.priority == Priority.HIGH


def test_trigger_of_an_unknown_definition_is_an_error():
    with pytest.raises(CommandError) as raised:
        run_jobs("trigger", "Nope")

    assert (str(raised.value), raised.value.returncode) == ("no such job definition: Nope", 2)
    assert not Occurrence.objects.exists()


@pytest.mark.parametrize("name", ["resenderroremailjob", "ResendErrorMailJob"])
def test_trigger_of_a_near_miss_names_the_definition_and_runs_nothing(name):
    with pytest.raises(CommandError) as raised:
        run_jobs("trigger", name)

    assert str(raised.value) == f"no such job definition: {name} (did you mean ResendErrorEmailJob?)"
    assert not Occurrence.objects.exists()


def test_history_of_an_unknown_job_is_an_error_with_the_closest_name():
    with pytest.raises(CommandError) as raised:
        run_jobs("history", "--job", "CleanUpSentMailJob")

    assert str(raised.value) == "no such job definition: CleanUpSentMailJob (did you mean CleanUpSentEmailJob?)"
    assert raised.value.returncode == 2


def test_history_of_a_deleted_definition_still_shows_the_runs_it_left(clock, no_seed_definitions):
    task = make_definition("gone", every=60)
    Occurrence.objects.create(task=task, job_name="gone", scheduled_for=clock.now, run_after=clock.now)
    task.delete()  # the occurrence keeps its job_name

    assert [row["job"] for row in json.loads(run_jobs("history", "--job", "gone", "--json"))] == ["gone"]


def test_preview_prints_instants_with_their_offset():
    output = run_jobs(
        "preview", "30 2 * * *", "--tz", "Europe/Berlin", "--after", "2026-03-28T12:00:00+00:00", "--count", "2"
    )
    assert output.split() == ["2026-03-29T03:00:00+02:00", "2026-03-30T02:30:00+02:00"]


@pytest.mark.parametrize(
    "macro, instants",
    [
        ("@daily", ["2026-03-29T00:00:00+01:00", "2026-03-30T00:00:00+02:00"]),
        ("@hourly", ["2026-03-28T13:00:00+01:00", "2026-03-28T14:00:00+01:00"]),
        ("@monthly", ["2026-04-01T00:00:00+02:00", "2026-05-01T00:00:00+02:00"]),
    ],
)
def test_preview_reads_debian_crons_macros(macro, instants):
    output = run_jobs("preview", macro, "--tz", "Europe/Berlin", "--after", "2026-03-28T12:00:00+01:00", "--count", "2")
    assert output.split() == instants


@pytest.mark.parametrize(
    "args, message",
    [
        (["0 0 31 2 *"], "never fires: day-of-month 31 does not occur in month 2 in cron expression '0 0 31 2 *'"),
        (["@reboot"], "@reboot is not supported: it means 'when cron starts'"),
        (["* * * * *", "--tz", "Europe/paris"], "unknown time zone: Europe/paris (did you mean Europe/Paris?)"),
    ],
)
def test_preview_says_why_it_refuses_an_expression_or_a_zone(args, message):
    with pytest.raises(CommandError) as raised:
        run_jobs("preview", *args)

    assert str(raised.value).startswith(message)
    assert raised.value.returncode == 2


@pytest.mark.parametrize(
    "args, message",
    [
        (["61 * * * *"], "Bad minute"),
        (["* * *"], "five fields"),
        (["* * * * *", "--tz", "Nowhere/City"], "unknown time zone"),
        (["0 0 31 2 *"], "never fires"),
    ],
)
def test_preview_of_bad_input_is_one_line_on_stderr_and_exit_status_2(subprocess_env, args, message):
    result = subprocess.run(
        [*MANAGE, "jobs", "preview", *args], env=subprocess_env, capture_output=True, text=True, timeout=60
    )
    assert result.returncode == 2
    assert result.stdout == ""
    assert len(result.stderr.strip().splitlines()) == 1 and message in result.stderr
