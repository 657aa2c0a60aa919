"""Relay throughput beside raw pika, and commit -> confirm latency, on the local PostgreSQL and RabbitMQ.

    DATABASE_URL=postgres://postgres@127.0.0.1:5432/bookworm_scheduler \
    RABBITMQ_URL='amqp://guest:guest@127.0.0.1:5672/%2F' \
    .venv/bin/python bench/relay_throughput.py [--messages 50000] [--rounds 3] [--batch-size 500]

It creates (and drops at the end) its own database, `<name>_bench`, so test and development
data are untouched, and its own RabbitMQ virtual host (rabbitmqctl add_vhost, deleted at the
end), so bindings left by anything else on the broker cannot skew it. In the vhost: the
exchanges of the bench's event type, bound as MassTransit binds them (the type's to its base
type's), and one durable queue fed by the first. Measured:

1. --rounds alternating rounds, each on a fresh backlog of --messages outbox rows:
   raw pika publishing the relay's own envelopes of those rows (same bodies, same AMQP
   properties with message_id, mandatory, same exchange) with a window of --window
   asynchronous confirms, the practical ceiling of a Python publisher; the same with the
   frames of the messages written in one callback sent at once (the relay's
   CoalescingConnection), the ceiling of a publisher that writes as the relay does; and one relay
   draining the backlog (Relay.deliver in a loop, as run() calls it), claims and records
   included. For each: messages per second and CPU per message of this process (the
   publisher), of the broker (beam.smp) and of PostgreSQL (every postgres process), read
   from /proc, with the load average of the host;
2. the database round trips (statements sent) per batch of the relay, and PostgreSQL's CPU per
   message for its claim and for its record, apart (one slot claiming and recording batches
   back to back without a broker, its backend's CPU read from /proc);
3. latency from the commit of an outbox row to the broker's confirm of its message, with the
   relay loop idle between rows (LISTEN/NOTIFY), at --rate rows per second for --seconds.
"""

import argparse
import gc
import json
import os
import resource
import statistics
import subprocess
import sys
import threading
import time
import uuid
from datetime import timedelta
from pathlib import Path
from urllib.parse import quote, urlsplit, urlunsplit

sys.path.insert(0, str(Path(__file__).resolve().parent.parent))
os.environ.setdefault("DJANGO_SETTINGS_MODULE", "bookworm_scheduler.settings")
# Production settings, as the scheduler's benches (bench/database.py): DEBUG would log every
# statement of the relay in memory (Django's debug cursor), which production does not pay.
os.environ.setdefault("DEBUG", "0")
os.environ.setdefault("SECRET_KEY", "benchmark-only")
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
from django.db import DatabaseError, InterfaceError, connections, reset_queries, transaction  # noqa: E402
from django.utils import timezone  # noqa: E402
from pika.adapters.select_connection import SelectConnection  # noqa: E402

from outbox.broker import (  # noqa: E402
    Broker,
    BrokerUnavailable,
    CoalescingConnection,
    connection_parameters,
    describe,
)
from outbox.envelope import EnvelopeWriter, broker_address, exchange_chain  # noqa: E402
from outbox.events import IntegrationEvent  # noqa: E402
from outbox.models import OutboxMessage  # noqa: E402
from outbox.publishing import publish  # noqa: E402
from outbox.relay import Relay, run  # noqa: E402
from outbox.slots import Slot  # noqa: E402
from outbox.waker import Waker  # noqa: E402

TICKS = os.sysconf("SC_CLK_TCK")


class ThroughputIntegrationEvent(IntegrationEvent):
    message_namespace = "BookWorm.Bench"


def recreate_database() -> None:
    DATABASE.recreate()
    call_command("migrate", verbosity=0)


def rabbitmqctl(*args: str) -> None:
    subprocess.run(["rabbitmqctl", *args], check=True, capture_output=True, timeout=120)


class Vhost:
    """A virtual host of the bench's own on the configured broker, and the URL that reaches it."""

    def __init__(self, url: str):
        self.name = f"bench-relay-{uuid.uuid4().hex[:8]}"
        self.url = urlunsplit(urlsplit(url)._replace(path="/" + quote(self.name, safe="")))

    def create(self) -> None:
        rabbitmqctl("await_startup")  # other test runs on the host stop the broker's app now and then
        rabbitmqctl("add_vhost", self.name)
        try:
            rabbitmqctl("set_permissions", "-p", self.name, "guest", ".*", ".*", ".*")
        except subprocess.CalledProcessError:
            self.delete()
            raise

    def delete(self) -> None:
        rabbitmqctl("await_startup")
        rabbitmqctl("delete_vhost", self.name)


