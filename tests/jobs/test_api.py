"""/tickerq/api/: the command line's --json output over HTTP, for staff users and their scripts."""

import base64
import json
from datetime import timedelta
from io import StringIO

import pytest
from django.conf import settings
from django.contrib.auth.models import Permission
from django.core.management import call_command
from django.middleware.csrf import get_token
from django.test import Client, RequestFactory
from django.urls import reverse

from jobs.models import Occurrence, Priority
from outbox.models import OutboxMessage
from tests.jobs.helpers import make_definition

pytestmark = pytest.mark.django_db

PASSWORD = "a-long-pass-phrase"
VIEW_ALL = ["django_celery_beat.view_periodictask", "jobs.view_occurrence", "outbox.view_outboxmessage"]
GET_ENDPOINTS = [
    ("/tickerq/api/jobs/", "django_celery_beat.view_periodictask"),
    ("/tickerq/api/history/", "jobs.view_occurrence"),
    ("/tickerq/api/outbox/", "outbox.view_outboxmessage"),
]
TRIGGER = "/tickerq/api/jobs/ResendErrorEmailJob/trigger"


@pytest.fixture
def make_user(django_user_model):
    def make(*permissions, username="script", is_staff=True):
        user = django_user_model.objects.create_user(username, password=PASSWORD, is_staff=is_staff)
        for permission in permissions:
            app_label, codename = permission.split(".")
            user.user_permissions.add(Permission.objects.get(content_type__app_label=app_label, codename=codename))
        return user

    return make


@pytest.fixture
def browser():
    """A client that checks CSRF tokens, as a real browser session is checked."""
    return Client(enforce_csrf_checks=True)


def logged_in(client, user):
    client.force_login(user)
    return client


def csrf_token(client) -> str:
    """Give client a CSRF cookie, as any admin page would; the token a page would carry."""
    request = RequestFactory().get("/")
    token = get_token(request)
    client.cookies[settings.CSRF_COOKIE_NAME] = request.META["CSRF_COOKIE"]
    return token


def basic(username="script", password=PASSWORD) -> dict:
    return {"HTTP_AUTHORIZATION": "Basic " + base64.b64encode(f"{username}:{password}".encode()).decode()}


def cli(*args) -> list | dict:
    out = StringIO()
    call_command(*args, stdout=out)
    return json.loads(out.getvalue())


@pytest.fixture
def history(clock, no_seed_definitions):
    """Occurrences of a, b and a deleted definition, a minute apart, newest last."""
    a = make_definition("a", every=60)
    b = make_definition("b", every=60)
    rows = [(a, "succeeded", False), (b, "failed", False), (a, "failed", True), (None, "missed", False)]
    for minutes, (task, status, manual) in enumerate(rows, start=1):
        at = clock.now + timedelta(minutes=minutes)
        Occurrence.objects.create(
            task=task,
            job_name=task.name if task else "Gone",
            scheduled_for=at,
            run_after=at,
            status=status,
            manual=manual,
            reason="boom" if status == "failed" else "",
        )
    return clock


# Authentication and permissions.


@pytest.mark.parametrize("path", ["/tickerq/api/", *[path for path, _ in GET_ENDPOINTS]])
def test_an_anonymous_request_gets_401_with_a_basic_challenge(client, path):
    response = client.get(path)

    assert response.status_code == 401
    assert response["WWW-Authenticate"].startswith('Basic realm="BookWorm Scheduler"')
    assert response.json() == {
        "error": {
            "status": 401,
            "message": "Authentication required: send an API token (Authorization: Bearer), log in, "
            "or send Basic credentials of a staff user.",
        }
    }


def test_an_anonymous_trigger_gets_401_and_runs_nothing(client):
    response = client.post(TRIGGER, content_type="application/json")

    assert response.status_code == 401
    assert not Occurrence.objects.exists()


def test_a_user_who_is_not_staff_gets_403(client, make_user):
    logged_in(client, make_user(*VIEW_ALL, is_staff=False))

    response = client.get("/tickerq/api/jobs/")

    assert response.json() == {"error": {"status": 403, "message": "Only staff users may use the API."}}


