"""Relay throughput and latency against the local PostgreSQL and RabbitMQ (run by hand).

    DATABASE_URL=postgres://postgres@127.0.0.1:5432/bookworm_scheduler \
    RABBITMQ_URL='amqp://guest:guest@127.0.0.1:5672/%2F' DEBUG=1 \
    .venv/bin/python bench/relay_throughput.py [--messages 100000] [--batch-size 500]

It creates (and drops at the end) its own database, `<name>_bench`, so test and development
data are untouched, and its own exchange and durable queue, deleted at the end. Measured:

1. a backlog of --messages outbox rows drained by one relay (Relay.deliver_batch in a loop):
   confirmed messages per second, database claim/mark included;
2. anchors on the same broker with the same envelopes: raw pika with one blocking confirm per
   message (BlockingChannel.confirm_delivery), and raw pika with a window of asynchronous
   confirms (SelectConnection), the practical ceiling for a Python publisher;
3. latency from the commit of an outbox row to the broker's confirm of its message, with the
   relay loop idle between rows (LISTEN/NOTIFY), at --rate rows per second for --seconds.
"""

import argparse
import os
import statistics
import sys
import threading
import time
import uuid
from datetime import timedelta
from pathlib import Path

sys.path.insert(0, str(Path(__file__).resolve().parent.parent))
os.environ.setdefault("DJANGO_SETTINGS_MODULE", "bookworm_scheduler.settings")
os.environ.setdefault("DEBUG", "1")
os.environ.setdefault("LOG_LEVEL", "WARNING")


from bench.database import BenchDatabase  # noqa: E402

DATABASE = BenchDatabase("_bench")
DATABASE.use()
os.environ["DATABASE_CONN_MAX_AGE"] = "600"

import django  # noqa: E402

django.setup()

import pika  # noqa: E402
from django.conf import settings  # noqa: E402
from django.core.management import call_command  # noqa: E402
from django.db import connections, transaction  # noqa: E402
from django.utils import timezone  # noqa: E402
from pika.adapters.select_connection import SelectConnection  # noqa: E402

from outbox.broker import Broker, connection_parameters  # noqa: E402
from outbox.envelope import EnvelopeWriter, broker_address  # noqa: E402
from outbox.events import IntegrationEvent  # noqa: E402
from outbox.models import OutboxMessage  # noqa: E402
from outbox.publishing import publish  # noqa: E402
from outbox.relay import Relay, Waker, run  # noqa: E402


class ThroughputIntegrationEvent(IntegrationEvent):
    message_namespace = "BookWorm.Bench"


def recreate_database() -> None:
    DATABASE.recreate()
    call_command("migrate", verbosity=0)


def build_relay(broker: Broker, batch_size: int) -> Relay:
    p = broker.parameters
    writer = EnvelopeWriter(broker_address(p.host, p.port, p.virtual_host, p.ssl_options is not None))
    return Relay(broker, writer, batch_size=batch_size, max_attempts=10, retry_max_seconds=300)


def write_backlog(count: int) -> None:
    now = timezone.now()
    rows = []
    for _ in range(count):
        event = ThroughputIntegrationEvent()
        rows.append(
            OutboxMessage(
                message_types=event.message_types(),
                exchange=event.exchange(),
                body=event.to_message(),
                created_at=now,
                available_at=now,
            )
        )
    OutboxMessage.objects.bulk_create(rows, batch_size=5000)


def drain(relay: Relay) -> tuple[int, float]:
    started = time.perf_counter()
    total = 0
    while handled := relay.deliver_batch(timezone.now()):
        total += handled
    return total, time.perf_counter() - started


def envelopes(relay: Relay, count: int) -> list[tuple[str, bytes, pika.BasicProperties]]:
    """The relay's own envelopes of the backlog, for the raw anchors (claimed, then released)."""
    sent_at = timezone.now()
    with transaction.atomic():
        messages = [
            (row.exchange, relay.writer.body(row, sent_at), relay.writer.properties(row))
            for row in OutboxMessage.objects.claim_batch(timezone.now(), count)
        ]
        transaction.set_rollback(True)
    return messages


def raw_blocking(parameters, messages) -> float:
    """Messages per second with one blocking confirm per basic_publish."""
    conn = pika.BlockingConnection(parameters)
    channel = conn.channel()
    channel.confirm_delivery()
    started = time.perf_counter()
    for exchange, body, properties in messages:
        channel.basic_publish(exchange, "", body, properties, mandatory=True)
    elapsed = time.perf_counter() - started
    conn.close()
    return len(messages) / elapsed


