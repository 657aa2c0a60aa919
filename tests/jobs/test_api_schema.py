"""/tickerq/api/openapi.json: a valid OpenAPI description of every endpoint, which the real answers match."""

import re
import uuid
from datetime import UTC, datetime, timedelta

import pytest
from jsonschema import Draft202012Validator
from openapi_spec_validator import validate

from jobs.models import Attempt, Occurrence
from outbox.models import OutboxMessage
from tests.jobs.api_helpers import basic, staff

pytestmark = pytest.mark.django_db

AT = datetime(2026, 3, 1, 12, 0, tzinfo=UTC)
EVERYTHING = [
    "django_celery_beat.view_periodictask",
    "jobs.view_occurrence",
    "outbox.view_outboxmessage",
    "jobs.run_job",
    "jobs.cancel_occurrence",
]


@pytest.fixture
def description(client):
    client.force_login(staff(username="reader"))
    response = client.get("/tickerq/api/openapi.json")
    client.logout()
    assert response.status_code == 200
    return response.json()


@pytest.fixture
def run():
    """A finished occurrence with an attempt and an event, and a scheduled one with nothing yet."""
    occurrence = Occurrence.objects.create(
        job_name="ResendErrorEmailJob",
        scheduled_for=AT,
        run_after=AT,
        status=Occurrence.Status.FAILED,
        attempts=1,
        scheduler="host-1",
        started_at=AT,
        finished_at=AT + timedelta(seconds=2),
        reason="boom",
    )
    Attempt.objects.create(
        occurrence=occurrence,
        number=1,
        status="failed",
        scheduler="host-1",
        started_at=AT,
        finished_at=AT + timedelta(seconds=2),
        duration=timedelta(seconds=2),
        error="boom",
    )
    OutboxMessage.objects.create(
        message_id=uuid.UUID(int=1),
        message_types=["urn:message:BookWorm.Contracts:Event"],
        exchange="BookWorm.Contracts:Event",
        body={},
        origin=f"occurrence:{occurrence.id}",
    )
    Occurrence.objects.create(job_name="CleanUpSentEmailJob", scheduled_for=AT, run_after=AT, manual=True)
    return occurrence


def response_schema(description: dict, path: str, method: str, status: int) -> dict:
    return description["paths"][path][method]["responses"][str(status)]["content"]["application/json"]["schema"]


def assert_matches(description: dict, schema: dict, body) -> None:
    # The component schemas ride along, so the schema's "#/components/schemas/..." references resolve.
    validator = Draft202012Validator(
        {**schema, "components": description["components"]}, format_checker=Draft202012Validator.FORMAT_CHECKER
    )
    errors = [f"{list(e.absolute_path)}: {e.message}" for e in validator.iter_errors(body)]
    assert errors == []


def component(name: str) -> dict:
    return {"$ref": f"#/components/schemas/{name}"}


# The description itself.


def test_the_description_is_a_valid_openapi_document(description):
    validate(description)

    assert (description["openapi"], description["info"]["title"]) == ("3.1.0", "BookWorm Scheduler")


def test_the_description_names_every_endpoint_and_how_to_authenticate(description):
    operations = {(path, method) for path, methods in description["paths"].items() for method in methods}

    assert operations == {
        ("/tickerq/api/", "get"),
        ("/tickerq/api/jobs/", "get"),
        ("/tickerq/api/history/", "get"),
        ("/tickerq/api/occurrences/{pk}", "get"),
        ("/tickerq/api/outbox/", "get"),
        ("/tickerq/api/jobs/{name}/trigger", "post"),
        ("/tickerq/api/jobs/{job}/schedule", "post"),
        ("/tickerq/api/occurrences/{pk}/cancel", "post"),
    }
    for path, method in operations:
        operation = description["paths"][path][method]
        assert operation["security"] == [{"BearerToken": []}, {"BasicCredentials": []}, {"SessionCookie": []}]
        assert response_schema(description, path, method, 401) == component("Error")
        assert response_schema(description, path, method, 403) == component("Error")
    assert description["components"]["securitySchemes"]["BearerToken"]["scheme"] == "bearer"
    assert description["components"]["securitySchemes"]["BasicCredentials"]["scheme"] == "basic"
    assert description["components"]["securitySchemes"]["SessionCookie"]["in"] == "cookie"


