"""Helpers shared by the relay tests and the tests of other folders: a test's view of the real RabbitMQ,
relays built from settings, manage.py commands, and real serialization failures."""

import dataclasses
import json
import subprocess
import sys
import time
import uuid
from pathlib import Path

import pika
import psycopg
from django.conf import settings
from django.db import transaction

from outbox.broker import Broker, connection_parameters
from outbox.envelope import EnvelopeWriter, broker_address
from outbox.events import IntegrationEvent
from outbox.relay import Relay

MANAGE = Path(__file__).resolve().parents[2] / "manage.py"


def make_event_type(name: str = "ProbeIntegrationEvent") -> type[IntegrationEvent]:
    """An event type of a namespace of its own, so its exchange is this test's alone."""
    namespace = f"BookWorm.Tests.T{uuid.uuid4().hex[:12]}"
    return dataclasses.dataclass(frozen=True)(type(name, (IntegrationEvent,), {"message_namespace": namespace}))


class Rabbit:
    """A test's own view of the broker; deletes what it declared when the test ends."""

    def __init__(self):
        self.queues: list[str] = []
        self.exchanges: list[str] = []
        self.connect()

    def connect(self):
        """Open the test's connection (again, after the broker was restarted)."""
        self.connection = pika.BlockingConnection(pika.URLParameters(settings.RABBITMQ_URL))
        self.channel = self.connection.channel()

    def exchange(self, name: str) -> str:
        self.channel.exchange_declare(name, exchange_type="fanout", durable=True)
        self.exchanges.append(name)
        return name

    def bind_queue(self, source_exchange: str, queue: str | None = None) -> str:
        """A durable queue fed, as MassTransit feeds an endpoint, by a fanout exchange of its name."""
        queue = queue or f"test-relay-{uuid.uuid4().hex[:12]}"
        self.channel.exchange_declare(source_exchange, exchange_type="fanout", durable=True)
        self.exchange(queue)
        self.channel.queue_declare(queue, durable=True)
        self.queues.append(queue)
        self.channel.queue_purge(queue)
        self.channel.exchange_bind(destination=queue, source=source_exchange)
        self.channel.queue_bind(queue, queue)
        return queue

    def receive(self, queue: str, count: int, timeout: float = 30.0) -> list[tuple]:
        """Up to count messages (properties, envelope) from queue, waiting at most timeout."""
        received = []
        deadline = time.monotonic() + timeout
        while len(received) < count and time.monotonic() < deadline:
            method, properties, body = self.channel.basic_get(queue, auto_ack=True)
            if method is None:
                self.connection.sleep(0.05)
                continue
            received.append((properties, json.loads(body)))
        return received

    def drain(self, queue: str, decode=json.loads) -> list[tuple]:
        """Every message now in queue, (properties, decode(body)): for when the broker has confirmed all there is."""
        received = []
        while True:
            method, properties, body = self.channel.basic_get(queue, auto_ack=True)
            if method is None:
                return received
            received.append((properties, decode(body)))

    def close(self):
        if self.connection.is_closed or self.channel.is_closed:
            self.connect()
        for queue in self.queues:
            self.channel.queue_delete(queue)
        for exchange in self.exchanges:
            self.channel.exchange_delete(exchange)
        self.connection.close()


def build_relay(*, batch_size=None, max_attempts=None) -> Relay:
    parameters = connection_parameters(settings.RABBITMQ_URL, blocked_timeout=10)
    broker = Broker(parameters, confirm_timeout=10)
    writer = EnvelopeWriter(broker_address(parameters.host, parameters.port, parameters.virtual_host, False))
    return Relay(
        broker,
        writer,
        batch_size=batch_size or settings.OUTBOX_BATCH_SIZE,
        max_attempts=max_attempts or settings.OUTBOX_MAX_ATTEMPTS,
        retry_max_seconds=settings.OUTBOX_RETRY_MAX_SECONDS,
    )


def run_command(subprocess_env, *args, timeout=60, **env):
    return subprocess.run(
        [sys.executable, str(MANAGE), *args],
        env={**subprocess_env, **env},
        capture_output=True,
        text=True,
        timeout=timeout,
    )


def rabbitmqctl(*args):
    subprocess.run(["rabbitmqctl", *args], check=True, capture_output=True, timeout=120)


# Real conflicts for the code that tells them apart (bookworm_scheduler.kernel.db.database_fault).

# How such a serialization failure is logged (bookworm_scheduler.kernel.db.describe_database_error).
SERIALIZATION_FAILURE = "SerializationFailure (SQLSTATE 40001): could not serialize access due to concurrent update"


def changed_since_read(connection, table: str, row_id, key: str = "id") -> None:
    """Make the current transaction's next update of a row fail with a real serialization failure (40001).

    Call first in a transaction: the transaction reads the row (whose column key is row_id) at
    REPEATABLE READ, then another session updates it and commits, as a concurrent writer would.
    """
    with connection.cursor() as cursor:
        cursor.execute("SET TRANSACTION ISOLATION LEVEL REPEATABLE READ")
        cursor.execute(f"SELECT 1 FROM {table} WHERE {key} = %s", [row_id])
    with psycopg.connect(**connection.get_connection_params(), autocommit=True) as other:
        other.execute(f"UPDATE {table} SET {key} = {key} WHERE {key} = %s", [row_id])


def serialization_failure(connection, table: str, row_id, key: str = "id") -> None:
    """Raise a real serialization failure (SQLSTATE 40001) from a transaction of its own, as Django raises it."""
    with transaction.atomic(using=connection.alias):
        changed_since_read(connection, table, row_id, key)
        with connection.cursor() as cursor:
            cursor.execute(f"UPDATE {table} SET {key} = {key} WHERE {key} = %s", [row_id])