def raw_windowed(parameters, messages, window: int) -> float:
    """Messages per second with up to window unconfirmed messages in flight."""
    state = {"sent": 0, "low": 1, "acked": set(), "channel": None, "started": 0.0, "elapsed": 0.0}
    total = len(messages)

    def confirmed() -> int:
        return state["low"] - 1 + len(state["acked"])

    def send():
        channel = state["channel"]
        while state["sent"] < total and state["sent"] - confirmed() < window:
            exchange, body, properties = messages[state["sent"]]
            channel.basic_publish(exchange, "", body, properties, mandatory=True)
            state["sent"] += 1

    def on_confirm(frame):
        tag, multiple = frame.method.delivery_tag, frame.method.multiple
        if multiple:
            state["acked"] = {t for t in state["acked"] if t > tag}
            state["low"] = max(state["low"], tag + 1)
        else:
            state["acked"].add(tag)
        while state["low"] in state["acked"]:
            state["acked"].remove(state["low"])
            state["low"] += 1
        if confirmed() >= total:
            state["elapsed"] = time.perf_counter() - state["started"]
            conn.close()
        else:
            send()

    def on_channel(channel):
        state["channel"] = channel

        def selected(frame):
            state["started"] = time.perf_counter()
            send()

        channel.confirm_delivery(on_confirm, callback=selected)

    conn = SelectConnection(
        parameters,
        on_open_callback=lambda c: c.channel(on_open_callback=on_channel),
        on_close_callback=lambda c, reason: c.ioloop.stop(),
    )
    conn.ioloop.start()
    return total / state["elapsed"]


class TimedBroker(Broker):
    """Stamps the instant each message's confirm was known, for the latency run."""

    confirmed_at: dict

    def publish_batch(self, batch):
        outcome = super().publish_batch(batch)
        now = time.time()
        for message in outcome.delivered:
            self.confirmed_at[str(message.message_id)] = now
        return outcome


def latency(parameters, rate: float, seconds: float) -> list[float]:
    """Commit-to-confirm delays in milliseconds with a live relay loop and a steady producer."""
    broker = TimedBroker(parameters, confirm_timeout=30)
    broker.confirmed_at = {}
    relay = build_relay(broker, 500)
    committed_at: dict[str, float] = {}
    done = threading.Event()

    def produce():
        interval = 1 / rate
        next_at = time.monotonic()
        for _ in range(int(rate * seconds)):
            time.sleep(max(0.0, next_at - time.monotonic()))
            next_at += interval
            with transaction.atomic():
                row = publish(ThroughputIntegrationEvent())
            committed_at[str(row.message_id)] = time.time()
        connections.close_all()
        done.set()

    def stopping():
        return done.is_set() and len(broker.confirmed_at) >= len(committed_at)

    producer = threading.Thread(target=produce)
    waker = Waker()
    producer.start()
    try:
        run(
            relay,
            waker,
            poll_seconds=1.0,
            purge_every=3600,
            retention=timedelta(days=7),
            duplicate_window=timedelta(minutes=5),
            stopping=stopping,
        )
    finally:
        producer.join()
        broker.close()
        waker.close()
    return [(broker.confirmed_at[key] - at) * 1000 for key, at in committed_at.items()]


def percentile(values: list[float], fraction: float) -> float:
    ordered = sorted(values)
    return ordered[min(len(ordered) - 1, int(fraction * len(ordered)))]


def main():
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--messages", type=int, default=100_000)
    parser.add_argument("--batch-size", type=int, default=settings.OUTBOX_BATCH_SIZE)
    parser.add_argument("--blocking-messages", type=int, default=5_000, help="for the blocking anchor")
    parser.add_argument("--window", type=int, default=1_000, help="confirm window of the raw anchor")
    parser.add_argument("--rate", type=float, default=20.0)
    parser.add_argument("--seconds", type=float, default=30.0)
    args = parser.parse_args()

    parameters = connection_parameters(settings.RABBITMQ_URL, blocked_timeout=60)
    exchange = ThroughputIntegrationEvent.exchange()
    queue = f"bench-relay-{uuid.uuid4().hex[:8]}"
    admin = pika.BlockingConnection(parameters)
    channel = admin.channel()
    channel.exchange_declare(exchange, exchange_type="fanout", durable=True)
    channel.queue_declare(queue, durable=True)
    channel.queue_bind(queue, exchange)

    recreate_database()
    try:
        write_backlog(args.messages)
        broker = Broker(parameters, confirm_timeout=60)
        broker.connect()
        relay = build_relay(broker, args.batch_size)
        messages = envelopes(relay, args.messages)
        total, elapsed = drain(relay)
        broker.close()
        relay_rate = total / elapsed
        print(f"relay: {total} messages in {elapsed:.2f}s = {relay_rate:,.0f} msg/s (batch {args.batch_size})")
        channel.queue_purge(queue)

        blocking = raw_blocking(parameters, messages[: args.blocking_messages])
        print(f"raw pika, blocking confirm per message: {blocking:,.0f} msg/s ({args.blocking_messages} messages)")
        channel.queue_purge(queue)
        windowed = raw_windowed(parameters, messages, args.window)
        print(f"raw pika, window of {args.window} async confirms: {windowed:,.0f} msg/s ({len(messages)} messages)")
        print(f"relay / windowed ceiling: {relay_rate / windowed:.0%}")
        channel.queue_purge(queue)

        delays = latency(parameters, args.rate, args.seconds)
        print(
            f"latency commit -> confirm at {args.rate:g}/s for {args.seconds:g}s ({len(delays)} messages): "
            f"p50 {percentile(delays, 0.5):.1f} ms, p99 {percentile(delays, 0.99):.1f} ms, "
            f"max {max(delays):.1f} ms, mean {statistics.mean(delays):.1f} ms"
        )
    finally:
        channel.queue_delete(queue)
        channel.exchange_delete(exchange)
        admin.close()
        DATABASE.drop()


if __name__ == "__main__":
    main()
