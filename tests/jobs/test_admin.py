import re
import uuid
import zoneinfo
from datetime import UTC, datetime, timedelta

import pytest
from django.contrib.admin.models import LogEntry
from django.contrib.auth.models import Permission, User
from django.db import connection, transaction
from django.test.utils import CaptureQueriesContext
from django.utils import timezone
from django_celery_beat.models import CrontabSchedule, PeriodicTask

from jobs.models import Attempt, Occurrence, SchedulerInstance
from jobs.seed.contracts import ResendErrorEmailIntegrationEvent
from outbox.publishing import origin, publish
from tests.jobs.helpers import definition_form

pytestmark = pytest.mark.django_db


@pytest.fixture
def admin_client(client):
    user = User.objects.create_superuser("admin", "admin@example.com", "a-long-password")
    client.force_login(user)
    return client


def crontab_form(**fields):
    data = {
        "minute": "0",
        "hour": "*",
        "day_of_month": "*",
        "month_of_year": "*",
        "day_of_week": "*",
        "timezone": "UTC",
        "periodictask_set-TOTAL_FORMS": "0",
        "periodictask_set-INITIAL_FORMS": "0",
    }
    data.update(fields)
    return data


def test_the_dashboard_is_behind_a_login(client):
    response = client.get("/tickerq/")
    assert response.status_code == 302 and "/tickerq/login/" in response["Location"]


def test_the_dashboard_lists_definitions_and_occurrences(admin_client):
    assert admin_client.get("/tickerq/").status_code == 200
    page = admin_client.get("/tickerq/django_celery_beat/periodictask/")
    assert page.status_code == 200 and b"CleanUpSentEmailJob" in page.content
    assert admin_client.get("/tickerq/jobs/occurrence/").status_code == 200


@pytest.mark.parametrize(
    "fields, message",
    [
        ({"day_of_month": "31", "month_of_year": "2"}, "never fires: day-of-month 31 does not occur in month 2"),
        ({"minute": "0-70"}, "Bad minute in cron expression"),
        ({"minute": "*/0"}, "Bad minute in cron expression"),
        ({"timezone": "Nowhere/City"}, "Select a valid choice"),
        ({"timezone": "Europe/paris"}, "Unknown time zone &#x27;Europe/paris&#x27; (did you mean Europe/Paris?)."),
    ],
)
def test_a_bad_cron_schedule_is_a_form_error_not_a_crash(admin_client, fields, message):
    before = CrontabSchedule.objects.count()
    response = admin_client.post("/tickerq/django_celery_beat/crontabschedule/add/", crontab_form(**fields))
    assert response.status_code == 200
    assert message.encode() in response.content
    assert CrontabSchedule.objects.count() == before


def test_a_good_cron_schedule_is_saved(admin_client):
    response = admin_client.post("/tickerq/django_celery_beat/crontabschedule/add/", crontab_form(minute="*/5"))
    assert response.status_code == 302
    assert CrontabSchedule.objects.filter(minute="*/5").exists()


def test_run_now_writes_manual_occurrences_for_the_scheduler(admin_client):
    task = PeriodicTask.objects.get(name="ResendErrorEmailJob")
    response = admin_client.post(
        "/tickerq/django_celery_beat/periodictask/",
        {"action": "run_now", "_selected_action": [task.id]},
    )
    assert response.status_code == 302
    occurrence = Occurrence.objects.get()
    assert occurrence.task == task and occurrence.manual and occurrence.status == "scheduled"
    assert occurrence.triggered_by == "admin"


def test_the_jobs_list_shows_the_real_last_run(admin_client):
    task = PeriodicTask.objects.get(name="ResendErrorEmailJob")
    started = datetime(2026, 3, 1, 12, 30, tzinfo=UTC)
    Occurrence.objects.create(
        task=task, job_name=task.name, scheduled_for=started, run_after=started, started_at=started, status="succeeded"
    )
    page = admin_client.get("/tickerq/django_celery_beat/periodictask/").content.decode()
    assert "2026-03-01 12:30:00" in page and ">succeeded<" in page