@pytest.mark.parametrize("path, permission", GET_ENDPOINTS)
def test_staff_without_the_view_permission_of_the_rows_gets_403(client, make_user, path, permission):
    logged_in(client, make_user(*[p for p in VIEW_ALL if p != permission]))

    response = client.get(path)

    assert response.status_code == 403
    assert response.json() == {"error": {"status": 403, "message": f"Permission required: {permission}."}}


@pytest.mark.parametrize("path, permission", GET_ENDPOINTS)
def test_staff_with_the_view_permission_can_read(client, make_user, path, permission):
    logged_in(client, make_user(permission))

    response = client.get(path)

    assert response.status_code == 200
    assert "no-cache" in response["Cache-Control"]


def test_the_change_permission_implies_the_view_permission_as_in_the_admin(client, make_user):
    logged_in(client, make_user("django_celery_beat.change_periodictask"))

    assert client.get("/tickerq/api/jobs/").status_code == 200


def test_basic_credentials_of_a_staff_user_read_without_a_session(client, make_user):
    make_user(*VIEW_ALL)

    response = client.get("/tickerq/api/jobs/", **basic())

    assert response.status_code == 200


def test_wrong_basic_credentials_get_a_json_401_with_the_challenge(client, make_user):
    make_user(*VIEW_ALL)

    response = client.get("/tickerq/api/jobs/", **basic(password="not-the-password"))

    assert response.status_code == 401
    assert response["WWW-Authenticate"] == 'Basic realm="BookWorm Scheduler", charset="UTF-8"'
    assert response.json() == {"error": {"status": 401, "message": "Wrong username or password."}}


def test_malformed_basic_credentials_get_a_json_401(client):
    response = client.get("/tickerq/api/jobs/", HTTP_AUTHORIZATION="Basic !!!")

    assert response.status_code == 401 and "WWW-Authenticate" in response
    assert response.json() == {"error": {"status": 401, "message": "Malformed Basic credentials."}}


def test_basic_credentials_of_a_user_who_is_not_staff_get_a_json_403(client, make_user):
    make_user(*VIEW_ALL, is_staff=False)

    response = client.get("/tickerq/api/jobs/", **basic())

    assert response.status_code == 403
    assert response.json() == {"error": {"status": 403, "message": "This user may not use the dashboard."}}


def test_a_locked_out_basic_login_gets_a_json_429_saying_how_long_to_wait(client, make_user, settings):
    settings.AXES_FAILURE_LIMIT = 2
    settings.AXES_COOLOFF_TIME = timedelta(minutes=15)
    make_user(*VIEW_ALL)

    statuses = [client.get("/tickerq/api/jobs/", **basic(password="wrong")).status_code for _ in range(2)]
    response = client.get("/tickerq/api/jobs/", **basic())

    assert statuses == [401, 429]
    assert response.status_code == 429 and response["Retry-After"] == "900"
    assert response.json() == {
        "error": {"status": 429, "message": "Account locked: too many failed logins. Try again in 15 minutes."}
    }


def test_the_index_lists_the_endpoints(client, make_user):
    logged_in(client, make_user())

    endpoints = client.get("/tickerq/api/").json()["endpoints"]

    assert [(e["method"], e["url"].partition("?")[0]) for e in endpoints] == [
        ("GET", "/tickerq/api/jobs/"),
        ("GET", "/tickerq/api/history/"),
        ("GET", "/tickerq/api/occurrences/ID"),
        ("GET", "/tickerq/api/outbox/"),
        ("POST", "/tickerq/api/jobs/NAME/trigger"),
        ("POST", "/tickerq/api/jobs/JOB/schedule"),
        ("POST", "/tickerq/api/occurrences/ID/cancel"),
        ("GET", "/tickerq/api/openapi.json"),
        ("GET", "/tickerq/api/docs"),
    ]


def test_an_unknown_endpoint_is_a_json_404(client, make_user):
    logged_in(client, make_user())

    response = client.get("/tickerq/api/nothing/here/")

    assert response.json() == {"error": {"status": 404, "message": "No such endpoint; GET /tickerq/api/ lists them."}}


@pytest.mark.parametrize(
    "path, status, message",
    [
        ("/tickerq/api/jobs/", 405, "Method not allowed: POST."),
        ("/tickerq/api/nothing/", 404, "No such endpoint; GET /tickerq/api/ lists them."),
    ],
)
def test_a_post_without_a_csrf_token_where_nothing_is_written_gets_the_json_error(
    browser, make_user, path, status, message
):
    logged_in(browser, make_user(*VIEW_ALL))

    response = browser.post(path)

    assert response.json() == {"error": {"status": status, "message": message}}


