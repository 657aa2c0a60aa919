"""/tickerq/api/occurrences/<id>, the history's links to it, and the record a trigger leaves in the admin's log."""

import uuid
from datetime import UTC, datetime, timedelta
from io import StringIO

import pytest
from django.contrib.admin.models import CHANGE, LogEntry
from django.contrib.auth.models import User
from django.core.management import call_command
from django_celery_beat.models import PeriodicTask

from bookworm_scheduler.web.audit_log import os_user
from jobs.models import Attempt, Occurrence
from outbox.models import OutboxMessage
from tests.jobs.api_helpers import PASSWORD, basic, staff

pytestmark = pytest.mark.django_db

AT = datetime(2026, 3, 1, 12, 0, tzinfo=UTC)
TRIGGER = "/tickerq/api/jobs/ResendErrorEmailJob/trigger"


@pytest.fixture
def run():
    """An occurrence that failed once, then succeeded, publishing two events; and another's event."""
    occurrence = Occurrence.objects.create(
        job_name="ResendErrorEmailJob",
        scheduled_for=AT,
        run_after=AT + timedelta(seconds=30),
        status=Occurrence.Status.SUCCEEDED,
        attempts=2,
        scheduler="host-1",
        started_at=AT + timedelta(seconds=30),
        finished_at=AT + timedelta(seconds=31, milliseconds=500),
    )
    for number, status, started, error in [(1, "failed", AT, "boom"), (2, "succeeded", AT + timedelta(seconds=30), "")]:
        took = timedelta(milliseconds=250) if number == 1 else timedelta(milliseconds=1500)
        Attempt.objects.create(
            occurrence=occurrence,
            number=number,
            status=status,
            scheduler="host-1",
            started_at=started,
            finished_at=started + took,
            duration=took,
            error=error,
        )
    for n, (origin, status) in enumerate(
        [(f"occurrence:{occurrence.id}", "delivered"), (f"occurrence:{occurrence.id}", "pending"), ("other", "dead")]
    ):
        OutboxMessage.objects.create(
            message_id=uuid.UUID(int=n + 1),
            message_types=[f"urn:message:BookWorm.Contracts:Event{n}", "urn:message:BookWorm.Chassis:IntegrationEvent"],
            exchange=f"BookWorm.Contracts:Event{n}",
            body={},
            status=status,
            delivered_at=AT if status == "delivered" else None,
            origin=origin,
        )
    return occurrence


# GET /tickerq/api/occurrences/<id>.


def test_an_occurrence_is_shown_with_its_timings_attempts_and_events(client, run):
    client.force_login(staff("jobs.view_occurrence"))

    response = client.get(f"/tickerq/api/occurrences/{run.id}")

    assert response.status_code == 200 and "no-cache" in response["Cache-Control"]
    assert response.json() == {
        "id": run.id,
        "url": f"/tickerq/api/occurrences/{run.id}",
        "job": "ResendErrorEmailJob",
        "status": "succeeded",
        "scheduled_for": "2026-03-01T12:00:00+00:00",
        "manual": False,
        "triggered_by": None,
        "error": None,
        "timings": {
            "started_at": "2026-03-01T12:00:30+00:00",
            "finished_at": "2026-03-01T12:00:31.500000+00:00",
            "duration_ms": 1500,
        },
        "attempts": [
            {
                "number": 1,
                "status": "failed",
                "scheduler": "host-1",
                "started_at": "2026-03-01T12:00:00+00:00",
                "finished_at": "2026-03-01T12:00:00.250000+00:00",
                "duration_ms": 250,
                "error": "boom",
            },
            {
                "number": 2,
                "status": "succeeded",
                "scheduler": "host-1",
                "started_at": "2026-03-01T12:00:30+00:00",
                "finished_at": "2026-03-01T12:00:31.500000+00:00",
                "duration_ms": 1500,
                "error": None,
            },
        ],
        "events": [
            {
                "message_id": "00000000-0000-0000-0000-000000000001",
                "message_type": "urn:message:BookWorm.Contracts:Event0",
                "status": "delivered",
            },
            {
                "message_id": "00000000-0000-0000-0000-000000000002",
                "message_type": "urn:message:BookWorm.Contracts:Event1",
                "status": "pending",
            },
        ],
        "events_truncated": False,
        "payload": None,
        "result": None,
        "key": None,
        "expires_at": None,
        "parent": None,
        "children": [],
    }


def test_the_events_shown_are_capped_and_the_cap_is_said(client, run, monkeypatch):
    monkeypatch.setattr("jobs.web.serializers.MAX_EVENTS", 1)
    client.force_login(staff("jobs.view_occurrence"))

    shown = client.get(f"/tickerq/api/occurrences/{run.id}").json()

    assert [e["message_id"] for e in shown["events"]] == ["00000000-0000-0000-0000-000000000001"]
    assert shown["events_truncated"] is True


def test_an_unknown_occurrence_is_a_json_404(client):
    client.force_login(staff("jobs.view_occurrence"))

    response = client.get("/tickerq/api/occurrences/999999999")

    assert response.status_code == 404
    assert response.json() == {"error": {"status": 404, "message": "No such occurrence: 999999999."}}


def test_an_id_that_is_not_a_number_is_the_json_404_of_an_unknown_endpoint(client):
    client.force_login(staff("jobs.view_occurrence"))

    response = client.get("/tickerq/api/occurrences/latest")

    assert response.status_code == 404
    assert response.json() == {"error": {"status": 404, "message": "No such endpoint; GET /tickerq/api/ lists them."}}