def test_solar_schedules_cannot_be_chosen(admin_client):
    page = admin_client.get("/tickerq/django_celery_beat/periodictask/add/").content.decode()
    assert 'name="solar"' not in page
    assert admin_client.get("/tickerq/django_celery_beat/solarschedule/").status_code == 404


def test_a_definition_is_made_from_a_registered_job_and_a_cron_expression(admin_client):
    response = admin_client.post("/tickerq/django_celery_beat/periodictask/add/", definition_form())
    assert response.status_code == 302, response.content.decode()[:2000]
    task = PeriodicTask.objects.select_related("crontab", "policy").get(name="nightly")
    assert (task.task, str(task.crontab.timezone), task.crontab.minute, task.crontab.hour) == (
        "test.publish",
        "Europe/Berlin",
        "30",
        "2",
    )
    assert task.policy.priority == 2


def test_a_definition_with_a_macro_is_stored_as_its_five_fields(admin_client):
    response = admin_client.post("/tickerq/django_celery_beat/periodictask/add/", definition_form(cron="@weekly"))
    assert response.status_code == 302, response.content.decode()[:2000]
    crontab = PeriodicTask.objects.select_related("crontab").get(name="nightly").crontab
    fields = (crontab.minute, crontab.hour, crontab.day_of_month, crontab.month_of_year, crontab.day_of_week)
    assert fields == ("0", "0", "*", "*", "0")


def test_the_change_form_shows_the_definitions_zone_selected(admin_client):
    admin_client.post("/tickerq/django_celery_beat/periodictask/add/", definition_form())
    task = PeriodicTask.objects.get(name="nightly")
    page = admin_client.get(f"/tickerq/django_celery_beat/periodictask/{task.id}/change/").content.decode()
    zones = re.search(r'<select[^>]* name="timezone".*?</select>', page, re.S).group(0)
    assert zones.count("<option ") == len(zoneinfo.available_timezones())
    assert zones.count(" selected>") == 1
    assert '<option value="Europe/Berlin" selected>Europe/Berlin</option>' in zones
    assert 'hx-include="[name=cron],[name=timezone]"' in zones


@pytest.mark.parametrize(
    "fields, message",
    [
        ({"task": "no.such.job"}, "Select a valid choice. no.such.job is not one of the available choices."),
        ({"cron": "61 * * * *"}, "Bad minute in cron expression"),
        ({"cron": "0 0 31 2 *"}, "never fires: day-of-month 31 does not occur in month 2"),
        ({"cron": "@reboot"}, "@reboot is not supported: it means &#x27;when cron starts&#x27;"),
        ({"timezone": "Europe/paris"}, "Unknown time zone &#x27;Europe/paris&#x27; (did you mean Europe/Paris?)."),
        ({"cron": ""}, "Give exactly one schedule"),
        ({"kwargs": "[1, 2]"}, "A JSON object"),
    ],
)
def test_a_bad_definition_is_a_form_error(admin_client, fields, message):
    response = admin_client.post("/tickerq/django_celery_beat/periodictask/add/", definition_form(**fields))
    assert response.status_code == 200
    assert message in response.content.decode()
    assert not PeriodicTask.objects.filter(name="nightly").exists()


def test_the_form_offers_only_registered_jobs_and_no_celery_fields(admin_client):
    page = admin_client.get("/tickerq/django_celery_beat/periodictask/add/").content.decode()
    assert '<option value="test.publish">' in page and '<option value="ResendErrorEmailJob">' in page
    for celery_field in ('name="queue"', 'name="exchange"', 'name="routing_key"', 'name="headers"', 'name="args"'):
        assert celery_field not in page


