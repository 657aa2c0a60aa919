"""The console's door to one-off runs: "Schedule a run" on a job's page, the upcoming one-off runs, and what an
occurrence's page shows of a one-off run (jobs.web.oneoff_admin)."""

import re
from datetime import UTC, datetime, timedelta

import pytest
from django.contrib.admin.models import LogEntry
from django.contrib.auth.models import Permission, User
from django.utils import timezone

from jobs import schedule
from jobs.models import Occurrence
from tests.jobs.helpers import make_definition

pytestmark = pytest.mark.django_db

PASSWORD = "a-long-password"


@pytest.fixture
def echo(db):
    return make_definition("EchoJob", "test.echo", every=3600)


def staff(client, username: str, *codenames: str):
    user = User.objects.create_user(username, password=PASSWORD, is_staff=True)
    user.user_permissions.add(*Permission.objects.filter(codename__in=codenames))
    client.force_login(user)
    return client


@pytest.fixture
def operator(client):
    return staff(client, "operator", "view_periodictask", "view_occurrence", "run_job", "cancel_occurrence")


def schedule_url(task) -> str:
    return f"/tickerq/django_celery_beat/periodictask/{task.id}/schedule/"


def job_page(task) -> str:
    return f"/tickerq/django_celery_beat/periodictask/{task.id}/change/"


def test_an_operator_schedules_a_run_with_a_payload_in_their_zone_and_it_is_audited(operator, echo):
    operator.cookies["display_zone"] = "Asia/Tokyo"
    form = {"at": "2031-05-04T09:30", "payload": '{"order_id": 42}', "key": "reminder:42"}
    response = operator.post(schedule_url(echo), form)

    occurrence = Occurrence.objects.get()
    assert response.status_code == 302 and response["Location"] == job_page(echo)
    assert (occurrence.job, occurrence.task_id, occurrence.payload, occurrence.key, occurrence.triggered_by) == (
        "test.echo",
        None,
        {"order_id": 42},
        "reminder:42",
        "operator",
    )
    assert occurrence.scheduled_for == datetime(2031, 5, 4, 0, 30, tzinfo=UTC)  # 09:30 in Tokyo
    entry = LogEntry.objects.get()
    assert (entry.user.username, entry.object_id, entry.get_change_message()) == (
        "operator",
        str(occurrence.id),
        f"Scheduled: occurrence {occurrence.id} at 2031-05-04 00:30:00 UTC",
    )
    page = operator.get(job_page(echo)).content.decode()
    link = f'<a href="/tickerq/jobs/occurrence/{occurrence.id}/change/">occurrence {occurrence.id}</a>'
    assert f"Scheduled: {link}" in page
    assert f'id="upcoming-run-{occurrence.id}"' in page and "reminder:42" in page


def test_a_run_scheduled_from_the_page_may_have_a_follow_up(operator, echo):
    form = {"payload": '{"order_id": 7}', "then_when": "failed", "then_job": "test.retried"}
    assert operator.post(schedule_url(echo), form).status_code == 302
    assert Occurrence.objects.get().then == [{"job": "test.retried", "when": "failed", "payload": None}]
    response = operator.post(schedule_url(echo), {"then_job": "test.nope"})
    assert response.status_code == 200
    assert "Select a valid choice. test.nope is not one of the available choices." in response.content.decode()
    assert Occurrence.objects.count() == 1


def test_an_expiry_is_read_in_the_viewers_zone_and_one_before_the_run_is_a_form_error(operator, echo):
    operator.cookies["display_zone"] = "Asia/Tokyo"
    operator.post(schedule_url(echo), {"at": "2031-05-04T09:30", "expires": "2031-05-04T10:00"})

    assert Occurrence.objects.get().expires_at == datetime(2031, 5, 4, 1, 0, tzinfo=UTC)  # 10:00 in Tokyo

    response = operator.post(schedule_url(echo), {"at": "2031-05-04T09:30", "expires": "2031-05-04T09:00"})
    assert response.status_code == 200 and Occurrence.objects.count() == 1
    assert response.context["schedule_form"].non_field_errors() == [
        "Expires: after the run is due (2031-05-04T09:30:00+09:00), not 2031-05-04T09:00:00+09:00."
    ]


