"""The relay's messages as BookWorm's MassTransit consumers receive them."""

import re
import uuid

import pytest
from django.db import transaction

from jobs.seed.contracts import CleanUpSentEmailIntegrationEvent
from outbox.publishing import publish

GUID = re.compile(r"^[0-9a-f]{8}-[0-9a-f]{4}-[0-9a-f]{4}-[0-9a-f]{4}-[0-9a-f]{12}$")
URI = re.compile(r"^rabbitmq://[^/\s]+/\S+$")
ENVELOPE_FIELDS = {
    "messageId", "requestId", "correlationId", "conversationId", "initiatorId", "sourceAddress",
    "destinationAddress", "responseAddress", "faultAddress", "messageType", "message",
    "expirationTime", "sentTime", "headers", "host",
}  # fmt: skip
BASE_EXCHANGE = "BookWorm.Chassis.EventBus:IntegrationEvent"


@pytest.mark.django_db(transaction=True)
def test_the_notification_endpoint_receives_the_event_as_masstransit_would_send_it(rabbit, relay):
    queue = rabbit.bind_queue(
        "BookWorm.Contracts:CleanUpSentEmailIntegrationEvent", queue="notification-clean-up-sent-email"
    )
    via_base = rabbit.bind_queue(BASE_EXCHANGE)
    correlation_id = uuid.uuid4()
    with transaction.atomic():
        event = CleanUpSentEmailIntegrationEvent()
        row = publish(event, correlation_id=correlation_id)

    assert relay.deliver_batch(row.available_at) == 1

    [(properties, envelope)] = rabbit.receive(queue, 1)
    assert properties.content_type == "application/vnd.masstransit+json"
    assert properties.delivery_mode == 2
    assert properties.message_id == envelope["messageId"] == str(row.message_id)
    assert properties.correlation_id == envelope["correlationId"] == str(correlation_id)
    assert set(envelope) == ENVELOPE_FIELDS
    for name in ("messageId", "correlationId", "conversationId", "requestId", "initiatorId"):
        assert envelope[name] is None or GUID.match(envelope[name]), name
    for name in ("sourceAddress", "destinationAddress", "responseAddress", "faultAddress"):
        assert envelope[name] is None or URI.match(envelope[name]), name
    assert envelope["destinationAddress"] == "rabbitmq://127.0.0.1/BookWorm.Contracts:CleanUpSentEmailIntegrationEvent"
    assert envelope["messageType"] == [
        "urn:message:BookWorm.Contracts:CleanUpSentEmailIntegrationEvent",
        "urn:message:BookWorm.Chassis.EventBus:IntegrationEvent",
    ]
    assert envelope["message"] == {
        "id": str(event.id),
        "creationDate": event.creation_date.isoformat().replace("+00:00", "Z"),
    }
    assert GUID.match(envelope["message"]["id"])
    assert envelope["sentTime"].endswith("Z")
    assert envelope["headers"] == {}
    assert isinstance(envelope["host"]["processId"], int)
    assert envelope["host"]["machineName"]

    [(_, through_base)] = rabbit.receive(via_base, 1)
    assert through_base["messageId"] == envelope["messageId"]
    row.refresh_from_db()
    assert row.status == "delivered" and row.delivered_at is not None