def process_ticks(names: tuple[str, ...]) -> dict[int, int]:
    """CPU (user + system, in clock ticks) used so far by each process whose command is in names."""
    ticks = {}
    for entry in os.scandir("/proc"):
        if not entry.name.isdigit():
            continue
        try:
            with open(f"/proc/{entry.name}/stat") as stat:
                fields = stat.read()
        except OSError:
            continue  # ended meanwhile
        command = fields[fields.index("(") + 1 : fields.rindex(")")]
        if command in names:
            ticks[int(entry.name)] = stat_ticks(fields)
    return ticks


def stat_ticks(stat: str) -> int:
    """utime + stime (fields 14 and 15) of a /proc/<pid>/stat text, in clock ticks."""
    rest = stat[stat.rindex(")") + 2 :].split()
    return int(rest[11]) + int(rest[12])


def pid_ticks(pid: int) -> int:
    """CPU (user + system, in clock ticks) used so far by one process."""
    with open(f"/proc/{pid}/stat") as stat:
        return stat_ticks(stat.read())


def ticks_between(before: dict[int, int], after: dict[int, int]) -> int:
    """CPU ticks used between two readings: a process started meanwhile counts from zero, one that
    ended meanwhile is missing its last ticks (PostgreSQL sessions of other users come and go)."""
    return sum(used - before.get(pid, 0) for pid, used in after.items())


class CpuMeter:
    """CPU used between start() and stop() by this process, the broker and PostgreSQL, in seconds."""

    def start(self) -> None:
        self._self = self._own()
        self._broker = process_ticks(("beam.smp",))
        self._postgres = process_ticks(("postgres",))
        self._load = os.getloadavg()[0]
        self._at = time.perf_counter()

    def stop(self) -> dict:
        elapsed = time.perf_counter() - self._at
        return {
            "elapsed": elapsed,
            "self": self._own() - self._self,
            "broker": ticks_between(self._broker, process_ticks(("beam.smp",))) / TICKS,
            "postgres": ticks_between(self._postgres, process_ticks(("postgres",))) / TICKS,
            "load": (self._load + os.getloadavg()[0]) / 2,
        }

    @staticmethod
    def _own() -> float:
        usage = resource.getrusage(resource.RUSAGE_SELF)
        return usage.ru_utime + usage.ru_stime


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
    table = OutboxMessage._meta.db_table
    with connections["default"].cursor() as cursor:
        cursor.execute(f"TRUNCATE {table}")  # every round starts from the same table
    OutboxMessage.objects.bulk_create(rows, batch_size=5000)
    with connections["default"].cursor() as cursor:
        cursor.execute(f"VACUUM ANALYZE {table}")


def drain(relay: Relay) -> int:
    """Deliver the backlog as run() does: passes back to back while they find rows."""
    total = 0
    while handled := relay.deliver(relay.clock()):
        total += handled
    return total


def envelopes(relay: Relay, count: int) -> list[tuple[str, bytes, pika.BasicProperties]]:
    """The relay's own envelopes of the backlog, for the raw anchor (claimed, then released)."""
    sent_at = relay.clock()
    slot = Slot("default")
    try:
        rows = slot.claim(relay.clock(), count)
    finally:
        slot.release()
    return [(row.exchange, relay.writer.body(row, sent_at), relay.writer.properties(row)) for row in rows]


def raw_windowed(parameters, messages, window: int, joined: bool = False) -> None:
    """Publish messages with up to window unconfirmed messages in flight; returns once all are confirmed.

    joined: through the relay's CoalescingConnection, the frames of the messages written in one
    callback handed to the socket at once, as the relay writes them; else through pika's
    SelectConnection, each frame with a send() of its own.
    """
    state = {"sent": 0, "low": 1, "acked": set(), "channel": None}
    total = len(messages)

    def confirmed() -> int:
        return state["low"] - 1 + len(state["acked"])

    def send():
        channel = state["channel"]
        while state["sent"] < total and state["sent"] - confirmed() < window:
            exchange, body, properties = messages[state["sent"]]
            channel.basic_publish(exchange, "", body, properties, mandatory=True)
            state["sent"] += 1
        if joined:
            conn.flush()

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
            conn.close()
        else:
            send()

    def on_channel(channel):
        state["channel"] = channel
        channel.confirm_delivery(on_confirm, callback=lambda frame: send())

    conn = (CoalescingConnection if joined else SelectConnection)(
        parameters,
        on_open_callback=lambda c: c.channel(on_open_callback=on_channel),
        on_close_callback=lambda c, reason: c.ioloop.stop(),
    )
    conn.ioloop.start()