def test_the_preview_tells_the_expression_in_words_and_its_next_five_runs(admin_client):
    response = admin_client.get("/tickerq/django_celery_beat/periodictask/preview/", {"cron": "0 9 * * 1-5"})
    page = response.content.decode()
    assert "At 09:00 AM, Monday through Friday" in page
    assert page.count("<li>") == 5 and " 09:00 UTC</li>" in page
    bad = admin_client.get("/tickerq/django_celery_beat/periodictask/preview/", {"cron": "0 25 * * *"})
    assert "Bad hour in cron expression" in bad.content.decode()
    macro = admin_client.get("/tickerq/django_celery_beat/periodictask/preview/", {"cron": "@daily"}).content.decode()
    assert "At 12:00 AM" in macro and macro.count("<li>") == 5
    never = admin_client.get("/tickerq/django_celery_beat/periodictask/preview/", {"cron": "0 0 31 2 *"})
    assert "never fires: day-of-month 31 does not occur in month 2" in never.content.decode()


def test_the_jobs_list_shows_next_run_success_rate_and_running(admin_client, clock):
    task = PeriodicTask.objects.get(name="ResendErrorEmailJob")
    now = timezone.now()
    for minutes, status in [(10, "succeeded"), (20, "succeeded"), (30, "succeeded"), (40, "failed"), (1, "running")]:
        at = now - timedelta(minutes=minutes)
        Occurrence.objects.create(
            task=task,
            job_name=task.name,
            scheduled_for=at,
            run_after=at,
            started_at=at,
            status=status,
            session=uuid.uuid4() if status == "running" else None,
            lease_expires_at=now if status == "running" else None,
        )
    page = admin_client.get("/tickerq/django_celery_beat/periodictask/").content.decode()
    assert "75 % of 4" in page
    assert '<td class="field-running_now">1</td>' in page
    assert "Every hour" in page and "<code>0 * * * *</code>" in page


def view_only_staff(client):
    user = User.objects.create_user("viewer", password="a-long-password", is_staff=True)
    for codename in ("view_periodictask", "view_occurrence", "view_schedulerinstance"):
        user.user_permissions.add(Permission.objects.get(codename=codename))
    client.force_login(user)
    return client


def test_a_view_only_user_sees_the_jobs_but_cannot_run_or_disable_them(client):
    viewer = view_only_staff(client)
    task = PeriodicTask.objects.get(name="ResendErrorEmailJob")
    page = viewer.get("/tickerq/django_celery_beat/periodictask/").content.decode()
    assert "ResendErrorEmailJob" in page and 'value="run_now"' not in page and 'value="disable"' not in page
    for action in ("run_now", "disable"):
        viewer.post("/tickerq/django_celery_beat/periodictask/", {"action": action, "_selected_action": [task.id]})
    assert not Occurrence.objects.exists() and PeriodicTask.objects.get(id=task.id).enabled


def test_running_a_job_now_needs_its_own_permission_and_is_logged(client):
    user = User.objects.create_user("operator", password="a-long-password", is_staff=True)
    for codename in ("view_periodictask", "run_job"):
        user.user_permissions.add(Permission.objects.get(codename=codename))
    client.force_login(user)
    task = PeriodicTask.objects.get(name="ResendErrorEmailJob")
    client.post("/tickerq/django_celery_beat/periodictask/", {"action": "run_now", "_selected_action": [task.id]})
    occurrence = Occurrence.objects.get()
    assert (occurrence.manual, occurrence.triggered_by) == (True, "operator")
    entry = LogEntry.objects.get()
    assert (entry.user.username, entry.object_id, entry.get_change_message()) == (
        "operator",
        str(task.id),
        f"Ran now: occurrence {occurrence.id}",
    )


def failed_occurrence(task, **fields):
    at = timezone.now() - timedelta(minutes=5)
    occurrence = Occurrence.objects.create(
        task=task, job_name=task.name, scheduled_for=at, run_after=at, status="failed", attempts=1, **fields
    )
    Attempt.objects.create(
        occurrence=occurrence,
        number=1,
        status="failed",
        scheduler="s1",
        started_at=at,
        finished_at=at,
        duration=timedelta(0),
        error="RuntimeError: boom",
        traceback='Traceback (most recent call last):\n  File "job.py", line 1\nRuntimeError: boom',
    )
    return occurrence


