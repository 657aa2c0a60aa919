import logging

import pytest


@pytest.mark.django_db
def test_health_reports_the_database_and_the_broker(client):
    results = client.get("/health/?format=json").json()
    assert (results["database"], results["broker"]) == ("OK", "OK")


@pytest.mark.django_db
def test_health_is_an_error_when_the_broker_cannot_be_reached(client, settings):
    settings.RABBITMQ_URL = "amqp://guest:guest@127.0.0.1:1/%2F"
    response = client.get("/health/?format=json")
    assert response.status_code == 500
    assert response.json()["broker"].startswith("Unavailable: 127.0.0.1:1 (RABBITMQ_URL): ")
    assert "guest" not in response.json()["broker"]


@pytest.mark.django_db
def test_an_unreachable_broker_logs_one_warning_line_naming_the_broker(client, settings, caplog):
    settings.RABBITMQ_URL = "amqp://guest:guest@127.0.0.1:1/%2F"

    client.get("/health/?format=json")

    [record] = [record for record in caplog.records if getattr(record, "check", None) == "broker"]
    assert (record.levelname, record.action, record.exc_info) == ("WARNING", "health_check_failed", None)
    assert record.error.startswith("Unavailable: 127.0.0.1:1 (RABBITMQ_URL): ")
    assert "guest" not in record.getMessage()
    assert [record.name for record in caplog.records if record.levelno >= logging.ERROR] == []