def declare_topology(parameters, exchanges: tuple[str, ...]) -> tuple[pika.BlockingConnection, str]:
    """The exchanges as MassTransit binds them, and a durable queue fed by the first; the admin connection."""
    admin = pika.BlockingConnection(parameters)
    channel = admin.channel()
    for name in exchanges:
        channel.exchange_declare(name, exchange_type="fanout", durable=True)
    for source, destination in zip(exchanges, exchanges[1:], strict=False):
        channel.exchange_bind(destination=destination, source=source)
    queue = "bench-relay"
    channel.queue_declare(queue, durable=True)  # declared again after a broker restart: a no-op
    channel.queue_bind(queue, exchanges[0])
    return admin, queue


def statements_per_batch(relay: Relay, batches: int) -> float:
    """Statements (each one round trip) the relay sends per batch draining batches full ones, on every connection.

    Included: each pass's last claim, which finds nothing and is rolled back, and the clock's sync.
    """
    write_backlog(relay.batch_size * batches)
    wrappers = list({id(slot.connection): slot.connection for slot in relay.slots(2)}.values())
    for wrapper in wrappers:
        wrapper.force_debug_cursor = True
    reset_queries()
    for wrapper in wrappers[1:]:
        wrapper.queries_log.clear()
    drain(relay)
    return sum(len(wrapper.queries_log) for wrapper in wrappers) / batches


def postgresql_cpu_per_message(batch_size: int, batches: int) -> tuple[float, float]:
    """PostgreSQL's CPU per message, in seconds, for the relay's claim and for its record of deliveries."""
    write_backlog(batch_size * batches)
    slot, now, after = Slot("default"), timezone.now(), 0
    with slot.connection.cursor() as cursor:
        cursor.execute("SELECT pg_backend_pid()")
        backend = cursor.fetchone()[0]
    claim = record = 0
    for _ in range(batches):
        before = pid_ticks(backend)
        rows = slot.claim(now, batch_size, after)
        claimed = pid_ticks(backend)
        slot.record(now, [row.id for row in rows], [], returning=False)
        claim, record = claim + claimed - before, record + pid_ticks(backend) - claimed
        after = rows[-1].id
    slot.close()
    return claim / TICKS / (batch_size * batches), record / TICKS / (batch_size * batches)


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
        relay.close()
        waker.close()
    return [(broker.confirmed_at[key] - at) * 1000 for key, at in committed_at.items()]


def percentile(values: list[float], fraction: float) -> float:
    ordered = sorted(values)
    return ordered[min(len(ordered) - 1, int(fraction * len(ordered)))]


def report(name: str, messages: int, cpu: dict) -> str:
    per_message = {key: cpu[key] / messages * 1e6 for key in ("self", "broker", "postgres")}
    return (
        f"{name:9} {messages / cpu['elapsed']:8,.0f} msg/s   CPU per message: publisher {per_message['self']:5.1f} us, "
        f"broker {per_message['broker']:5.1f} us, PostgreSQL {per_message['postgres']:5.1f} us   "
        f"(load average {cpu['load']:.2f})"
    )