def test_an_occurrence_shows_its_attempts_who_triggered_it_and_its_events(admin_client):
    task = PeriodicTask.objects.get(name="ResendErrorEmailJob")
    occurrence = failed_occurrence(task, manual=True, triggered_by="alice")
    with transaction.atomic(), origin(f"occurrence:{occurrence.id}"):
        event = publish(ResendErrorEmailIntegrationEvent())
    page = admin_client.get(f"/tickerq/jobs/occurrence/{occurrence.id}/change/").content.decode()
    assert "alice" in page and "File &quot;job.py&quot;, line 1" in page and "RuntimeError: boom" in page
    assert f'href="/tickerq/outbox/outboxmessage/{event.id}/change/"' in page
    assert 'name="_save"' not in page and "deletelink" not in page


def test_history_filters_by_status_kind_job_and_scheduler(admin_client):
    task = PeriodicTask.objects.get(name="ResendErrorEmailJob")
    other = PeriodicTask.objects.get(name="CleanUpSentEmailJob")
    failed = failed_occurrence(task, manual=True, scheduler="s1")
    now = timezone.now()
    cleaned = Occurrence.objects.create(
        task=other, job_name=other.name, scheduled_for=now, run_after=now, status="succeeded"
    )
    SchedulerInstance.objects.create(
        instance_id="s1", host="h", pid=1, version="1", started_at=now, last_seen=now, session=uuid.uuid4()
    )
    url = "/tickerq/jobs/occurrence/"
    for query in ({"status__exact": "failed"}, {"kind": "manual"}, {"job": task.id}, {"scheduler": "s1"}):
        page = admin_client.get(url, query).content.decode()
        assert f"/tickerq/jobs/occurrence/{failed.id}/change/" in page, query
        assert f"/tickerq/jobs/occurrence/{cleaned.id}/change/" not in page, query
    page = admin_client.get(url, {"q": "cleanupsentemailjob"}).content.decode()
    assert f"/tickerq/jobs/occurrence/{cleaned.id}/change/" in page
    assert f"/tickerq/jobs/occurrence/{failed.id}/change/" not in page


def test_retry_and_cancel_need_their_permissions(client):
    task = PeriodicTask.objects.get(name="ResendErrorEmailJob")
    failed = failed_occurrence(task)
    now = timezone.now()
    waiting = Occurrence.objects.create(task=task, job_name=task.name, scheduled_for=now, run_after=now, manual=True)
    viewer = view_only_staff(client)
    viewer.post("/tickerq/jobs/occurrence/", {"action": "retry", "_selected_action": [failed.id]})
    viewer.post("/tickerq/jobs/occurrence/", {"action": "cancel", "_selected_action": [waiting.id]})
    assert Occurrence.objects.count() == 2 and Occurrence.objects.get(id=waiting.id).status == "scheduled"
    user = User.objects.get(username="viewer")
    for codename in ("retry_occurrence", "cancel_occurrence"):
        user.user_permissions.add(Permission.objects.get(codename=codename))
    viewer.post("/tickerq/jobs/occurrence/", {"action": "retry", "_selected_action": [failed.id]})
    viewer.post("/tickerq/jobs/occurrence/", {"action": "cancel", "_selected_action": [waiting.id]})
    assert Occurrence.objects.filter(manual=True, triggered_by="viewer", status="scheduled").count() == 1
    cancelled = Occurrence.objects.get(id=waiting.id)
    assert (cancelled.status, cancelled.reason) == ("skipped", "cancelled by viewer")
    assert sorted(LogEntry.objects.values_list("change_message", flat=True)) == [
        "Cancelled",
        f"Retried as occurrence {Occurrence.objects.latest('id').id}",
    ]


