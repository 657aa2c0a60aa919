"""POST /tickerq/api/jobs/<job>/schedule: a one-off run for scripts; and an occurrence's payload, result and family."""

from datetime import UTC, datetime

import pytest
from django.contrib.admin.models import LogEntry
from django.test import Client

from bookworm_scheduler.web.audit_log import source
from jobs.models import Occurrence
from tests.jobs.api_helpers import basic, staff
from tests.jobs.helpers import make_definition

pytestmark = pytest.mark.django_db

SCHEDULE = "/tickerq/api/jobs/CleanUpSentEmailJob/schedule"
AT = "2030-03-01T12:00:00+01:00"
CSRF_REFUSAL = (
    "CSRF token missing or incorrect: send the session's X-CSRFToken header, "
    "or Basic credentials with Content-Type: application/json."
)


@pytest.fixture
def script():
    return staff("jobs.run_job")


def post(client, body, url=SCHEDULE):
    """A script's request: Basic credentials and a JSON body (a dict, or the body's text as it is)."""
    return client.post(url, data=body, content_type="application/json", **basic())


def refused(response) -> str:
    assert response.status_code == 400
    assert not Occurrence.objects.exists()
    assert not LogEntry.objects.exists()
    return response.json()["error"]["message"]


# Who may schedule.


def test_an_anonymous_request_gets_401_and_schedules_nothing(client):
    response = client.post(SCHEDULE, data={"at": AT}, content_type="application/json")

    assert response.status_code == 401
    assert not Occurrence.objects.exists()


def test_staff_without_the_run_permission_get_403(client):
    staff("jobs.view_occurrence", "jobs.cancel_occurrence")

    response = post(client, {"at": AT})

    assert response.status_code == 403
    assert response.json() == {"error": {"status": 403, "message": "Permission required: jobs.run_job."}}
    assert not Occurrence.objects.exists()


def test_a_session_without_the_csrf_token_is_refused(script):
    browser = Client(enforce_csrf_checks=True)
    browser.force_login(script)

    response = browser.post(SCHEDULE, data={"at": AT}, content_type="application/json")

    assert response.status_code == 403
    assert response.json() == {"error": {"status": 403, "message": CSRF_REFUSAL}}
    assert not Occurrence.objects.exists()


# Scheduling.


def test_a_run_is_scheduled_and_answered_201_with_its_detail_and_location(client, script):
    response = post(client, {"at": AT, "payload": {"order_id": 7}, "key": "reminder:7"})

    occurrence = Occurrence.objects.get()
    assert response.status_code == 201
    assert response["Location"] == f"/tickerq/api/occurrences/{occurrence.id}"
    assert response.json() == {
        "id": occurrence.id,
        "url": f"/tickerq/api/occurrences/{occurrence.id}",
        "job": "CleanUpSentEmailJob",
        "status": "scheduled",
        "scheduled_for": "2030-03-01T11:00:00+00:00",
        "manual": False,
        "triggered_by": "script",
        "error": None,
        "timings": {"started_at": None, "finished_at": None, "duration_ms": None},
        "attempts": [],
        "events": [],
        "events_truncated": False,
        "payload": {"order_id": 7},
        "result": None,
        "key": "reminder:7",
        "expires_at": None,
        "parent": None,
        "children": [],
    }
    assert (occurrence.job, occurrence.task_id, occurrence.payload) == ("CleanUpSentEmailJob", None, {"order_id": 7})


def test_a_scheduled_run_is_in_the_audit_log_with_who_when_and_from_the_api(client, script):
    post(client, {"at": AT})

    occurrence = Occurrence.objects.get()
    entry = LogEntry.objects.get()
    assert (entry.user.username, entry.change_message, entry.object_id, source(entry)) == (
        "script",
        f"Scheduled from the API: occurrence {occurrence.id} at 2030-03-01 11:00:00 UTC",
        str(occurrence.id),
        "API",
    )


def test_a_repeated_key_answers_200_with_the_run_it_holds_and_schedules_nothing_more(client, script):
    first = post(client, {"at": AT, "key": "reminder:7", "payload": {"n": 1}})

    again = post(client, {"at": "2031-01-01T00:00:00+00:00", "key": "reminder:7", "payload": {"n": 2}})

    assert (first.status_code, again.status_code) == (201, 200)
    assert again.json() == first.json()
    assert again["Location"] == first["Location"]
    assert Occurrence.objects.count() == 1
    assert LogEntry.objects.count() == 1


def test_without_a_body_the_run_is_due_at_once(client, script):
    response = client.post(SCHEDULE, **basic(), content_type="application/json")

    assert response.status_code == 201
    occurrence = Occurrence.objects.get()
    assert (occurrence.status, occurrence.payload, occurrence.key) == ("scheduled", None, "")
    assert occurrence.run_after == occurrence.scheduled_for


