"""Inputs crafted to be slow or to break a reader are refused with a clear error, within a deadline: cron expressions,
zone names and payloads (the admin's forms, the command line, @job, jobs.schedule) and the API's bodies (too big, too
deep, thousands of unknown fields, wrong types). How long each takes is bench/hostile_inputs.py's to measure
(docs/benchmarks.md, "Hostile inputs"); here a deadline only catches a refusal of a pure function that hangs."""

import json
import threading

import pytest

from jobs.engine.oneoff import PAYLOAD_MAX_DEPTH, PayloadError, check_payload
from jobs.engine.schedules import InvalidSchedule, get_zone, validate_cron
from jobs.models import Occurrence
from tests.jobs.api_helpers import basic, staff

DEADLINE = 30.0  # seconds: far beyond any refusal's time, short of a hang
SCHEDULE = "/tickerq/api/jobs/test.echo/schedule"


def outcome_within(call, deadline: float = DEADLINE):
    """call() run in a thread: what it raised (or returned), or a failure if it was still running at the deadline."""
    result = {}

    def run():
        try:
            result["value"] = call()
        except Exception as exc:  # the refusal under test
            result["value"] = exc

    thread = threading.Thread(target=run, daemon=True)
    thread.start()
    thread.join(deadline)
    assert not thread.is_alive(), f"no answer within {deadline} s"
    return result["value"]


def nested(depth: int) -> dict:
    payload: dict = {}
    for _ in range(depth - 1):
        payload = {"a": payload}
    return payload


# Cron expressions, zones and payloads: pure functions, no database.


@pytest.mark.unit
@pytest.mark.parametrize(
    "expression, message",
    [
        ("0 0 31 2 *", "never fires: day-of-month 31 does not occur in month 2 in cron expression '0 0 31 2 *'"),
        ("1," * 500_000 + "0 * * * *", "cron expression is 1000009 characters long, more than 1000: '1,1,1,"),
        (",".join(["*/1"] * 10_000) + " * * * *", "cron expression is 40007 characters long, more than 1000"),
        ("@" + "x" * 1_000_000, "cron expression is 1000001 characters long, more than 1000: '@xxx"),
        ("0-99999999 * * * *", "Bad minute in cron expression '0-99999999 * * * *'"),
    ],
    ids=["never fires", "a 1 MB list", "a 10,000-item step list", "a 1 MB macro", "a huge range"],
)
def test_a_crafted_cron_expression_is_refused_with_its_reason(expression, message):
    refused = outcome_within(lambda: validate_cron(expression))

    assert isinstance(refused, InvalidSchedule)
    assert str(refused).startswith(message)
    assert len(str(refused)) < 200


@pytest.mark.unit
def test_a_cron_expression_of_every_listed_value_is_still_accepted():
    every = f"{','.join(map(str, range(60)))} {','.join(map(str, range(24)))} * * *"
    assert outcome_within(lambda: validate_cron(every)) == every


@pytest.mark.unit
@pytest.mark.parametrize(
    "name, message",
    [
        ("Europe/" + "x" * 100_000, "unknown time zone: Europe/xxx"),
        ("A" * 1_000_000, "unknown time zone: AAA"),
        ("../../../../etc/passwd", "unknown time zone: ../../../../etc/passwd"),
    ],
    ids=["100 kB", "1 MB", "a path"],
)
def test_a_crafted_zone_name_is_refused_without_a_traceback(name, message):
    refused = outcome_within(lambda: get_zone(name))

    assert isinstance(refused, InvalidSchedule)
    assert str(refused).startswith(message)
    assert len(str(refused)) < 200


@pytest.mark.unit
@pytest.mark.parametrize("depth", [PAYLOAD_MAX_DEPTH + 1, 900, 100_000])
def test_a_payload_nested_deeper_than_the_limit_is_refused(depth):
    refused = outcome_within(lambda: check_payload(nested(depth)))

    assert isinstance(refused, PayloadError)
    assert str(refused) == "the payload nests objects and lists more than 32 levels deep"


@pytest.mark.unit
def test_a_payload_at_the_depth_limit_is_accepted():
    assert check_payload(nested(PAYLOAD_MAX_DEPTH)) == nested(PAYLOAD_MAX_DEPTH)
    assert check_payload({"list": [[[[1]]]], "tuple": (1, (2,))}) == {"list": [[[[1]]]], "tuple": [1, [2]]}