def test_an_occurrence_needs_the_permission_of_the_history(client, run):
    client.force_login(staff("django_celery_beat.view_periodictask", "outbox.view_outboxmessage"))

    response = client.get(f"/tickerq/api/occurrences/{run.id}")

    assert response.status_code == 403
    assert response.json() == {"error": {"status": 403, "message": "Permission required: jobs.view_occurrence."}}


def test_an_anonymous_request_for_an_occurrence_gets_401(client, run):
    response = client.get(f"/tickerq/api/occurrences/{run.id}")

    assert response.status_code == 401 and "WWW-Authenticate" in response
    assert response.json()["error"]["status"] == 401


def test_each_history_row_links_to_its_occurrence(client, run):
    client.force_login(staff("jobs.view_occurrence"))

    row = client.get("/tickerq/api/history/").json()[0]
    shown = client.get(row["url"]).json()

    assert (row["id"], row["url"]) == (run.id, f"/tickerq/api/occurrences/{run.id}")
    assert (shown["id"], shown["status"], shown["scheduled_for"]) == (run.id, row["status"], row["scheduled_for"])


def test_the_command_line_history_has_the_same_links():
    occurrence = Occurrence.objects.create(job_name="a", scheduled_for=AT, run_after=AT)
    out = StringIO()

    call_command("jobs", "history", "--json", stdout=out)

    assert f'"url": "/tickerq/api/occurrences/{occurrence.id}"' in out.getvalue()


# Triggers: where the new run is, and the record in the admin's log.


def test_a_triggers_location_is_the_new_occurrence(client):
    staff("jobs.run_job", "jobs.view_occurrence")

    response = client.post(TRIGGER, content_type="application/json", **basic())
    shown = client.get(response["Location"], **basic()).json()

    occurrence = Occurrence.objects.get()
    assert response.status_code == 201
    assert response["Location"] == response.json()["url"] == f"/tickerq/api/occurrences/{occurrence.id}"
    assert (shown["id"], shown["status"], shown["manual"], shown["triggered_by"]) == (
        occurrence.id,
        "scheduled",
        True,
        "script",
    )
    assert (shown["attempts"], shown["events"], shown["timings"]["duration_ms"]) == ([], [], None)


def test_an_api_trigger_is_recorded_in_the_admins_log_as_its_user(client):
    user = staff("jobs.run_job")

    client.post(TRIGGER, content_type="application/json", **basic())

    occurrence = Occurrence.objects.get()
    task = PeriodicTask.objects.get(name="ResendErrorEmailJob")
    entry = LogEntry.objects.get()
    assert (entry.user, entry.action_flag, entry.content_type.model_class(), entry.object_id, entry.object_repr) == (
        user,
        CHANGE,
        PeriodicTask,
        str(task.id),
        str(task),
    )
    assert entry.change_message == f"Ran now from the API: occurrence {occurrence.id}"


def test_a_command_line_trigger_is_recorded_as_the_command_line_naming_the_os_user(monkeypatch):
    monkeypatch.setattr("getpass.getuser", lambda: "alice")

    call_command("jobs", "trigger", "ResendErrorEmailJob", stdout=StringIO())
    call_command("jobs", "trigger", "ResendErrorEmailJob", stdout=StringIO())

    first, second = Occurrence.objects.order_by("id")
    assert first.triggered_by == "alice via manage.py jobs trigger"
    assert [(e.user.username, e.action_flag, e.change_message) for e in LogEntry.objects.order_by("id")] == [
        ("command line", CHANGE, f"Ran now from the command line by OS user alice: occurrence {first.id}"),
        ("command line", CHANGE, f"Ran now from the command line by OS user alice: occurrence {second.id}"),
    ]
    account = User.objects.get(username="command line")
    assert (account.is_active, account.is_staff, account.has_usable_password()) == (False, False, False)


def test_the_dashboards_api_and_command_line_records_are_of_one_kind(client, monkeypatch):
    monkeypatch.setattr("getpass.getuser", lambda: "alice")
    task = PeriodicTask.objects.get(name="ResendErrorEmailJob")
    admin = User.objects.create_superuser("admin", "admin@example.com", PASSWORD)
    client.force_login(admin)
    client.post(
        "/tickerq/django_celery_beat/periodictask/",
        {"action": "run_now", "_selected_action": [task.id], "index": "0"},
    )
    client.logout()
    client.post(TRIGGER, content_type="application/json", **basic("admin"))
    call_command("jobs", "trigger", "ResendErrorEmailJob", stdout=StringIO())

    entries = LogEntry.objects.order_by("id")
    assert [(e.action_flag, e.content_type.model_class(), e.object_id) for e in entries] == [
        (CHANGE, PeriodicTask, str(task.id))
    ] * 3
    assert [e.change_message.partition(":")[0] for e in entries] == [
        "Ran now",
        "Ran now from the API",
        "Ran now from the command line by OS user alice",
    ]


def test_an_os_user_without_a_name_is_known_by_its_uid(monkeypatch):
    def nameless():
        raise KeyError("getpwuid(): uid not found: 1234")

    monkeypatch.setattr("getpass.getuser", nameless)
    monkeypatch.setattr("os.getuid", lambda: 1234)

    assert os_user() == "uid 1234"