def test_the_schedulers_page_tells_live_stale_and_lost_how_many_each_takes_and_what_it_runs(admin_client):
    now = timezone.now()
    alive = SchedulerInstance.objects.create(
        instance_id="alive", host="h1", pid=1, version="1", started_at=now, last_seen=now, concurrency=12
    )
    SchedulerInstance.objects.create(
        instance_id="stale", host="h2", pid=2, version="1", started_at=now, last_seen=now - timedelta(minutes=5)
    )
    SchedulerInstance.objects.create(
        instance_id="gone", host="h3", pid=3, version="1", started_at=now, last_seen=now, state="lost"
    )
    task = PeriodicTask.objects.get(name="ResendErrorEmailJob")
    running = Occurrence.objects.create(
        task=task,
        job_name=task.name,
        scheduled_for=now,
        run_after=now,
        status="running",
        session=alive.session,
        lease_expires_at=now,
        started_at=now,
    )
    page = admin_client.get("/tickerq/jobs/schedulerinstance/").content.decode()
    assert ">live</span>" in page and ">stale</span>" in page and ">lost</span>" in page
    assert '<td class="field-concurrency">12</td>' in page
    detail = admin_client.get(f"/tickerq/jobs/schedulerinstance/{alive.session}/change/").content.decode()
    assert f"/tickerq/jobs/occurrence/{running.id}/change/" in detail
    assert re.search(r'field-concurrency">.*?<div class="readonly">12</div>', detail, re.S)


def test_the_history_list_never_counts_the_whole_filtered_table(admin_client):
    with CaptureQueriesContext(connection) as queries:
        admin_client.get("/tickerq/jobs/occurrence/", {"status__exact": "failed"})
    counts = [q["sql"] for q in queries.captured_queries if "COUNT(" in q["sql"].upper()]
    assert counts and all("LIMIT 10000" in sql for sql in counts)


def test_the_history_list_shows_times_on_one_line_in_utc_and_who_triggered(admin_client):
    task = PeriodicTask.objects.get(name="ResendErrorEmailJob")
    at = datetime(2026, 12, 7, 11, 29, 9, tzinfo=UTC)
    Occurrence.objects.create(
        task=task,
        job_name=task.name,
        scheduled_for=at,
        run_after=at,
        manual=True,
        triggered_by="operator",
        status=Occurrence.Status.SUCCEEDED,
        started_at=at + timedelta(seconds=2),
        finished_at=at + timedelta(seconds=3),
    )

    page = admin_client.get("/tickerq/jobs/occurrence/").content.decode()

    assert re.search(r'<td class="field-scheduled"><span class="list-time"[^>]*>2026-12-07 11:29:09 UTC</span>', page)
    assert re.search(r'<td class="field-started"><span class="list-time"[^>]*>11:29:11 UTC</span>', page)
    assert '<td class="field-trigger">manual (operator)</td>' in page


def test_the_jobs_list_shows_the_next_run_on_one_line_in_utc(admin_client):
    page = admin_client.get("/tickerq/django_celery_beat/periodictask/").content.decode()

    assert re.search(
        r'<td class="field-next_run"><span class="list-time"[^>]*>\d{4}-\d\d-\d\d \d\d:\d\d:\d\d UTC<', page
    )


def test_each_state_is_one_word_in_the_filters_and_pages(admin_client):
    page = admin_client.get("/tickerq/jobs/occurrence/").content.decode()
    assert re.findall(r'href="\?status__exact=(\w+)"[^>]*>(\w+)</a>', page) == [
        ("scheduled", "scheduled"),
        ("running", "running"),
        ("succeeded", "succeeded"),
        ("failed", "failed"),
        ("skipped", "skipped"),
        ("missed", "missed"),
        ("expired", "expired"),
    ]
    outbox = admin_client.get("/tickerq/outbox/outboxmessage/").content.decode()
    assert re.findall(r'href="\?status__exact=(\w+)"[^>]*>(\w+)</a>', outbox) == [
        ("pending", "pending"),
        ("delivered", "delivered"),
        ("unroutable", "unroutable"),
        ("dead", "dead"),
    ]
