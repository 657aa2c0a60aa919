import pytest


@pytest.mark.django_db
def test_health_reports_the_database_and_the_broker(client):
    results = client.get("/health/?format=json").json()
    assert (results["Database(alias='default')"], results["RabbitMQ()"]) == ("OK", "OK")


@pytest.mark.django_db
def test_health_is_an_error_when_the_broker_cannot_be_reached(client, settings):
    settings.RABBITMQ_URL = "amqp://guest:guest@127.0.0.1:1/%2F"
    response = client.get("/health/?format=json")
    assert response.status_code == 500
    assert response.json()["RabbitMQ()"].startswith("Unavailable: 127.0.0.1:1: ")
    assert "guest" not in response.json()["RabbitMQ()"]
