"""Addresses, exchange chains, envelopes, properties, connection parameters and connection errors: the parts of a
send that need no broker."""

import json
import uuid
from datetime import UTC, datetime, timedelta, timezone
from types import SimpleNamespace

import pytest
from pika.adapters.utils.connection_workflow import AMQPConnectionWorkflowFailed, AMQPConnectorSocketConnectError
from pika.exceptions import AMQPConnectionError, ChannelClosedByBroker

from outbox.broker import connection_parameters, describe
from outbox.envelope import EnvelopeWriter, broker_address, exchange_chain, wire_time

pytestmark = pytest.mark.unit


def test_the_default_virtual_host_is_left_out_of_addresses():
    assert broker_address("rabbit", 5672, "/", tls=False) == "rabbitmq://rabbit/"


def test_another_virtual_host_and_port_are_part_of_addresses():
    assert broker_address("rabbit", 5673, "book/worm", tls=False) == "rabbitmq://rabbit:5673/book%2Fworm/"


def test_the_exchange_chain_runs_from_the_publish_exchange_to_the_base_types():
    types = json.dumps(
        [
            "urn:message:BookWorm.Contracts:CleanUpSentEmailIntegrationEvent",
            "urn:message:BookWorm.Chassis.EventBus:IntegrationEvent",
        ]
    )

    assert exchange_chain("BookWorm.Contracts:CleanUpSentEmailIntegrationEvent", types) == (
        "BookWorm.Contracts:CleanUpSentEmailIntegrationEvent",
        "BookWorm.Chassis.EventBus:IntegrationEvent",
    )


def test_an_amqps_url_verifies_the_broker_certificate_for_its_host():
    parameters = connection_parameters("amqps://user:secret@rabbit.example/%2F", blocked_timeout=60)

    assert parameters.port == 5671
    assert parameters.ssl_options.server_hostname == "rabbit.example"
    assert parameters.blocked_connection_timeout == 60


def test_an_amqp_url_is_plain():
    parameters = connection_parameters("amqp://guest:guest@127.0.0.1:5672/%2F", blocked_timeout=60)

    assert parameters.ssl_options is None


# The envelope of a claimed row (outbox.sql.claim gives its JSON columns as text) and its AMQP properties.

SENT_AT = datetime(2026, 3, 1, 12, 0, tzinfo=UTC)


def claimed(**changes) -> SimpleNamespace:
    row = {
        "message_id": uuid.UUID(int=1),
        "correlation_id": None,
        "exchange": "BookWorm.Contracts:CleanUpSentEmailIntegrationEvent",
        "types_json": '["urn:message:BookWorm.Contracts:CleanUpSentEmailIntegrationEvent"]',
        "body_json": '{"id": "00000000-0000-0000-0000-000000000009"}',
        "headers_json": "{}",
    }
    return SimpleNamespace(**{**row, **changes})


def test_the_envelope_is_masstransits_with_the_rows_id_as_message_and_conversation_id():
    envelope = json.loads(EnvelopeWriter("rabbitmq://rabbit/").body(claimed(), SENT_AT))

    assert isinstance(envelope.pop("host")["processId"], int)
    assert envelope == {
        "messageId": "00000000-0000-0000-0000-000000000001",
        "requestId": None,
        "correlationId": None,
        "conversationId": "00000000-0000-0000-0000-000000000001",
        "initiatorId": None,
        "sourceAddress": "rabbitmq://rabbit/bookworm-scheduler-relay",
        "destinationAddress": "rabbitmq://rabbit/BookWorm.Contracts:CleanUpSentEmailIntegrationEvent",
        "responseAddress": None,
        "faultAddress": None,
        "messageType": ["urn:message:BookWorm.Contracts:CleanUpSentEmailIntegrationEvent"],
        "message": {"id": "00000000-0000-0000-0000-000000000009"},
        "expirationTime": None,
        "sentTime": "2026-03-01T12:00:00Z",
        "headers": {},
    }


def test_a_correlated_row_carries_its_correlation_id_in_the_envelope_and_the_properties():
    row = claimed(correlation_id=uuid.UUID(int=2))

    envelope = json.loads(EnvelopeWriter("rabbitmq://rabbit/").body(row, SENT_AT))
    properties = EnvelopeWriter.properties(row)

    assert envelope["correlationId"] == properties.correlation_id == "00000000-0000-0000-0000-000000000002"


def test_the_properties_are_persistent_masstransit_json_with_the_rows_id_and_the_trace_headers():
    properties = EnvelopeWriter.properties(claimed(), {"traceparent": "00-trace-span-01"})

    assert (properties.content_type, properties.delivery_mode) == ("application/vnd.masstransit+json", 2)
    assert properties.message_id == "00000000-0000-0000-0000-000000000001"
    assert properties.correlation_id is None
    assert properties.headers == {"traceparent": "00-trace-span-01"}


def test_a_destination_keeps_colons_and_pluses_and_encodes_the_rest():
    writer = EnvelopeWriter("rabbitmq://rabbit/")

    assert writer.destination("BookWorm.Tests:Ordering+CancelledEvent") == (
        "rabbitmq://rabbit/BookWorm.Tests:Ordering+CancelledEvent"
    )
    assert writer.destination("a b/c") == "rabbitmq://rabbit/a%20b%2Fc"


def test_the_sent_time_is_utc_with_a_z():
    assert wire_time(datetime(2026, 3, 1, 13, 0, 0, 123000, tzinfo=timezone(timedelta(hours=1)))) == (
        "2026-03-01T12:00:00.123000Z"
    )


def test_over_tls_the_default_port_is_5671_and_5672_is_shown():
    assert broker_address("rabbit", 5671, "/", tls=True) == "rabbitmq://rabbit/"
    assert broker_address("rabbit", 5672, "/", tls=True) == "rabbitmq://rabbit:5672/"


def test_the_exchange_chain_names_a_type_once():
    types = json.dumps(["urn:message:BookWorm.Tests:Probe", "urn:message:BookWorm.Tests:Probe"])

    assert exchange_chain("BookWorm.Tests:Probe", types) == ("BookWorm.Tests:Probe",)


# What a refused connection says, from under the wrappers pika puts around it (outbox.broker.describe).


def test_a_refused_connection_is_described_by_the_socket_error_under_pikas_wrappers():
    refused = ConnectionRefusedError(111, "Connection refused")
    failed = AMQPConnectionWorkflowFailed([AMQPConnectorSocketConnectError(refused)])

    assert describe(refused) == "ConnectionRefusedError: [Errno 111] Connection refused"
    assert describe(AMQPConnectionError(failed)) == "ConnectionRefusedError: [Errno 111] Connection refused"


def test_an_error_without_a_message_is_described_by_its_class():
    assert describe(TimeoutError()) == "TimeoutError"
    assert describe(ChannelClosedByBroker(404, "NOT_FOUND - no exchange")) == (
        "ChannelClosedByBroker: (404, 'NOT_FOUND - no exchange')"
    )