def test_an_expiry_and_follow_ups_are_kept_on_the_run(client, script):
    body = {
        "at": AT,
        "expires": "2030-03-01T13:00:00+01:00",
        "then": [{"job": "ResendErrorEmailJob", "when": "failed", "payload": {"why": "retry"}}],
    }

    response = post(client, body)

    assert response.status_code == 201
    assert response.json()["expires_at"] == "2030-03-01T12:00:00+00:00"
    occurrence = Occurrence.objects.get()
    assert occurrence.expires_at == datetime(2030, 3, 1, 12, 0, tzinfo=UTC)
    assert occurrence.then == [{"job": "ResendErrorEmailJob", "when": "failed", "payload": {"why": "retry"}}]


# Bad requests: 400, nothing written.


@pytest.mark.parametrize(
    "body, message",
    [
        (
            {"at": "2030-03-01T12:00:00"},
            "at must be an ISO 8601 time with its offset (2026-12-24T18:00:00+01:00), or null: as soon as possible",
        ),
        (
            {"at": "tomorrow"},
            "at must be an ISO 8601 time with its offset (2026-12-24T18:00:00+01:00), or null: as soon as possible",
        ),
        ({"payload": [1, 2]}, "payload must be a JSON object, or null"),
        ({"payload": "text"}, "payload must be a JSON object, or null"),
        ({"key": 7}, "key must be a string of at most 200 characters, or null"),
        ({"key": "k" * 201}, "key must be a string of at most 200 characters, or null"),
        ({"colour": "red"}, "unknown field: colour (known: at, payload, key, expires, then)"),
        (
            {"then": [{"job": "ResendErrorEmailJob", "when": "later"}]},
            "then: when must be one of succeeded, failed, cancelled, finished",
        ),
        ([1], "the body must be a JSON object: {at, payload, key, expires, then}, each optional"),
        ("not json", "the body is not JSON: Expecting value: line 1 column 1 (char 0)"),
        (
            {"at": AT, "expires": "2030-03-01T10:00:00+00:00"},
            "expires: after the run is due (2030-03-01T12:00:00+01:00), not 2030-03-01T10:00:00+00:00",
        ),
    ],
)
def test_a_body_that_is_not_as_documented_is_a_400_saying_why(client, script, body, message):
    assert refused(post(client, body)) == message


def test_a_payload_larger_than_the_limit_is_a_400(client, script, settings):
    settings.SCHEDULER_PAYLOAD_MAX_BYTES = 16

    response = post(client, {"payload": {"text": "abcdefghij"}})

    assert refused(response) == "the payload is 22 bytes as JSON, more than SCHEDULER_PAYLOAD_MAX_BYTES (16)"


def test_an_unknown_job_is_a_400_naming_the_nearest(client, script):
    response = post(client, {"at": AT}, url="/tickerq/api/jobs/CleanUpSentMailJob/schedule")

    assert refused(response) == "no registered job is named 'CleanUpSentMailJob' (did you mean CleanUpSentEmailJob?)"


def test_a_follow_up_of_an_unknown_job_is_a_400(client, script):
    response = post(client, {"then": [{"job": "ResendErrorMailJob", "when": "failed"}]})

    assert refused(response) == "no registered job is named 'ResendErrorMailJob' (did you mean ResendErrorEmailJob?)"


def test_a_definitions_name_is_not_a_job(client, script, no_seed_definitions):
    # The path names a registered job (the code), which a definition's own name need not be.
    make_definition("Nightly cleanup", "CleanUpSentEmailJob", every=3600)

    response = post(client, {"at": AT}, url="/tickerq/api/jobs/Nightly%20cleanup/schedule")

    assert refused(response) == "no registered job is named 'Nightly cleanup'"


def test_schedule_refuses_get_with_405(client, script):
    client.force_login(script)

    response = client.get(SCHEDULE)

    assert response.status_code == 405 and response["Allow"] == "POST"


# GET /tickerq/api/occurrences/<id>: a one-off run's payload, result, parent and children.


def test_an_occurrence_shows_its_result_parent_and_children(client):
    at = datetime(2030, 3, 1, 11, 0, tzinfo=UTC)
    parent = Occurrence.objects.create(
        job="CleanUpSentEmailJob",
        job_name="CleanUpSentEmailJob",
        scheduled_for=at,
        run_after=at,
        status="succeeded",
        payload={"order_id": 7},
        result={"sent": 3},
    )
    child = Occurrence.objects.create(
        job="ResendErrorEmailJob", job_name="ResendErrorEmailJob", scheduled_for=at, run_after=at, parent=parent
    )
    client.force_login(staff("jobs.view_occurrence"))

    shown = client.get(f"/tickerq/api/occurrences/{parent.id}").json()
    shown_child = client.get(f"/tickerq/api/occurrences/{child.id}").json()

    assert (shown["payload"], shown["result"], shown["parent"]) == ({"order_id": 7}, {"sent": 3}, None)
    assert shown["children"] == [
        {
            "id": child.id,
            "url": f"/tickerq/api/occurrences/{child.id}",
            "job": "ResendErrorEmailJob",
            "status": "scheduled",
        }
    ]
    assert shown_child["parent"] == {
        "id": parent.id,
        "url": f"/tickerq/api/occurrences/{parent.id}",
        "job": "CleanUpSentEmailJob",
        "status": "succeeded",
    }
    assert (shown_child["children"], shown_child["payload"], shown_child["result"]) == ([], None, None)
