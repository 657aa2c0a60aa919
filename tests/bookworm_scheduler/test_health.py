"""/health/ and /alive against the real PostgreSQL and RabbitMQ.

The checks run in threads with connections of their own, so these tests commit what the checks
should see (transactional_db) rather than keep it in the test's transaction.
"""

import asyncio
import logging
import re
import subprocess
import uuid
from datetime import timedelta

import pytest
from django.core.management import call_command
from django.db import connections

from bookworm_scheduler.health import Migrations, SchedulerHeartbeat
from bookworm_scheduler.kernel.clock import database_now
from jobs.models import SchedulerInstance
from outbox.models import OutboxMessage, RelayInstance

pytestmark = pytest.mark.django_db(transaction=True)

ALL_OK = {
    "database": "OK",
    "broker": "OK",
    "schedulers": "OK",
    "relays": "OK",
    "outbox_backlog": "OK",
    "migrations": "OK",
}


def instance(model, *, age: float = 0, state="running"):
    now = database_now()
    return model.objects.create(
        session=uuid.uuid4(),
        instance_id=f"test-{model.__name__.lower()}",
        host="test-host",
        pid=4242,
        version="1.0.0",
        started_at=now - timedelta(seconds=age + 60),
        last_seen=now - timedelta(seconds=age),
        state=state,
    )


def pending_message(*, age: float, status="pending"):
    created = database_now() - timedelta(seconds=age)
    return OutboxMessage.objects.create(
        message_types=["urn:message:BookWorm.Tests:Probe"],
        exchange="BookWorm.Tests:Probe",
        body={},
        created_at=created,
        available_at=created,
        status=status,
        delivered_at=created if status == "delivered" else None,
    )


def health(client):
    response = client.get("/health/", HTTP_ACCEPT="application/json")
    return response.status_code, response.json()


def failing(results: dict) -> dict:
    return {name: result for name, result in results.items() if result != "OK"}


def logged(caplog) -> list[tuple]:
    """The WARNING and ERROR records, by level, action, check, error and whether a traceback is attached."""
    return [
        (
            record.levelname,
            getattr(record, "action", None),
            getattr(record, "check", None),
            getattr(record, "error", None),
            record.exc_info is not None,
        )
        for record in caplog.records
        if record.levelno >= logging.WARNING
    ]


@pytest.fixture
def scheduler():
    return instance(SchedulerInstance)


@pytest.fixture
def relay():
    return instance(RelayInstance)


def test_it_is_200_when_every_check_passes(client, scheduler, relay):
    assert health(client) == (200, ALL_OK)


def test_its_json_keys_are_the_names_an_operator_knows_the_checks_by(client, scheduler, relay):
    status, results = health(client)

    assert list(results) == ["database", "broker", "schedulers", "relays", "outbox_backlog", "migrations"]


def test_it_answers_json_to_format_json_and_html_by_default(client, scheduler, relay):
    assert client.get("/health/?format=json").json() == ALL_OK
    response = client.get("/health/")
    assert response.status_code == 200
    assert response["Content-Type"].startswith("text/html")
    assert re.findall(r'<td data-label="Service">([^<]*)</td>', response.text) == [
        "database",
        "broker",
        "schedulers",
        "relays",
        "outbox_backlog",
        "migrations",
    ]
    # The state in words, where django-health-check's heading had emoji (empty boxes without an emoji font).
    assert re.search(r"<title>\s*System status: OK\s*</title>", response.text)
    assert "<h1>System status: OK</h1>" in response.text


def test_the_text_and_openmetrics_formats_use_the_same_names(client, scheduler, relay):
    text = client.get("/health/?format=text").text
    metrics = client.get("/health/?format=openmetrics").text

    assert text == "database: OK\nbroker: OK\nschedulers: OK\nrelays: OK\noutbox_backlog: OK\nmigrations: OK\n"
    assert re.findall(r"^django_health_check_status\{(.*)\} 1$", metrics, re.MULTILINE) == [
        'check="database"',
        'check="broker"',
        'check="schedulers"',
        'check="relays"',
        'check="outbox_backlog"',
        'check="migrations"',
    ]