def test_the_description_names_each_endpoints_parameters(description):
    def parameters(path, method):
        return [(p["in"], p["name"], p["required"]) for p in description["paths"][path][method]["parameters"]]

    assert parameters("/tickerq/api/history/", "get") == [
        ("query", "job", False),
        ("query", "status", False),
        ("query", "manual", False),
        ("query", "limit", False),
    ]
    assert parameters("/tickerq/api/occurrences/{pk}", "get") == [("path", "pk", True)]
    assert parameters("/tickerq/api/jobs/{name}/trigger", "post") == [("path", "name", True)]
    assert parameters("/tickerq/api/occurrences/{pk}/cancel", "post") == [("path", "pk", True)]
    assert parameters("/tickerq/api/jobs/{job}/schedule", "post") == [("path", "job", True)]
    body = description["paths"]["/tickerq/api/jobs/{job}/schedule"]["post"]["requestBody"]
    # Optional: no body (or null) is a run as soon as possible, without a payload.
    assert body["content"]["application/json"]["schema"] == {"anyOf": [component("ScheduleRequest"), {"type": "null"}]}
    assert body["required"] is False
    request = description["components"]["schemas"]["ScheduleRequest"]
    assert list(request["properties"]) == ["at", "payload", "key", "expires", "then"]
    assert request["properties"]["at"]["anyOf"][0] == {"format": "date-time", "type": "string"}
    assert parameters("/tickerq/api/jobs/", "get") == []
    limit = description["paths"]["/tickerq/api/history/"]["get"]["parameters"][3]
    assert (limit["schema"]["minimum"], limit["schema"]["maximum"], limit["schema"]["default"]) == (1, 1000, 20)
    assert limit["description"] == "a whole number from 1 to 1000"


def test_the_description_names_each_endpoints_response_schema(description):
    assert response_schema(description, "/tickerq/api/", "get", 200) == component("Index")
    assert response_schema(description, "/tickerq/api/jobs/", "get", 200)["items"] == component("JobRow")
    assert response_schema(description, "/tickerq/api/history/", "get", 200)["items"] == component("HistoryRow")
    assert response_schema(description, "/tickerq/api/history/", "get", 400) == component("Error")
    assert response_schema(description, "/tickerq/api/occurrences/{pk}", "get", 200) == component("OccurrenceDetail")
    assert response_schema(description, "/tickerq/api/occurrences/{pk}", "get", 404) == component("Error")
    assert response_schema(description, "/tickerq/api/outbox/", "get", 200) == component("OutboxStatus")
    assert response_schema(description, "/tickerq/api/jobs/{name}/trigger", "post", 201) == component("Triggered")
    assert response_schema(description, "/tickerq/api/jobs/{name}/trigger", "post", 404) == component("Error")
    assert response_schema(description, "/tickerq/api/occurrences/{pk}/cancel", "post", 200) == component("Cancelled")
    for status, schema in [(201, "OccurrenceDetail"), (200, "OccurrenceDetail"), (400, "Error")]:
        assert response_schema(description, "/tickerq/api/jobs/{job}/schedule", "post", status) == component(schema)
    assert sorted(description["components"]["schemas"]["OccurrenceDetail"]["required"]) == [
        "attempts",
        "children",
        "error",
        "events",
        "events_truncated",
        "expires_at",
        "id",
        "job",
        "key",
        "manual",
        "parent",
        "payload",
        "result",
        "scheduled_for",
        "status",
        "timings",
        "triggered_by",
        "url",
    ]
    assert response_schema(description, "/tickerq/api/occurrences/{pk}/cancel", "post", 404) == component("Error")
    assert response_schema(description, "/tickerq/api/occurrences/{pk}/cancel", "post", 409) == component("Error")
    assert description["components"]["schemas"]["Cancelled"]["properties"]["cancel"]["enum"] == [
        "cancelled",
        "requested",
    ]
    assert sorted(description["components"]["schemas"]["HistoryRow"]["required"]) == [
        "attempt",
        "error",
        "finished_at",
        "id",
        "instance",
        "job",
        "manual",
        "scheduled_for",
        "started_at",
        "status",
        "url",
    ]


def test_the_description_is_for_staff_only(client):
    response = client.get("/tickerq/api/openapi.json")

    assert response.status_code == 401 and "WWW-Authenticate" in response
    assert response.json()["error"]["status"] == 401


def test_the_description_is_listed_in_the_index(client):
    client.force_login(staff())

    endpoints = client.get("/tickerq/api/").json()["endpoints"]

    assert {"method": "GET", "url": "/tickerq/api/openapi.json", "command": None} in endpoints


def test_the_interactive_page_loads_its_scripts_from_this_site(client):
    assert client.get("/tickerq/api/docs").status_code == 401
    client.force_login(staff())

    page = client.get("/tickerq/api/docs").content.decode()

    scripts = re.findall(r'<script[^>]+src="([^"]+)"', page) + re.findall(r'<link[^>]+href="([^"]+)"', page)
    assert "/static/ninja/swagger-ui-bundle.js" in scripts
    assert all(url.startswith("/static/") for url in scripts), scripts
    assert "/tickerq/api/openapi.json" in page


# The real answers against the description.


def test_each_read_endpoints_answer_matches_its_documented_schema(client, description, run):
    client.force_login(staff(*EVERYTHING))

    for url, path in [
        ("/tickerq/api/", "/tickerq/api/"),
        ("/tickerq/api/jobs/", "/tickerq/api/jobs/"),
        ("/tickerq/api/history/", "/tickerq/api/history/"),
        ("/tickerq/api/history/?job=ResendErrorEmailJob&status=failed&manual=false&limit=1", "/tickerq/api/history/"),
        (f"/tickerq/api/occurrences/{run.id}", "/tickerq/api/occurrences/{pk}"),
        ("/tickerq/api/outbox/", "/tickerq/api/outbox/"),
    ]:
        response = client.get(url)
        assert response.status_code == 200, url
        assert_matches(description, response_schema(description, path, "get", 200), response.json())


