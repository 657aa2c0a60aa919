"""The job and occurrence pages: the schedule for view-only staff, Run now, the last runs and totals,
Retry and Cancel, durations, and our wording instead of django-celery-beat's."""

import re
import uuid
from datetime import timedelta

import pytest
from django.contrib.admin.models import LogEntry
from django.contrib.auth.models import Permission, User
from django.db import connection
from django.test import Client
from django.test.utils import CaptureQueriesContext
from django.utils import timezone
from django_celery_beat.models import PeriodicTask

from jobs.models import Attempt, Occurrence
from jobs.templatetags.dashboard_tags import run_time
from jobs.web import admin_views

pytestmark = pytest.mark.django_db

JOBS = "/tickerq/django_celery_beat/periodictask/"
HISTORY = "/tickerq/jobs/occurrence/"


def staff(client, name, *codenames):
    user = User.objects.create_user(name, password="a-long-password", is_staff=True)
    for codename in codenames:
        user.user_permissions.add(Permission.objects.get(codename=codename))
    client.force_login(user)
    return client


@pytest.fixture
def viewer(client):
    return staff(client, "viewer", "view_periodictask", "view_occurrence")


@pytest.fixture
def operator(client):
    return staff(client, "operator", "view_periodictask", "view_occurrence", "run_job")


@pytest.fixture
def task():
    return PeriodicTask.objects.get(name="ResendErrorEmailJob")  # seeded: 0 * * * * in UTC


def occurrence(task, minutes_ago, status, took=None, **fields):
    at = timezone.now() - timedelta(minutes=minutes_ago)
    timing = dict(started_at=at, finished_at=at + took) if took is not None else {}
    if status == "running":
        timing.update(started_at=at, session=uuid.uuid4(), lease_expires_at=at + timedelta(hours=1))
    return Occurrence.objects.create(
        task=task, job_name=task.name, scheduled_for=at, run_after=at, status=status, **timing, **fields
    )


def readonly(page, field):
    return re.search(rf'<div class="[^"]*field-{field}[^"]*">.*?<div class="readonly">(.*?)</div>', page, re.S).group(1)


# Durations.


@pytest.mark.parametrize(
    "delta, text",
    [
        (timedelta(microseconds=14987), "14 ms"),
        (timedelta(0), "0 ms"),
        (timedelta(milliseconds=999), "999 ms"),
        (timedelta(seconds=1), "1.0 s"),
        (timedelta(milliseconds=2345), "2.3 s"),
        (timedelta(seconds=59, milliseconds=990), "59.9 s"),
        (timedelta(seconds=61), "1 min 1 s"),
        (timedelta(hours=1, minutes=2, seconds=3), "1 h 2 min"),
        (timedelta(days=3, hours=4), "3 d 4 h"),
        (timedelta(milliseconds=-250), "-250 ms"),
        (None, "-"),
    ],
)
def test_a_run_time_is_told_in_its_largest_units(delta, text):
    assert run_time(delta) == text


def test_the_history_the_occurrence_and_its_attempts_tell_durations_in_words(admin_client, task):
    run = occurrence(task, 5, "succeeded", took=timedelta(microseconds=14987), attempts=1)
    Attempt.objects.create(
        occurrence=run,
        number=1,
        status="succeeded",
        scheduler="s1",
        started_at=run.started_at,
        finished_at=run.started_at + timedelta(milliseconds=2345),
        duration=timedelta(milliseconds=2345),
    )
    listed = admin_client.get(HISTORY).content.decode()
    assert '<td class="field-duration">14 ms</td>' in listed and "0:00:00.014987" not in listed
    page = admin_client.get(f"{HISTORY}{run.id}/change/").content.decode()
    assert readonly(page, "duration") == "14 ms" and readonly(page, "fire_lag") == "0 ms"
    assert readonly(page, "took") == "2.3 s"


# The job page.