def test_a_stale_scheduler_heartbeat_fails_the_scheduler_check_alone(client, relay):
    instance(SchedulerInstance, age=75)

    status, results = health(client)

    assert status == 500
    assert failing(results) == {
        "schedulers": "Unavailable: no scheduler has beaten in the last 60 s (the latest beat 75 s ago)"
    }


def test_the_heartbeat_age_is_a_setting(client, relay, settings):
    instance(SchedulerInstance, age=75)
    settings.HEALTH_HEARTBEAT_MAX_AGE_SECONDS = 90

    assert health(client) == (200, ALL_OK)


def test_a_scheduler_that_said_goodbye_is_not_alive_however_recent(client, relay):
    instance(SchedulerInstance, state="stopped")

    status, results = health(client)

    assert status == 500
    assert failing(results) == {
        "schedulers": "Unavailable: no scheduler has beaten in the last 60 s (the latest beat 0 s ago)"
    }


def test_no_relay_fails_the_relay_check_and_the_html_names_it(client, scheduler):
    status, results = health(client)

    assert status == 500
    assert failing(results) == {"relays": "Unavailable: no relay has registered"}
    page = client.get("/health/")
    assert page.status_code == 500
    assert '<td data-label="Service">relays</td>' in page.text and "no relay has registered" in page.text
    assert re.search(r"<title>\s*System status: failing\s*</title>", page.text)
    assert "<h1>System status: failing</h1>" in page.text and "\N{FIRE}" not in page.text


def test_a_failing_check_logs_one_warning_line_naming_it_and_nothing_at_error(client, scheduler, caplog):
    assert health(client)[0] == 500

    assert logged(caplog) == [
        ("WARNING", "health_check_failed", "relays", "Unavailable: no relay has registered", False),
    ]


def test_each_poll_of_a_failing_check_logs_its_own_line(client, scheduler, caplog):
    health(client)
    health(client)

    assert [check for _, _, check, _, _ in logged(caplog)] == ["relays", "relays"]


def test_a_check_that_does_not_answer_in_time_fails_with_one_warning_line(
    client, scheduler, relay, monkeypatch, caplog
):
    async def hang(check):
        await asyncio.Event().wait()  # never set: the check's timeout cancels it

    monkeypatch.setattr(Migrations, "timeout", timedelta(milliseconds=200))
    monkeypatch.setattr(Migrations, "run", hang)

    status, results = health(client)

    assert status == 500
    assert failing(results) == {"migrations": "Unavailable: no answer within 0.2 s"}
    assert logged(caplog) == [
        ("WARNING", "health_check_failed", "migrations", "Unavailable: no answer within 0.2 s", False),
    ]


def test_a_check_that_crashes_logs_its_traceback_at_error_once(client, relay, monkeypatch, caplog):
    def crash(check):
        raise RuntimeError("a bug of the check")

    monkeypatch.setattr(SchedulerHeartbeat, "run", crash)

    status, results = health(client)

    assert status == 500
    assert failing(results) == {"schedulers": "Unknown Error: RuntimeError"}
    assert logged(caplog) == [("ERROR", "health_check_failed", "schedulers", "Unknown Error: RuntimeError", True)]


def test_a_lost_relay_fails_the_relay_check(client, scheduler):
    instance(RelayInstance, age=200, state="lost")

    status, results = health(client)

    assert status == 500
    assert failing(results) == {
        "relays": "Unavailable: no relay has beaten in the last 60 s (the latest beat 200 s ago)"
    }


def test_an_old_pending_message_fails_the_backlog_check(client, scheduler, relay):
    pending_message(age=400)
    pending_message(age=10)

    status, results = health(client)

    assert status == 500
    assert failing(results) == {
        "outbox_backlog": "Unavailable: the oldest pending message is 400 s old (more than 300 s)"
    }


