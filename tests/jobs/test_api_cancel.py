"""POST /tickerq/api/occurrences/<id>/cancel: the dashboard's Cancel for scripts; permission, CSRF and audit."""

from datetime import UTC, datetime

import pytest
from django.conf import settings
from django.contrib.admin.models import LogEntry
from django.middleware.csrf import get_token
from django.test import Client, RequestFactory

from bookworm_scheduler.kernel.clock import database_now
from bookworm_scheduler.web.audit_log import source
from jobs.engine import store
from jobs.models import Occurrence
from tests.jobs.api_helpers import basic, staff

pytestmark = pytest.mark.django_db

AT = datetime(2030, 3, 1, 12, 0, tzinfo=UTC)
CSRF_REFUSAL = (
    "CSRF token missing or incorrect: send the session's X-CSRFToken header, "
    "or Basic credentials with Content-Type: application/json."
)


@pytest.fixture
def browser():
    """A client that checks CSRF tokens, as a real browser session is checked."""
    return Client(enforce_csrf_checks=True)


def csrf_token(client) -> str:
    """Give client a CSRF cookie, as any admin page would; the token a page would carry."""
    request = RequestFactory().get("/")
    token = get_token(request)
    client.cookies[settings.CSRF_COOKIE_NAME] = request.META["CSRF_COOKIE"]
    return token


def cancel_url(occurrence_id: int) -> str:
    return f"/tickerq/api/occurrences/{occurrence_id}/cancel"


def post_cancel(client, occurrence_id: int, **extra):
    """A script's cancel: Basic credentials and a JSON content type, no CSRF token."""
    return client.post(cancel_url(occurrence_id), content_type="application/json", **basic(), **extra)


# Who may cancel.


def test_an_anonymous_cancel_gets_401_and_cancels_nothing(client, waiting):
    response = client.post(cancel_url(waiting.id), content_type="application/json")

    assert response.status_code == 401
    assert Occurrence.objects.get().status == "scheduled"


def test_staff_without_the_cancel_permission_get_403_and_cancel_nothing(browser, waiting):
    staff("jobs.view_occurrence", "jobs.run_job")

    response = post_cancel(browser, waiting.id)

    assert response.status_code == 403
    assert response.json() == {"error": {"status": 403, "message": "Permission required: jobs.cancel_occurrence."}}
    assert Occurrence.objects.get().status == "scheduled"
    assert not LogEntry.objects.exists()


# The CSRF rule: the trigger's.


def test_a_session_with_the_csrf_token_cancels(browser, waiting):
    browser.force_login(staff("jobs.cancel_occurrence"))

    response = browser.post(cancel_url(waiting.id), HTTP_X_CSRFTOKEN=csrf_token(browser))

    assert response.status_code == 200
    assert Occurrence.objects.get().status == "skipped"


def test_a_session_without_the_csrf_token_is_refused(browser, waiting):
    browser.force_login(staff("jobs.cancel_occurrence"))
    csrf_token(browser)

    response = browser.post(cancel_url(waiting.id), content_type="application/json")

    assert response.status_code == 403
    assert response.json() == {"error": {"status": 403, "message": CSRF_REFUSAL}}
    assert Occurrence.objects.get().status == "scheduled"
    assert not LogEntry.objects.exists()


def test_basic_credentials_with_a_form_body_still_need_the_token(browser, waiting):
    # What a cross-site form could send, with the Basic credentials a browser remembers.
    staff("jobs.cancel_occurrence")

    response = browser.post(cancel_url(waiting.id), data={"x": "1"}, **basic())

    assert response.status_code == 403
    assert response.json() == {"error": {"status": 403, "message": CSRF_REFUSAL}}
    assert Occurrence.objects.get().status == "scheduled"


# What a cancel does.


def test_a_scheduled_occurrence_is_cancelled_and_answered_with_its_detail(browser, waiting):
    staff("jobs.cancel_occurrence")

    response = post_cancel(browser, waiting.id)

    assert response.status_code == 200
    body = response.json()
    finished_at = body["timings"].pop("finished_at")
    assert body == {
        "id": waiting.id,
        "url": f"/tickerq/api/occurrences/{waiting.id}",
        "job": "ResendErrorEmailJob",
        "status": "skipped",
        "scheduled_for": "2030-03-01T12:00:00+00:00",
        "manual": False,
        "triggered_by": None,
        "error": "cancelled by script",
        "timings": {"started_at": None, "duration_ms": None},
        "attempts": [],
        "events": [],
        "events_truncated": False,
        "payload": None,
        "result": None,
        "key": None,
        "expires_at": None,
        "parent": None,
        "children": [],
        "cancel": "cancelled",
    }
    assert finished_at is not None


def test_a_cancel_is_in_the_audit_log_with_who_and_from_the_api(browser, waiting):
    staff("jobs.cancel_occurrence")

    post_cancel(browser, waiting.id)

    entry = LogEntry.objects.get()
    assert (entry.user.username, entry.change_message, entry.object_id, source(entry)) == (
        "script",
        "Cancelled from the API",
        str(waiting.id),
        "API",
    )


def test_a_running_occurrence_is_asked_to_stop(browser, running):
    staff("jobs.cancel_occurrence")

    response = post_cancel(browser, running.id)

    assert response.status_code == 200
    assert (response.json()["cancel"], response.json()["status"]) == ("requested", "running")
    running.refresh_from_db()
    assert (running.status, running.cancel_requested_by) == ("running", "script")
    entry = LogEntry.objects.get()
    assert (entry.user.username, entry.change_message, source(entry)) == (
        "script",
        "Cancel requested from the API",
        "API",
    )


# What cannot be cancelled.


def test_an_unknown_occurrence_is_a_404(browser):
    staff("jobs.cancel_occurrence")

    response = post_cancel(browser, 999999999)

    assert response.status_code == 404
    assert response.json() == {"error": {"status": 404, "message": "No such occurrence: 999999999."}}


def test_a_finished_occurrence_is_a_409_and_nothing_is_logged(browser, waiting):
    Occurrence.objects.filter(id=waiting.id).update(status="succeeded", finished_at=AT)
    staff("jobs.cancel_occurrence")

    response = post_cancel(browser, waiting.id)

    assert response.status_code == 409
    assert response.json() == {
        "error": {
            "status": 409,
            "message": f"Occurrence {waiting.id} has finished (succeeded): there is nothing to cancel.",
        }
    }
    assert Occurrence.objects.get().status == "succeeded"
    assert not LogEntry.objects.exists()


def test_a_running_occurrence_asked_to_stop_already_is_a_409(browser, running):
    store.cancel(running, by="alice", now=database_now())
    staff("jobs.cancel_occurrence")

    response = post_cancel(browser, running.id)

    assert response.status_code == 409
    assert response.json()["error"]["message"] == f"Occurrence {running.id} was asked to stop already, by alice."
    running.refresh_from_db()
    assert running.cancel_requested_by == "alice"


def test_cancel_refuses_get_with_405(client, waiting):
    client.force_login(staff("jobs.cancel_occurrence"))

    response = client.get(cancel_url(waiting.id))

    assert response.status_code == 405 and response["Allow"] == "POST"
    assert Occurrence.objects.get().status == "scheduled"