def test_a_view_only_user_sees_the_real_schedule_and_zone(viewer, task):
    page = viewer.get(f"{JOBS}{task.id}/change/").content.decode()
    assert readonly(page, "cron") == "0 * * * *"
    assert readonly(page, "timezone") == "UTC"
    assert "None" not in readonly(page, "cron") + readonly(page, "timezone")


@pytest.mark.parametrize("who", ["admin_client", "viewer"])
def test_the_job_page_speaks_our_words_and_is_titled_by_the_jobs_name(request, who, task):
    page = request.getfixturevalue(who).get(f"{JOBS}{task.id}/change/").content.decode()
    for celery_words in (
        "Short Description For This Task",
        "Set to False to disable the schedule",
        "The Name of the Celery Task that Should be Run",
        "leave the others null",
        "(m/h/dM/MY/d)",
        "policy of",
    ):
        assert celery_words not in page, celery_words
    assert "Untick to pause the schedule; instants while paused are not run later." in page
    assert re.search(r"<title>ResendErrorEmailJob \|", page)
    assert "<h1>ResendErrorEmailJob</h1>" in page
    assert re.search(r"&rsaquo; ResendErrorEmailJob\s*</div>", page)
    if who == "admin_client":  # the viewer may not view policies: Django leaves the inline out
        assert '<b>Run policy</b> <span class="inline_label">of ResendErrorEmailJob' in page


def test_the_edit_history_is_titled_by_the_jobs_name(admin_client, task):
    page = admin_client.get(f"{JOBS}{task.id}/history/").content.decode()
    assert "<h1>Edit history: ResendErrorEmailJob</h1>" in page


def test_the_job_page_shows_its_last_ten_runs_newest_first_and_links_them(admin_client, task):
    runs = [occurrence(task, 10 * (12 - i), "succeeded", took=timedelta(milliseconds=14)) for i in range(12)]
    page = admin_client.get(f"{JOBS}{task.id}/change/").content.decode()
    table = re.search(r'<table id="job-recent-runs">.*?</table>', page, re.S).group(0)
    links = re.findall(r'href="/tickerq/jobs/occurrence/(\d+)/change/"', table)
    assert links == [str(run.id) for run in reversed(runs[2:])]
    assert table.count('<td class="run-duration">14 ms</td>') == 10
    assert table.count('<td class="run-status status-succeeded">succeeded</td>') == 10


def test_the_job_page_counts_its_runs_of_the_last_day_and_week(admin_client, task):
    other = PeriodicTask.objects.get(name="CleanUpSentEmailJob")
    day, week = 60 * 24, 60 * 24 * 7
    for minutes, status in [(5, "succeeded"), (10, "succeeded"), (20, "failed"), (30, "missed"), (1, "running")]:
        occurrence(task, minutes, status)
    for minutes, status in [(day + 5, "succeeded"), (day + 10, "failed"), (day + 20, "skipped"), (week + 5, "failed")]:
        occurrence(task, minutes, status)
    occurrence(other, 5, "failed")
    page = admin_client.get(f"{JOBS}{task.id}/change/").content.decode()
    rows = re.findall(
        r'<tr class="totals-([\w-]+)"><th scope="row">[^<]+</th><td class="succeeded">(\d+)</td>'
        r'<td class="failed">(\d+)</td><td class="other">(\d+)</td></tr>',
        page,
    )
    assert rows == [("24-h", "2", "1", "2"), ("7-d", "3", "2", "3")]


def test_the_job_page_links_all_its_runs_and_keeps_djangos_edit_history(admin_client, task):
    mine = occurrence(task, 5, "failed")
    other = occurrence(PeriodicTask.objects.get(name="CleanUpSentEmailJob"), 5, "failed")
    page = admin_client.get(f"{JOBS}{task.id}/change/").content.decode()
    assert f'<a href="/tickerq/jobs/occurrence/?job={task.id}" class="runs-link">All runs of this job</a>' in page
    assert f'href="{JOBS}{task.id}/history/" class="historylink"' in page and ">Edit history</a>" in page
    runs = admin_client.get(HISTORY, {"job": task.id}).content.decode()
    assert f"{HISTORY}{mine.id}/change/" in runs and f"{HISTORY}{other.id}/change/" not in runs


