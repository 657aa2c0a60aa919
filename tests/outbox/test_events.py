"""Integration events on the wire as MassTransit names and reads them: no database, no broker.

The whole envelope as a consumer receives it, through the real broker: test_contract.py.
"""

import dataclasses
import uuid
from datetime import UTC, datetime, timedelta, timezone

import pytest

from jobs.seed.contracts import CleanUpSentEmailIntegrationEvent
from outbox import events
from outbox.events import IntegrationEvent, camel_case, wire_value

pytestmark = pytest.mark.unit


@dataclasses.dataclass(frozen=True)
class OrderPlacedIntegrationEvent(IntegrationEvent):
    message_namespace = "BookWorm.Tests"
    order_id: uuid.UUID = uuid.UUID(int=1)
    total_price: float = 0.0


class Ordering:
    @dataclasses.dataclass(frozen=True)
    class CancelledEvent(IntegrationEvent):
        message_namespace = "BookWorm.Tests"


@pytest.mark.parametrize(
    "name, camel", [("id", "id"), ("creation_date", "creationDate"), ("total_price_in_cents", "totalPriceInCents")]
)
def test_a_field_name_becomes_camel_case(name, camel):
    assert camel_case(name) == camel


def test_an_instant_goes_out_in_utc_with_a_z_and_a_guid_as_a_string():
    assert wire_value(datetime(2026, 3, 1, 13, 30, tzinfo=timezone(timedelta(hours=1)))) == "2026-03-01T12:30:00Z"
    assert wire_value(uuid.UUID(int=7)) == "00000000-0000-0000-0000-000000000007"
    assert [wire_value(value) for value in (5, 12.5, "text", None)] == [5, 12.5, "text", None]


def test_the_message_types_run_from_the_event_to_integration_event():
    assert CleanUpSentEmailIntegrationEvent.message_types() == [
        "urn:message:BookWorm.Contracts:CleanUpSentEmailIntegrationEvent",
        "urn:message:BookWorm.Chassis.EventBus:IntegrationEvent",
    ]
    assert IntegrationEvent.message_types() == ["urn:message:BookWorm.Chassis.EventBus:IntegrationEvent"]


def test_the_exchange_is_the_events_own_type_name():
    assert CleanUpSentEmailIntegrationEvent.exchange() == "BookWorm.Contracts:CleanUpSentEmailIntegrationEvent"


def test_a_nested_type_is_named_with_a_plus_as_in_dotnet():
    assert Ordering.CancelledEvent.exchange() == "BookWorm.Tests:Ordering+CancelledEvent"


def test_the_body_is_every_field_in_camel_case_with_wire_values():
    event = OrderPlacedIntegrationEvent(
        id=uuid.UUID(int=9),
        creation_date=datetime(2026, 3, 1, 12, 0, tzinfo=UTC),
        order_id=uuid.UUID(int=3),
        total_price=12.5,
    )

    assert event.to_message() == {
        "id": "00000000-0000-0000-0000-000000000009",
        "creationDate": "2026-03-01T12:00:00Z",
        "orderId": "00000000-0000-0000-0000-000000000003",
        "totalPrice": 12.5,
    }


def test_a_new_event_has_a_version_7_guid_and_the_databases_time_as_its_utc_creation_date(monkeypatch):
    database_time = datetime(2026, 3, 1, 12, 0, 0, 250000, tzinfo=UTC)
    monkeypatch.setattr(events, "default_clock", lambda: database_time)  # a unit test reaches no database

    event = CleanUpSentEmailIntegrationEvent()

    assert event.id.version == 7
    assert event.creation_date == database_time and event.creation_date.tzinfo is UTC