def test_the_answers_hold_what_the_schema_checks(client, description, run):
    # Not empty lists that would match any array: a row of each kind, nulls and values both.
    client.force_login(staff(*EVERYTHING))

    jobs = client.get("/tickerq/api/jobs/").json()
    history = client.get("/tickerq/api/history/").json()
    detail = client.get(f"/tickerq/api/occurrences/{run.id}").json()

    assert [job["name"] for job in jobs] == ["CleanUpSentEmailJob", "ResendErrorEmailJob"]
    assert [(row["job"], row["instance"], row["error"]) for row in history] == [
        ("CleanUpSentEmailJob", None, None),
        ("ResendErrorEmailJob", "host-1", "boom"),
    ]
    assert (len(detail["attempts"]), detail["events"][0]["status"], detail["triggered_by"]) == (1, "pending", None)


def test_a_triggers_answer_matches_its_documented_schema(client, description):
    staff("jobs.run_job")

    response = client.post("/tickerq/api/jobs/ResendErrorEmailJob/trigger", content_type="application/json", **basic())

    assert response.status_code == 201
    schema = response_schema(description, "/tickerq/api/jobs/{name}/trigger", "post", 201)
    assert_matches(description, schema, response.json())


def test_a_schedules_answers_match_their_documented_schemas(client, description):
    staff("jobs.run_job")
    url = "/tickerq/api/jobs/CleanUpSentEmailJob/schedule"
    body = {"at": "2030-03-01T12:00:00+01:00", "payload": {"order_id": 7}, "key": "k", "expires": None, "then": []}

    created = client.post(url, data=body, content_type="application/json", **basic())
    again = client.post(url, data=body, content_type="application/json", **basic())
    refused = client.post(url, data={"at": "noon"}, content_type="application/json", **basic())

    assert (created.status_code, again.status_code, refused.status_code) == (201, 200, 400)
    for answer in (created, again):
        schema = response_schema(description, "/tickerq/api/jobs/{job}/schedule", "post", answer.status_code)
        assert_matches(description, schema, answer.json())
    assert_matches(description, component("Error"), refused.json())


def test_a_cancels_answer_and_its_409_match_their_documented_schemas(client, description, run):
    staff("jobs.cancel_occurrence")
    url = f"/tickerq/api/occurrences/{Occurrence.objects.get(status='scheduled').id}/cancel"

    cancelled = client.post(url, content_type="application/json", **basic())
    again = client.post(url, content_type="application/json", **basic())

    assert (cancelled.status_code, cancelled.json()["cancel"], again.status_code) == (200, "cancelled", 409)
    schema = response_schema(description, "/tickerq/api/occurrences/{pk}/cancel", "post", 200)
    assert_matches(description, schema, cancelled.json())
    assert response_schema(description, "/tickerq/api/occurrences/{pk}/cancel", "post", 409) == component("Error")
    assert_matches(description, component("Error"), again.json())


@pytest.mark.parametrize(
    "username, permissions, method, url, status",
    [
        (None, [], "get", "/tickerq/api/jobs/", 401),
        ("script", [], "get", "/tickerq/api/outbox/", 403),
        ("script", EVERYTHING, "get", "/tickerq/api/history/?limit=0", 400),
        ("script", EVERYTHING, "get", "/tickerq/api/history/?colour=red", 400),
        ("script", EVERYTHING, "get", "/tickerq/api/occurrences/999999999", 404),
        ("script", EVERYTHING, "post", "/tickerq/api/jobs/Nope/trigger", 404),
        ("script", EVERYTHING, "post", "/tickerq/api/occurrences/999999999/cancel", 404),
        ("script", ["jobs.view_occurrence"], "post", "/tickerq/api/occurrences/999999999/cancel", 403),
        ("script", EVERYTHING, "post", "/tickerq/api/outbox/", 405),
        ("script", EVERYTHING, "delete", "/tickerq/api/no/such/path", 404),
    ],
)
def test_every_error_matches_the_documented_error_schema(
    client, description, username, permissions, method, url, status
):
    if username:
        staff(*permissions, username=username)
    credentials = basic(username) if username else {}

    response = getattr(client, method)(url, content_type="application/json", **credentials)

    assert response.status_code == status
    assert_matches(description, component("Error"), response.json())
    assert response.json()["error"]["status"] == status


def test_a_row_that_strays_from_its_schema_is_a_500_in_the_error_shape_not_a_silent_difference(
    client, monkeypatch, caplog
):
    # A key added to the rows and not to their schema: the command line would print it, the API refuses.
    monkeypatch.setattr("jobs.web.api.job_rows", lambda: [{"name": "a", "colour": "red"}])
    client.force_login(staff("django_celery_beat.view_periodictask"))

    response = client.get("/tickerq/api/jobs/")

    assert response.status_code == 500
    assert response.json() == {"error": {"status": 500, "message": "Internal error; the server's log has the details."}}
    assert "API request failed: GET /tickerq/api/jobs/" in caplog.text