def test_the_job_pages_queries_read_a_bounded_part_of_the_history_index(admin_client, task):
    # A history of some size, its statistics read: on an empty table the planner picks any plan.
    other = PeriodicTask.objects.exclude(id=task.id).first()
    start = timezone.now() - timedelta(minutes=3000)
    Occurrence.objects.bulk_create(
        Occurrence(task=owner, job_name=owner.name, scheduled_for=at, run_after=at, status="succeeded")
        for owner in (task, other)
        for at in (start + timedelta(minutes=minute) for minute in range(3000))
    )
    with connection.cursor() as cursor:
        cursor.execute("ANALYZE jobs_occurrence")
    with CaptureQueriesContext(connection) as queries:
        admin_views.recent_runs(task.id)
        admin_views.totals(task.id, timezone.now())
    assert len(queries.captured_queries) == 3
    with connection.cursor() as cursor:
        cursor.execute("SET LOCAL enable_seqscan = off")
        for query in queries.captured_queries:
            assert re.search(r"LIMIT (10|10000)\b", query["sql"]), query["sql"]
            cursor.execute("EXPLAIN " + query["sql"])
            plan = "\n".join(row[0] for row in cursor.fetchall())
            # Only this job's entries of an index on task_id (occ_task_recent or the foreign key's,
            # as the planner prefers for the data it sees), never the whole table.
            assert re.search(r"Index Cond: \(.*task_id = ", plan), plan
            assert "Seq Scan" not in plan, plan


# Run now.


def test_run_now_is_a_button_on_each_jobs_row_and_on_its_page_for_those_who_may_run_jobs(operator, task):
    listed = operator.get(JOBS).content.decode()
    url = f"{JOBS}{task.id}/run_now/"
    button = f'<button type="submit" class="button run-now" formaction="{url}" style="white-space:nowrap">'
    assert listed.count(button + "Run now</button>") == 1
    assert listed.count(">Run now</button>") == PeriodicTask.objects.count()
    page = operator.get(f"{JOBS}{task.id}/change/").content.decode()
    assert f'action="{url}"' in page and ">Run now</button>" in page


def test_without_the_run_permission_there_is_no_button_and_the_view_refuses(viewer, task):
    assert "Run now</button>" not in viewer.get(JOBS).content.decode()
    assert "Run now</button>" not in viewer.get(f"{JOBS}{task.id}/change/").content.decode()
    assert viewer.post(f"{JOBS}{task.id}/run_now/").status_code == 403
    assert not Occurrence.objects.exists() and not LogEntry.objects.exists()


def test_the_run_button_runs_the_job_logs_it_and_goes_back(operator, task):
    back = f"{JOBS}?enabled__exact=1"
    response = operator.post(f"{JOBS}{task.id}/run_now/", HTTP_REFERER=f"http://testserver{back}", follow=True)
    assert response.redirect_chain == [(f"http://testserver{back}", 302)]
    run = Occurrence.objects.get()
    assert (run.task, run.manual, run.status, run.triggered_by) == (task, True, "scheduled", "operator")
    entry = LogEntry.objects.get()
    assert (entry.user.username, entry.object_id, entry.change_message) == (
        "operator",
        str(task.id),
        f"Ran now: occurrence {run.id}",
    )
    assert "Triggered: an idle scheduler runs them at once." in response.content.decode()


def test_the_run_view_goes_back_only_to_this_site_and_only_answers_post(operator, task):
    response = operator.post(f"{JOBS}{task.id}/run_now/", {"next": "https://evil.example/"})
    assert response.status_code == 302 and response["Location"] == f"{JOBS}{task.id}/change/"
    assert operator.get(f"{JOBS}{task.id}/run_now/").status_code == 405
    assert operator.post(f"{JOBS}999999/run_now/").status_code == 404
    assert Occurrence.objects.count() == 1


