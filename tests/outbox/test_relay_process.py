"""`manage.py relay_outbox` as a process: broker outages, crashes, signals, several relays."""

import json
import os
import select
import signal
import threading
import time
from collections import defaultdict
from queue import Empty, Queue

import pytest
from django.db import connection, transaction

from outbox.models import OutboxMessage
from outbox.publishing import NOTIFY_CHANNEL, publish
from tests.jobs.helpers import wait_for
from tests.outbox.helpers import rabbitmqctl, run_command

pytestmark = [pytest.mark.django_db(transaction=True), pytest.mark.slow]


def publish_events(event_type, count):
    with transaction.atomic():
        return [publish(event_type()) for _ in range(count)]


def wait_for_line(stream, text, timeout=30):
    """Read stream until text appears; False if the process ended or time ran out.

    Reads the pipe's file descriptor after select(), so a silent process cannot hold the test
    past timeout (a text stream's buffer would hide what select() sees).
    """
    fd, seen, wanted = stream.fileno(), b"", text.encode()
    deadline = time.monotonic() + timeout
    while (remaining := deadline - time.monotonic()) > 0:
        if not select.select([fd], [], [], remaining)[0]:
            return False
        chunk = os.read(fd, 65536)
        if not chunk:
            return False
        seen += chunk
        if wanted in seen:
            return True
    return False


class LogEvents:
    """The JSON log events a process writes to stream, read by a thread so that a wait can time out."""

    def __init__(self, stream):
        self._lines: Queue[str] = Queue()
        threading.Thread(target=self._read, args=(stream,), daemon=True).start()

    def _read(self, stream):
        for line in stream:
            self._lines.put(line)

    def wait_for(self, action, count, timeout=30):
        """The next count events of action; fewer if time ran out."""
        events = []
        deadline = time.monotonic() + timeout
        while len(events) < count and (remaining := deadline - time.monotonic()) > 0:
            try:
                line = self._lines.get(timeout=remaining)
            except Empty:
                break
            try:
                event = json.loads(line)
            except ValueError:
                continue
            if event.get("action") == action:
                events.append(event)
        return events


def wait_for_listener(timeout=30):
    """True once a session of the test database listens for outbox notifications; False if time ran out."""

    def listening():
        with connection.cursor() as cursor:
            cursor.execute(
                "SELECT EXISTS (SELECT FROM pg_stat_activity WHERE datname = current_database() AND query = %s)",
                [f"LISTEN {NOTIFY_CHANNEL}"],
            )
            return cursor.fetchone()[0]

    try:
        return wait_for(listening, timeout=timeout, interval=0.05)
    except AssertionError:
        return False


def stop(process, signum=signal.SIGTERM):
    process.send_signal(signum)
    stdout, stderr = process.communicate(timeout=30)
    return process.returncode, stderr


def message_ids_by_event(received):
    ids = defaultdict(set)
    for _properties, envelope in received:
        ids[envelope["message"]["id"]].add(envelope["messageId"])
    return ids


def test_events_written_while_the_broker_is_down_all_arrive_when_it_is_back(rabbit, event_type, start_relay):
    queue = rabbit.bind_queue(event_type.exchange())
    rabbit.connection.close()
    rows = []
    try:
        rabbitmqctl("stop_app")
        rows = publish_events(event_type, 50)
        relay = start_relay()
        assert wait_for_line(relay.stderr, "broker unavailable")
    finally:
        rabbitmqctl("start_app")
    rabbitmqctl("await_startup")
    rabbit.connect()

    received = rabbit.receive(queue, len(rows), timeout=90)

    assert sorted(envelope["messageId"] for _, envelope in received) == sorted(str(row.message_id) for row in rows)
    returncode, _ = stop(relay)
    assert returncode == 0
    assert OutboxMessage.objects.filter(status="delivered").count() == len(rows)


