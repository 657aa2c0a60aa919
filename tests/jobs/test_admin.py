from datetime import UTC, datetime

import pytest
from django.contrib.auth.models import User
from django_celery_beat.models import CrontabSchedule, PeriodicTask

from jobs.models import Occurrence

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
        ({"day_of_month": "31", "month_of_year": "2"}, "Bad day-of-month"),
        ({"minute": "0-70"}, "Bad minute in cron expression"),
        ({"minute": "*/0"}, "Bad minute in cron expression"),
        ({"timezone": "Nowhere/City"}, "Select a valid choice"),
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
    assert "March 1, 2026, 12:30 p.m." in page


def test_the_dashboard_index_shows_an_overview_of_runs_and_the_outbox(admin_client):
    from django.utils import timezone

    task = PeriodicTask.objects.get(name="ResendErrorEmailJob")
    Occurrence.objects.create(
        task=task, job_name=task.name, scheduled_for=timezone.now(), run_after=timezone.now(), status="failed"
    )
    page = admin_client.get("/tickerq/").content.decode()
    assert 'id="overview"' in page and "failed: 1" in page and "pending: 0" in page


def test_a_solar_schedule_is_a_form_error():
    from django_celery_beat.models import SolarSchedule

    from jobs.admin import PeriodicTaskForm

    solar = SolarSchedule.objects.create(event="sunrise", latitude=52.5, longitude=13.4)
    form = PeriodicTaskForm(
        data={"name": "dawn", "task": "test.publish", "solar": solar.id, "args": "[]", "kwargs": "{}", "enabled": True}
    )
    assert not form.is_valid()
    assert "Solar schedules are not supported" in str(form.errors["solar"])