def test_the_run_view_needs_the_csrf_token(task):
    client = staff(Client(enforce_csrf_checks=True), "operator", "view_periodictask", "run_job")
    assert client.post(f"{JOBS}{task.id}/run_now/").status_code == 403
    page = client.get(f"{JOBS}{task.id}/change/").content.decode()
    token = re.search(r'action="[^"]*/run_now/".*?name="csrfmiddlewaretoken" value="([^"]+)"', page, re.S).group(1)
    assert client.post(f"{JOBS}{task.id}/run_now/", {"csrfmiddlewaretoken": token}).status_code == 302
    assert Occurrence.objects.filter(task=task, manual=True).count() == 1


# Retry and Cancel on the occurrence page.


def buttons(page):
    return re.findall(r'class="button occurrence-(retry|cancel)"', page)


@pytest.mark.parametrize(
    "status, shown",
    [
        ("failed", ["retry"]),
        ("missed", ["retry"]),
        ("skipped", ["retry"]),
        ("scheduled", ["cancel"]),
        ("running", ["cancel"]),
        ("succeeded", []),
    ],
)
def test_retry_and_cancel_are_shown_when_they_apply(client, task, status, shown):
    allowed = staff(client, "operator", "view_occurrence", "retry_occurrence", "cancel_occurrence")
    run = occurrence(task, 5, status)
    assert buttons(allowed.get(f"{HISTORY}{run.id}/change/").content.decode()) == shown


def test_retry_and_cancel_are_not_shown_without_their_permissions(viewer, task):
    for status in ("failed", "scheduled"):
        run = occurrence(task, 5, status)
        assert buttons(viewer.get(f"{HISTORY}{run.id}/change/").content.decode()) == []
        for action in ("retry", "cancel"):
            assert viewer.post(f"{HISTORY}{run.id}/{action}/").status_code == 403
    assert Occurrence.objects.count() == 2 and not LogEntry.objects.exists()


def test_a_deleted_jobs_failed_occurrence_has_no_retry(admin_client, task):
    run = occurrence(task, 5, "failed")
    Occurrence.objects.filter(id=run.id).update(task=None)
    assert buttons(admin_client.get(f"{HISTORY}{run.id}/change/").content.decode()) == []


def test_the_retry_button_triggers_a_manual_run_and_logs_it(client, task):
    allowed = staff(client, "operator", "view_occurrence", "retry_occurrence")
    failed = occurrence(task, 5, "failed")
    page = f"{HISTORY}{failed.id}/change/"
    response = allowed.post(f"{HISTORY}{failed.id}/retry/", {"next": page}, follow=True)
    assert response.redirect_chain == [(page, 302)]
    retried = Occurrence.objects.exclude(id=failed.id).get()
    assert (retried.task, retried.manual, retried.status, retried.triggered_by) == (task, True, "scheduled", "operator")
    assert LogEntry.objects.get().change_message == f"Retried as occurrence {retried.id}"
    assert "Triggered 1 manual run(s)." in response.content.decode()


def test_the_cancel_button_cancels_a_scheduled_occurrence_and_logs_it(client, task):
    allowed = staff(client, "operator", "view_occurrence", "cancel_occurrence")
    waiting = occurrence(task, 0, "scheduled", manual=True)
    response = allowed.post(f"{HISTORY}{waiting.id}/cancel/", {"next": f"{HISTORY}{waiting.id}/change/"}, follow=True)
    waiting.refresh_from_db()
    assert (waiting.status, waiting.reason) == ("skipped", "cancelled by operator")
    assert LogEntry.objects.get().change_message == "Cancelled"
    assert "Cancelled 1 occurrence(s)." in response.content.decode()
    assert buttons(response.content.decode()) == []