def test_an_empty_time_is_as_soon_as_possible_and_a_repeated_key_returns_the_scheduled_run(operator, echo):
    before = timezone.now()
    operator.post(schedule_url(echo), {"at": "", "payload": "", "key": "once"})
    first = Occurrence.objects.get()
    assert first.payload is None and before <= first.scheduled_for <= timezone.now()

    response = operator.post(schedule_url(echo), {"at": "", "payload": "", "key": "once"}, follow=True)
    assert Occurrence.objects.count() == 1 and LogEntry.objects.count() == 1
    assert "A run with this key is scheduled already" in response.content.decode()


@pytest.mark.parametrize(
    "payload, error",
    [
        ('{"order_id": 42', "Not JSON: Expecting &#x27;,&#x27; delimiter: line 1 column 16 (char 15)."),
        ("[1, 2]", "A JSON object ({...}), not list."),
        ('{"blob": "' + "x" * 70_000 + '"}', "more than SCHEDULER_PAYLOAD_MAX_BYTES (65536)."),
    ],
)
def test_a_bad_payload_is_a_form_error_not_a_crash(operator, echo, payload, error):
    response = operator.post(schedule_url(echo), {"at": "", "payload": payload, "key": ""})
    page = response.content.decode()
    assert response.status_code == 200 and error in page
    assert 'class="errorlist' in page and 'id="schedule-run-form"' in page
    assert not Occurrence.objects.exists() and not LogEntry.objects.exists()


def test_a_time_that_does_not_exist_in_the_viewers_zone_is_a_form_error(operator, echo):
    operator.cookies["display_zone"] = "Europe/Paris"
    response = operator.post(schedule_url(echo), {"at": "2031-03-30T02:30", "payload": "", "key": ""})
    assert response.status_code == 200 and "errorlist" in response.content.decode()
    assert not Occurrence.objects.exists()


def test_a_view_only_user_gets_no_form_and_403_on_post(client, echo):
    viewer = staff(client, "viewer", "view_periodictask", "view_occurrence")
    page = viewer.get(job_page(echo)).content.decode()
    assert 'id="schedule-run-form"' not in page and "Schedule a run" not in page
    assert 'id="upcoming-runs"' in page and "occurrence-cancel" not in page
    response = viewer.post(schedule_url(echo), {"at": "", "payload": "{}", "key": ""})
    assert response.status_code == 403 and not Occurrence.objects.exists()
    assert viewer.get(schedule_url(echo)).status_code == 403


def test_the_job_page_offers_the_form_with_its_live_check(operator, echo):
    page = operator.get(job_page(echo)).content.decode()
    assert f'action="{schedule_url(echo)}"' in page and 'type="datetime-local"' in page
    assert 'id="payload-check"' in page and "jobs/payload_check.js" in page  # the check, a static file (the CSP)


def test_the_upcoming_list_has_live_one_off_runs_soonest_first(operator, echo):
    now = timezone.now()
    later = schedule("test.echo", at=now + timedelta(hours=2), key="later", by="alice")
    sooner = schedule("test.echo", at=now + timedelta(hours=1), key="sooner", by="bob")
    done = schedule("test.echo", at=now - timedelta(hours=1), by="carol")
    Occurrence.objects.filter(id=done.id).update(status="succeeded")
    planned = Occurrence.objects.create(
        task=echo, job_name=echo.name, scheduled_for=now + timedelta(minutes=5), run_after=now + timedelta(minutes=5)
    )

    page = operator.get("/tickerq/jobs/occurrence/", {"kind": "upcoming"}).content.decode()
    rows = re.findall(r'href="/tickerq/jobs/occurrence/(\d+)/change/', page)
    assert rows == [str(sooner.id), str(later.id)]
    assert "one-off (bob)" in page and "one-off (alice)" in page and "sooner" in page
    assert f'formaction="/tickerq/jobs/occurrence/{sooner.id}/cancel/"' in page
    assert str(planned.id) not in rows and str(done.id) not in rows

    one_off = operator.get("/tickerq/jobs/occurrence/", {"kind": "oneoff"}).content.decode()
    assert sorted(re.findall(r'href="/tickerq/jobs/occurrence/(\d+)/change/', one_off)) == sorted(
        [str(sooner.id), str(later.id), str(done.id)]
    )
    scheduled = operator.get("/tickerq/jobs/occurrence/", {"kind": "scheduled"}).content.decode()
    assert re.findall(r'href="/tickerq/jobs/occurrence/(\d+)/change/', scheduled) == [str(planned.id)]


