"""Addresses, exchange chains and connection parameters: the parts of a send that need no broker."""

import json

from outbox.broker import connection_parameters
from outbox.envelope import broker_address, exchange_chain


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
