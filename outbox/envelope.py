"""The MassTransit envelope of an outbox row, and its AMQP properties.

BookWorm's consumers use MassTransit's default (envelope) JSON serializer: the event travels
inside a JsonMessageEnvelope whose ids must parse as GUIDs and whose addresses must be URIs.
The message id is the row's, so a re-send of the same row is recognised as a duplicate by the
consumer's inbox.
"""

import functools
import json
import os
import platform
import socket
import sys
from datetime import UTC, datetime
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
    return at.astimezone(UTC).isoformat().replace("+00:00", "Z")


class EnvelopeWriter:
    """Builds envelopes for one broker; the parts shared by every message are encoded once.

    The envelope is spliced together as text around the row's JSON columns, which arrive as
    text from the claim and are valid JSON (the database stores nothing else): a relay spends
    most of its time per message in Python, and this keeps it to a few string operations.
    """

    def __init__(self, base_address: str, source_name: str = "bookworm-scheduler-relay"):
        self.base_address = base_address
        self.source_address = base_address + quote(source_name, safe="")
        self._source_json = json.dumps(self.source_address)
        self._host_json = json.dumps(host_info(), separators=(",", ":"))
        self._destinations: dict[str, str] = {}
        self._sent: tuple[datetime, str] | None = None  # the last sentTime and its text: one per batch

    def destination(self, exchange: str) -> str:
        # ':' and '+' are valid in a path segment; MassTransit writes exchange names verbatim.
        return self.base_address + quote(exchange, safe=":+")

    def body(self, row, sent_at: datetime) -> bytes:
        """The JSON envelope of a claimed row (outbox.sql.claim), as bytes."""
        message_id = str(row.message_id)
        correlation_id = f'"{row.correlation_id}"' if row.correlation_id else "null"
        if self._sent is None or self._sent[0] != sent_at:
            self._sent = (sent_at, wire_time(sent_at))
        destination = self._destinations.get(row.exchange)
        if destination is None:
            destination = self._destinations[row.exchange] = json.dumps(self.destination(row.exchange))
        # A message that starts a conversation is its own conversation, as in MassTransit.
        return (
            f'{{"messageId":"{message_id}","requestId":null,"correlationId":{correlation_id},'
            f'"conversationId":"{message_id}","initiatorId":null,"sourceAddress":{self._source_json},'
            f'"destinationAddress":{destination},"responseAddress":null,"faultAddress":null,'
            f'"messageType":{row.types_json},"message":{row.body_json},"expirationTime":null,'
            f'"sentTime":"{self._sent[1]}","headers":{row.headers_json},"host":{self._host_json}}}'
        ).encode()

    @staticmethod
    def properties(row, headers: dict | None = None) -> BasicProperties:
        """The AMQP properties MassTransit sets; headers are the transport headers (the trace context)."""
        return BasicProperties(
            content_type=CONTENT_TYPE,
            delivery_mode=PERSISTENT,
            message_id=str(row.message_id),
            correlation_id=str(row.correlation_id) if row.correlation_id else None,
            headers=headers,
        )


@functools.lru_cache(maxsize=1024)
def exchange_chain(exchange: str, types_json: str) -> tuple[str, ...]:
    """The exchanges a row's publish goes through, most derived first, without repeats.

    The row's own exchange, then the exchange ``Namespace:TypeName`` of each URN in its
    message types (given as JSON text): MassTransit binds each to the next so a publish
    reaches the base types. Few distinct types exist, so the answer is cached.
    """
    names = [exchange]
    for urn in json.loads(types_json):
        name = urn.removeprefix("urn:message:")
        if name not in names:
            names.append(name)
    return tuple(names)