def test_a_read_endpoint_refuses_post_with_405(browser, make_user):
    logged_in(browser, make_user(*VIEW_ALL))

    response = browser.post("/tickerq/api/jobs/", HTTP_X_CSRFTOKEN=csrf_token(browser))

    assert response.status_code == 405 and response["Allow"] == "GET, HEAD"
    assert response.json() == {"error": {"status": 405, "message": "Method not allowed: POST."}}


def test_a_read_endpoint_answers_head_as_get(client, make_user):
    logged_in(client, make_user(*VIEW_ALL))

    response = client.head("/tickerq/api/jobs/")

    assert response.status_code == 200 and response["Content-Type"] == "application/json; charset=utf-8"
    assert "no-cache" in response["Cache-Control"]


# The shapes: what the command line prints.


def test_jobs_are_the_rows_of_jobs_list_json(client, make_user):
    logged_in(client, make_user(*VIEW_ALL))

    rows = client.get("/tickerq/api/jobs/").json()

    assert rows == cli("jobs", "list", "--json")
    assert [row["name"] for row in rows] == ["CleanUpSentEmailJob", "ResendErrorEmailJob"]
    assert rows[1]["priority"] == "high" and rows[1]["schedule"] == "0 * * * *"


@pytest.mark.parametrize(
    "query, args",
    [
        ({}, []),
        ({"job": "a"}, ["--job", "a"]),
        ({"job": "GONE"}, ["--job", "GONE"]),
        ({"status": "failed"}, ["--status", "failed"]),
        ({"manual": "true"}, ["--manual"]),
        ({"manual": "false", "limit": "2"}, ["--no-manual", "--limit", "2"]),
        ({"job": "a", "status": "failed", "manual": "1"}, ["--job", "a", "--status", "failed", "--manual"]),
    ],
)
def test_history_is_the_rows_of_jobs_history_json_with_the_same_filters(client, make_user, history, query, args):
    logged_in(client, make_user(*VIEW_ALL))

    response = client.get("/tickerq/api/history/", query)

    assert response.status_code == 200
    assert response.json() == cli("jobs", "history", *args, "--json")


def test_history_filters_by_job_status_and_manual(client, make_user, history):
    logged_in(client, make_user(*VIEW_ALL))

    def jobs(**query):
        return [(r["job"], r["status"], r["manual"]) for r in client.get("/tickerq/api/history/", query).json()]

    assert jobs() == [
        ("Gone", "missed", False),
        ("a", "failed", True),
        ("b", "failed", False),
        ("a", "succeeded", False),
    ]
    assert jobs(job="a") == [("a", "failed", True), ("a", "succeeded", False)]
    assert jobs(job="gone") == [("Gone", "missed", False)]
    assert jobs(status="failed") == [("a", "failed", True), ("b", "failed", False)]
    assert jobs(manual="false", limit="1") == [("Gone", "missed", False)]
    row = client.get("/tickerq/api/history/", {"job": "b"}).json()[0]
    b = Occurrence.objects.get(job_name="b")
    assert row == {
        "id": b.id,
        "url": f"/tickerq/api/occurrences/{b.id}",
        "job": "b",
        "scheduled_for": (history.now + timedelta(minutes=2)).isoformat(),
        "status": "failed",
        "attempt": 0,
        "instance": None,
        "started_at": None,
        "finished_at": None,
        "manual": False,
        "error": "boom",
    }


@pytest.mark.parametrize(
    "query, message",
    [
        ({"limit": "0"}, "limit must be a whole number from 1 to 1000"),
        ({"limit": "1001"}, "limit must be a whole number from 1 to 1000"),
        ({"limit": "-5"}, "limit must be a whole number from 1 to 1000"),
        ({"limit": "ten"}, "limit must be a whole number from 1 to 1000"),
        (
            {"status": "exploded"},
            "status must be one of scheduled, running, succeeded, failed, skipped, missed, expired",
        ),
        ({"manual": "perhaps"}, "manual must be true or false"),
        ({"colour": "red"}, "unknown parameter: colour (known: job, status, manual, limit)"),
    ],
)
def test_bad_history_parameters_answer_400_with_a_json_error(client, make_user, query, message):
    logged_in(client, make_user(*VIEW_ALL))

    response = client.get("/tickerq/api/history/", query)

    assert response.status_code == 400
    assert response.json() == {"error": {"status": 400, "message": message}}