# The API's bodies.


def post(client, body: str):
    # In the test's thread: another thread's connection would not see the test's transaction (its user).
    return client.post(SCHEDULE, data=body, content_type="application/json", **basic())


@pytest.mark.django_db
def test_a_body_over_the_limit_is_refused_unread_with_413(client, settings):
    staff("jobs.run_job")
    settings.API_BODY_MAX_BYTES = 70_000

    response = post(client, json.dumps({"payload": {"s": "x" * 80_000}}))

    assert response.status_code == 413
    assert response.json() == {
        "error": {"status": 413, "message": "The body is 80022 bytes, more than API_BODY_MAX_BYTES (70000)."}
    }


@pytest.mark.django_db
def test_a_body_nested_beyond_what_json_reads_is_a_400(client):
    staff("jobs.run_job")

    response = post(client, '{"payload": {"a": ' + "[" * 100_000 + "]" * 100_000 + "}}")

    assert response.status_code == 400
    assert response.json()["error"]["message"] == (
        "the body is not JSON this service reads: it nests arrays or objects too deeply"
    )


@pytest.mark.django_db
def test_a_payload_nested_too_deeply_in_a_body_is_a_400_naming_the_limit(client):
    staff("jobs.run_job")

    response = post(client, json.dumps({"payload": nested(100)}))

    assert response.status_code == 400
    assert response.json()["error"]["message"] == "the payload nests objects and lists more than 32 levels deep"


@pytest.mark.django_db
def test_thousands_of_unknown_fields_get_one_short_line(client):
    staff("jobs.run_job")

    response = post(client, json.dumps({f"x{i}": 0 for i in range(20_000)}))

    assert response.status_code == 400
    message = response.json()["error"]["message"]
    assert message.startswith("unknown field: x0 (known: at, payload, key, expires, then); unknown field: x1 ")
    assert message.endswith("; and 19990 more")
    assert len(response.content) < 2_000


@pytest.mark.django_db
@pytest.mark.parametrize(
    "body, message",
    [
        ('{"key": 5}', "key must be a string of at most 200 characters, or null"),
        (
            '{"at": "noon"}',
            "at must be an ISO 8601 time with its offset (2026-12-24T18:00:00+01:00), or null: as soon as possible",
        ),
        ('{"payload": [1]}', "payload must be a JSON object, or null"),
        ('{"kee": "x"}', "unknown field: kee (known: at, payload, key, expires, then)"),
        ("[1, 2]", "the body must be a JSON object: {at, payload, key, expires, then}, each optional"),
        ('{"payload": ', "the body is not JSON: Expecting value: line 1 column 13 (char 12)"),
    ],
    ids=["wrong type", "bad time", "payload not an object", "unknown field", "not an object", "malformed"],
)
def test_a_wrong_body_is_a_400_naming_the_field(client, body, message):
    staff("jobs.run_job")

    response = post(client, body)

    assert response.status_code == 400
    assert response.json() == {"error": {"status": 400, "message": message}}


@pytest.mark.django_db
def test_a_body_over_djangos_own_limit_is_a_413_too(client, settings):
    staff("jobs.run_job")
    settings.API_BODY_MAX_BYTES, settings.DATA_UPLOAD_MAX_MEMORY_SIZE = 100_000, 50_000

    response = post(client, json.dumps({"payload": {"s": "x" * 60_000}}))

    assert response.status_code == 413
    assert response.json()["error"]["message"] == "The body is more than DATA_UPLOAD_MAX_MEMORY_SIZE (50000)."


@pytest.mark.django_db
def test_a_run_with_more_follow_ups_than_the_limit_is_a_400_and_schedules_nothing(client):
    staff("jobs.run_job")

    response = post(client, json.dumps({"then": [{"job": "test.echo"}] * 21}))

    assert response.status_code == 400
    assert response.json()["error"]["message"] == "a run has at most 20 follow-ups, not 21"
    assert not Occurrence.objects.exists()
    assert post(client, json.dumps({"then": [{"job": "test.echo"}] * 20})).status_code == 201