def test_the_relay_is_back_within_seconds_of_the_broker_returning_from_a_long_outage(rabbit, event_type, start_relay):
    queue = rabbit.bind_queue(event_type.exchange())
    rabbit.connection.close()
    rows, failures = [], []
    try:
        rabbitmqctl("stop_app")
        rows = publish_events(event_type, 10)
        relay = start_relay(LOG_FORMAT="json")
        # Enough failed attempts for the delays to reach their ceiling.
        failures = LogEvents(relay.stderr).wait_for("outbox_broker_unavailable", 5)
    finally:
        rabbitmqctl("start_app")
    rabbitmqctl("await_startup")
    back = time.monotonic()
    rabbit.connect()

    received = rabbit.receive(queue, len(rows), timeout=30)

    # At most the 5 s ceiling of the delays, then a connection and a batch.
    assert time.monotonic() - back < 8
    assert len(failures) == 5
    assert all(0.25 <= event["retry_in"] <= 5 for event in failures)
    assert sorted(envelope["messageId"] for _, envelope in received) == sorted(str(row.message_id) for row in rows)
    relay.send_signal(signal.SIGTERM)
    assert relay.wait(timeout=30) == 0


def test_a_relay_killed_mid_batch_and_restarted_sends_every_event_with_a_stable_message_id(
    rabbit, event_type, start_relay, subprocess_env
):
    queue = rabbit.bind_queue(event_type.exchange())
    rows = publish_events(event_type, 3000)
    relay = start_relay(OUTBOX_BATCH_SIZE="50")
    first = rabbit.receive(queue, 1, timeout=30)
    relay.kill()
    relay.wait()
    assert OutboxMessage.objects.filter(status="pending").exists()

    finished = run_command(subprocess_env, "relay_outbox", "--once")

    assert finished.returncode == 0, finished.stderr
    received = first + rabbit.drain(queue)
    assert len(received) >= len(rows)
    assert message_ids_by_event(received) == {row.body["id"]: {str(row.message_id)} for row in rows}
    assert OutboxMessage.objects.exclude(status="delivered").count() == 0


def test_the_relay_reconnects_after_losing_its_database_connections(rabbit, event_type, start_relay):
    queue = rabbit.bind_queue(event_type.exchange())
    relay = start_relay()
    assert wait_for_line(relay.stderr, "connected to the broker")
    # Its listening session too: ended before that opens, the relay would have no loss to notice.
    assert wait_for_listener()
    with connection.cursor() as cursor:
        # What a PostgreSQL restart does to the relay: every one of its sessions ends.
        cursor.execute(
            "SELECT pg_terminate_backend(pid) FROM pg_stat_activity "
            "WHERE datname = current_database() AND pid <> pg_backend_pid()"
        )
    rows = publish_events(event_type, 10)

    received = rabbit.receive(queue, len(rows), timeout=60)

    assert sorted(envelope["messageId"] for _, envelope in received) == sorted(str(row.message_id) for row in rows)
    returncode, stderr = stop(relay)
    assert returncode == 0
    assert "database unavailable" in stderr or "cannot listen" in stderr


@pytest.mark.parametrize("signum", [signal.SIGTERM, signal.SIGINT])
def test_a_stop_signal_ends_the_relay_with_exit_status_zero(start_relay, signum):
    relay = start_relay()
    assert wait_for_line(relay.stderr, "connected to the broker")

    returncode, _ = stop(relay, signum)

    assert returncode == 0


def test_once_exits_with_one_clear_line_when_the_broker_cannot_be_reached(subprocess_env):
    result = run_command(subprocess_env, "relay_outbox", "--once", RABBITMQ_URL="amqp://guest:guest@127.0.0.1:1/%2F")

    assert result.returncode != 0
    [line] = result.stderr.strip().splitlines()
    assert line == (
        "CommandError: cannot reach the broker at 127.0.0.1:1 (RABBITMQ_URL): "
        "ConnectionRefusedError: [Errno 111] Connection refused"
    )


def test_two_relays_at_once_deliver_every_message_exactly_once(rabbit, event_type, start_relay, subprocess_env):
    queue = rabbit.bind_queue(event_type.exchange())
    rows = publish_events(event_type, 2000)
    relays = [start_relay(OUTBOX_BATCH_SIZE="20") for _ in range(2)]

    received = rabbit.receive(queue, len(rows), timeout=90)
    status = run_command(subprocess_env, "outbox", "status", "--json")
    for relay in relays:
        assert stop(relay)[0] == 0
    received += rabbit.receive(queue, 1, timeout=0.5)

    assert json.loads(status.stdout)["delivered"] == len(rows)
    assert sorted(envelope["messageId"] for _, envelope in received) == sorted(str(row.message_id) for row in rows)