def test_outbox_is_the_object_of_outbox_status_json(client, make_user):
    for status in ["dead", "unroutable", "delivered", "delivered"]:
        OutboxMessage.objects.create(
            message_types=["urn:message:A:B"], exchange="A:B", body={}, status=status, delivered_at="2026-01-01T00:00Z"
        )
    logged_in(client, make_user(*VIEW_ALL))

    status = client.get("/tickerq/api/outbox/").json()

    assert status == cli("outbox", "status", "--json")
    assert status == {"pending": 0, "delivered": 2, "unroutable": 1, "dead": 1, "oldest_pending_age_seconds": 0.0}


# Triggering a run.


def test_view_only_staff_cannot_trigger(browser, make_user):
    logged_in(browser, make_user(*VIEW_ALL))

    response = browser.post(TRIGGER, HTTP_X_CSRFTOKEN=csrf_token(browser))

    assert response.status_code == 403
    assert response.json() == {"error": {"status": 403, "message": "Permission required: jobs.run_job."}}
    assert not Occurrence.objects.exists()


def test_a_session_with_the_csrf_token_triggers_a_manual_run_with_the_definitions_priority(browser, make_user):
    logged_in(browser, make_user("jobs.run_job"))

    response = browser.post(TRIGGER, HTTP_X_CSRFTOKEN=csrf_token(browser))

    occurrence = Occurrence.objects.get()
    assert response.status_code == 201
    assert response.json() == {
        "occurrence": occurrence.id,
        "status": "scheduled",
        "url": f"/tickerq/api/occurrences/{occurrence.id}",
    }
    assert response["Location"] == f"/tickerq/api/occurrences/{occurrence.id}"
    assert (occurrence.job_name, occurrence.manual, occurrence.triggered_by, occurrence.priority) == (
        "ResendErrorEmailJob",
        True,
        "script",
        Priority.HIGH,
    )


def test_a_session_post_without_the_csrf_token_is_refused(browser, make_user):
    logged_in(browser, make_user("jobs.run_job"))
    csrf_token(browser)

    response = browser.post(TRIGGER, content_type="application/json")

    assert response.status_code == 403
    assert response.json() == {
        "error": {
            "status": 403,
            "message": "CSRF token missing or incorrect: send the session's X-CSRFToken header, "
            "or Basic credentials with Content-Type: application/json.",
        }
    }
    assert not Occurrence.objects.exists()


def test_basic_credentials_with_a_json_body_trigger_without_a_token(browser, make_user):
    make_user("jobs.run_job")

    response = browser.post(TRIGGER, data={}, content_type="application/json", **basic())

    assert response.status_code == 201
    assert Occurrence.objects.get().triggered_by == "script"


def test_basic_credentials_with_a_form_body_still_need_the_token(browser, make_user):
    # What a cross-site form could send, with the Basic credentials a browser remembers.
    make_user("jobs.run_job")

    response = browser.post(TRIGGER, data={"x": "1"}, **basic())

    assert response.status_code == 403
    assert not Occurrence.objects.exists()


def test_triggering_an_unknown_definition_is_a_404(browser, make_user):
    make_user("jobs.run_job")

    response = browser.post("/tickerq/api/jobs/Nope/trigger", content_type="application/json", **basic())

    assert response.status_code == 404
    assert response.json() == {"error": {"status": 404, "message": "No such job definition: Nope."}}


def test_a_definition_whose_name_has_a_slash_can_be_triggered(browser, make_user, no_seed_definitions):
    make_definition("reports/daily", every=60)
    make_user("jobs.run_job")

    response = browser.post(reverse("api:trigger", args=["reports/daily"]), content_type="application/json", **basic())

    assert response.status_code == 201
    assert Occurrence.objects.get().job_name == "reports/daily"


def test_trigger_refuses_get_with_405(client, make_user):
    logged_in(client, make_user("jobs.run_job"))

    response = client.get(TRIGGER)

    assert response.status_code == 405 and response["Allow"] == "POST"