def measure_round(number: int, parameters, args, meter: CpuMeter) -> tuple[dict, dict, dict]:
    """One round on a fresh backlog: raw pika, raw pika with its frames joined, then the relay.

    Run again from the start if the broker or the database went away meanwhile: other test runs
    on the host stop RabbitMQ's app and restart PostgreSQL now and then.
    """
    event = ThroughputIntegrationEvent
    chain = exchange_chain(event.exchange(), json.dumps(event.message_types()))
    for _ in range(5):
        admin = broker = relay = None
        try:
            admin, queue = declare_topology(parameters, chain)
            channel = admin.channel()
            channel.queue_purge(queue)
            broker = Broker(parameters, confirm_timeout=60)
            broker.connect()
            relay = build_relay(broker, args.batch_size)
            write_backlog(args.messages)
            messages = envelopes(relay, args.messages)
            meter.start()
            raw_windowed(parameters, messages, args.window)
            raw = meter.stop()
            channel.queue_purge(queue)
            meter.start()
            raw_windowed(parameters, messages, args.window, joined=True)
            joined = meter.stop()
            channel.queue_purge(queue)
            del messages  # 50,000 envelopes held would slow the relay's garbage collections
            gc.collect()
            meter.start()
            assert drain(relay) == args.messages
            relayed = meter.stop()
            channel.queue_purge(queue)
            return raw, joined, relayed
        except (pika.exceptions.AMQPError, BrokerUnavailable, DatabaseError, InterfaceError) as error:
            print(f"round {number} interrupted ({describe(error)}); waiting for the broker, then again")
            connections.close_all()
            rabbitmqctl("await_startup")
        finally:
            for closing in (relay, broker, admin):
                try:
                    if closing is not None:
                        closing.close()
                except pika.exceptions.AMQPError:
                    pass
    raise RuntimeError(f"round {number}: interrupted five times")


def main():
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--messages", type=int, default=50_000, help="per round and per publisher")
    parser.add_argument("--rounds", type=int, default=3)
    parser.add_argument("--batch-size", type=int, default=settings.OUTBOX_BATCH_SIZE)
    parser.add_argument("--window", type=int, default=1_000, help="confirm window of the raw anchor")
    parser.add_argument("--rate", type=float, default=20.0)
    parser.add_argument("--seconds", type=float, default=30.0)
    args = parser.parse_args()

    gc.freeze()  # as relay_outbox does once started
    vhost = Vhost(settings.RABBITMQ_URL)
    vhost.create()
    parameters = connection_parameters(vhost.url, blocked_timeout=60)
    recreate_database()
    meter = CpuMeter()
    rates = []
    try:
        print(
            f"{args.rounds} rounds of {args.messages:,} messages each, batch {args.batch_size}, "
            f"raw window {args.window}, vhost {vhost.name}"
        )
        for number in range(1, args.rounds + 1):
            raw, joined, relayed = measure_round(number, parameters, args, meter)
            rates.append([args.messages / run["elapsed"] for run in (raw, joined, relayed)])
            print(f"round {number}:")
            print("  " + report("raw pika", args.messages, raw))
            print("  " + report("joined", args.messages, joined))
            print("  " + report("relay", args.messages, relayed))
            for name, anchor in (("raw pika", raw), ("raw pika, frames joined", joined)):
                print(
                    f"  relay / {name}: {anchor['elapsed'] / relayed['elapsed']:.0%} of the msg/s, "
                    f"{relayed['self'] / anchor['self']:.2f}x the publisher's CPU per message"
                )
        raw_rate, joined_rate, relay_rate = (statistics.median(r[i] for r in rates) for i in range(3))
        print(
            f"median of {args.rounds} rounds: raw pika {raw_rate:,.0f} msg/s, frames joined {joined_rate:,.0f} msg/s, "
            f"relay {relay_rate:,.0f} msg/s; relay / raw pika {statistics.median(r[2] / r[0] for r in rates):.0%}, "
            f"relay / frames joined {statistics.median(r[2] / r[1] for r in rates):.0%}"
        )
        broker = Broker(parameters, confirm_timeout=60)
        broker.connect()
        relay = build_relay(broker, args.batch_size)
        statements = statements_per_batch(relay, 10)
        print(f"database statements (round trips) per batch of {args.batch_size}: {statements:.1f}")
        claim, record = postgresql_cpu_per_message(args.batch_size, 100)
        print(f"PostgreSQL's CPU per message: claim {claim * 1e6:.1f} us, record {record * 1e6:.1f} us")
        broker.close()
        relay.close()

        delays = latency(parameters, args.rate, args.seconds)
        print(
            f"latency commit -> confirm at {args.rate:g}/s for {args.seconds:g}s ({len(delays)} messages): "
            f"p50 {percentile(delays, 0.5):.1f} ms, p99 {percentile(delays, 0.99):.1f} ms, "
            f"max {max(delays):.1f} ms, mean {statistics.mean(delays):.1f} ms"
        )
    finally:
        vhost.delete()
        DATABASE.drop()


if __name__ == "__main__":
    main()