def test_an_upcoming_run_is_cancelled_from_the_job_page_and_recorded(operator, echo):
    run = schedule("test.echo", at=timezone.now() + timedelta(hours=1), by="alice")
    page = operator.get(job_page(echo)).content.decode()
    assert f'action="/tickerq/jobs/occurrence/{run.id}/cancel/"' in page

    response = operator.post(f"/tickerq/jobs/occurrence/{run.id}/cancel/", {"next": job_page(echo)})
    assert response.status_code == 302 and response["Location"] == job_page(echo)
    run.refresh_from_db()
    assert (run.status, run.reason) == ("skipped", "cancelled by operator")
    assert LogEntry.objects.get().get_change_message() == "Cancelled"
    assert f'id="upcoming-run-{run.id}"' not in operator.get(job_page(echo)).content.decode()


def test_the_occurrence_page_shows_payload_result_parent_and_children(operator, echo):
    parent = schedule("test.echo", payload={"order_id": 42, "note": "späť"}, key="order:42", by="alice")
    Occurrence.objects.filter(id=parent.id).update(status="succeeded", result={"sent": True})
    child = schedule("test.echo", payload={"of": 42}, by="alice")
    Occurrence.objects.filter(id=child.id).update(parent=parent)

    page = operator.get(f"/tickerq/jobs/occurrence/{parent.id}/change/").content.decode()
    assert "One-off run" in page and "order:42" in page
    assert '<pre class="json">{\n  &quot;note&quot;: &quot;späť&quot;,\n  &quot;order_id&quot;: 42\n}</pre>' in page
    assert '<pre class="json">{\n  &quot;sent&quot;: true\n}</pre>' in page
    assert f'<a href="/tickerq/jobs/occurrence/{child.id}/change/" class="occurrence-child">' in page

    page = operator.get(f"/tickerq/jobs/occurrence/{child.id}/change/").content.decode()
    assert f'<a href="/tickerq/jobs/occurrence/{parent.id}/change/" class="occurrence-parent">' in page
    assert "Follow-ups" not in page and "Result" not in page


def test_a_definitions_occurrence_shows_no_one_off_fields(operator, echo):
    now = timezone.now()
    planned = Occurrence.objects.create(task=echo, job_name=echo.name, scheduled_for=now, run_after=now)
    page = operator.get(f"/tickerq/jobs/occurrence/{planned.id}/change/").content.decode()
    assert "One-off run" not in page and "Payload" not in page


def test_the_upcoming_list_has_no_cancel_button_for_a_view_only_user(client):
    viewer = staff(client, "viewer", "view_occurrence")
    run = schedule("test.echo", at=timezone.now() + timedelta(hours=1), by="alice")
    page = viewer.get("/tickerq/jobs/occurrence/", {"kind": "upcoming"}).content.decode()
    assert f"/tickerq/jobs/occurrence/{run.id}/change/" in page and "occurrence-cancel" not in page
    response = viewer.post(f"/tickerq/jobs/occurrence/{run.id}/cancel/")
    assert response.status_code == 403 and Occurrence.objects.get(id=run.id).status == "scheduled"
