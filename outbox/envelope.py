"""The MassTransit envelope of an outbox row, and its AMQP properties.

BookWorm's consumers use MassTransit's default (envelope) JSON serializer: the event travels
inside a JsonMessageEnvelope whose ids must parse as GUIDs and whose addresses must be URIs.
The message id is the row's, so a re-send of the same row is recognised as a duplicate by the
consumer's inbox.
"""

import json
import os
import platform
import socket
import sys
from datetime import datetime, timezone
from urllib.parse import quote

from pika import BasicProperties

CONTENT_TYPE = "application/vnd.masstransit+json"
PERSISTENT = 2
DEFAULT_PORTS = {False: 5672, True: 5671}


def broker_address(host: str, port: int, virtual_host: str, tls: bool) -> str:
    """MassTransit's base address of a RabbitMQ virtual host, e.g. ``rabbitmq://host/``.

    The default virtual host ``/`` is omitted, as MassTransit writes it; any other is one
    percent-encoded path segment.
    """
    authority = host if port == DEFAULT_PORTS[tls] else f"{host}:{port}"
    vhost = "" if virtual_host == "/" else quote(virtual_host, safe="") + "/"
    return f"rabbitmq://{authority}/{vhost}"


def host_info() -> dict:
    """The envelope's ``host``: who sent the message, for people reading it in a queue."""
    return {
        "machineName": socket.gethostname(),
        "processName": os.path.basename(sys.argv[0]) or "python",
        "processId": os.getpid(),
        "assembly": "bookworm_scheduler",
        "assemblyVersion": None,
        "frameworkVersion": f"Python {platform.python_version()}",
        "massTransitVersion": None,
        "operatingSystemVersion": platform.platform(),
    }


def wire_time(at: datetime) -> str:
    return at.astimezone(timezone.utc).isoformat().replace("+00:00", "Z")


class EnvelopeWriter:
    """Builds envelopes for one broker; the parts shared by every message are computed once."""

    def __init__(self, base_address: str, source_name: str = "bookworm-scheduler-relay"):
        self.base_address = base_address
        self.source_address = base_address + quote(source_name, safe="")
        self.host = host_info()

    def destination(self, exchange: str) -> str:
        # ':' and '+' are valid in a path segment; MassTransit writes exchange names verbatim.
        return self.base_address + quote(exchange, safe=":+")

    def body(self, message, sent_at: datetime) -> bytes:
        """The JSON envelope of an OutboxMessage, as bytes."""
        message_id = str(message.message_id)
        correlation_id = str(message.correlation_id) if message.correlation_id else None
        envelope = {
            "messageId": message_id,
            "requestId": None,
            "correlationId": correlation_id,
            # A message that starts a conversation is its own conversation, as in MassTransit.
            "conversationId": message_id,
            "initiatorId": None,
            "sourceAddress": self.source_address,
            "destinationAddress": self.destination(message.exchange),
            "responseAddress": None,
            "faultAddress": None,
            "messageType": message.message_types,
            "message": message.body,
            "expirationTime": None,
            "sentTime": wire_time(sent_at),
            "headers": message.headers or {},
            "host": self.host,
        }
        return json.dumps(envelope, separators=(",", ":")).encode()

    @staticmethod
    def properties(message) -> BasicProperties:
        return BasicProperties(
            content_type=CONTENT_TYPE,
            delivery_mode=PERSISTENT,
            message_id=str(message.message_id),
            correlation_id=str(message.correlation_id) if message.correlation_id else None,
        )


def exchange_chain(message) -> list[str]:
    """The exchanges a row's publish goes through, most derived first, without repeats.

    The row's own exchange, then the exchange ``Namespace:TypeName`` of each URN in its
    message types: MassTransit binds each to the next so a publish reaches the base types.
    """
    names = [message.exchange]
    for urn in message.message_types:
        name = urn.removeprefix("urn:message:")
        if name not in names:
            names.append(name)
    return names