def test_young_pending_messages_and_old_delivered_ones_pass_the_backlog_check(client, scheduler, relay):
    pending_message(age=200)
    pending_message(age=100_000, status="delivered")

    assert health(client) == (200, ALL_OK)


def test_the_backlog_age_is_a_setting(client, scheduler, relay, settings):
    pending_message(age=400)
    settings.HEALTH_OUTBOX_MAX_AGE_SECONDS = 500

    assert health(client) == (200, ALL_OK)


def test_an_unapplied_migration_fails_the_migrations_check(client, scheduler):
    # Really unapplied: outbox is migrated back to before the relay instance table (dropped),
    # and forward again at the end.
    call_command("migrate", "outbox", "0004_exchange_index", verbosity=0)
    try:
        status, results = health(client)
    finally:
        call_command("migrate", "outbox", verbosity=0)

    assert status == 500
    assert set(failing(results)) == {"migrations", "relays"}
    assert results["migrations"].startswith(
        "Unavailable: 2 unapplied: outbox.0005_relayinstance, outbox.0006_state_words"
    )
    assert results["relays"] == "Unavailable: cannot read the database (ProgrammingError)"


@pytest.mark.slow
def test_a_stopped_broker_fails_the_rabbitmq_check(client, scheduler, relay):
    try:
        subprocess.run(["rabbitmqctl", "stop_app"], check=True, capture_output=True, timeout=120)
        status, results = health(client)
    finally:
        subprocess.run(["rabbitmqctl", "start_app"], check=True, capture_output=True, timeout=120)
        subprocess.run(["rabbitmqctl", "await_startup"], check=True, capture_output=True, timeout=120)

    assert status == 500
    assert set(failing(results)) == {"broker"}
    assert results["broker"].startswith("Unavailable: ")


def test_no_output_shows_a_password_or_a_connection_string(client, settings, caplog):
    """Both the database and the broker unreachable, with passwords in their settings; nor in the log."""
    settings.RABBITMQ_URL = "amqp://bookworm:broker-pw-1234@127.0.0.1:1/%2F"
    database = connections.settings["default"]
    saved = {key: database[key] for key in ("PORT", "PASSWORD")}
    database.update(PORT=1, PASSWORD="database-pw-5678")
    try:
        responses = [
            client.get("/health/", HTTP_ACCEPT="application/json"),
            client.get("/health/"),
            client.get("/health/?format=text"),
        ]
    finally:
        database.update(saved)

    assert [response.status_code for response in responses] == [500, 500, 500]
    assert responses[0].json() == {
        "database": "Unavailable: connection failed",
        "broker": responses[0].json()["broker"],
        "schedulers": "Unavailable: cannot read the database (OperationalError)",
        "relays": "Unavailable: cannot read the database (OperationalError)",
        "outbox_backlog": "Unavailable: cannot read the database (OperationalError)",
        "migrations": "Unavailable: cannot read the database (OperationalError)",
    }
    assert responses[0].json()["broker"].startswith("Unavailable: 127.0.0.1:1 (RABBITMQ_URL): ")
    assert len(logged(caplog)) == 3 * 6
    for text in [response.content.decode() for response in responses] + [caplog.text]:
        for secret in ("broker-pw-1234", "database-pw-5678", "amqp://", "postgres://", "bookworm:"):
            assert secret not in text


def test_alive_is_200_whatever_the_host_and_without_https(client, settings, django_assert_num_queries):
    settings.SECURE_SSL_REDIRECT = True
    settings.ALLOWED_HOSTS = ["scheduler.example.com"]

    with django_assert_num_queries(0):
        response = client.get("/alive", HTTP_HOST="10.1.2.3:8000")

    assert response.status_code == 200
    assert response.content == b"alive\n"
    assert "no-cache" in response["Cache-Control"]
    assert client.get("/health/", HTTP_HOST="10.1.2.3:8000").status_code == 400  # the rest checks the host
