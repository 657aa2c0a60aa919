"""Batches back to back: the next claimed while the confirms of the last arrive, each recorded once answered."""

import contextlib
import json
import logging
import time
import uuid
from collections import defaultdict
from datetime import timedelta

import pytest
from django.db import connections, transaction
from django.test.utils import CaptureQueriesContext
from django.utils import timezone

from outbox.models import OutboxMessage
from outbox.publishing import publish
from outbox.relay import run
from outbox.slots import Slot
from outbox.waker import Waker
from tests.jobs.helpers import wait_for
from tests.outbox.helpers import build_relay, run_command

pytestmark = pytest.mark.django_db(transaction=True)


def publish_events(event_type, count):
    with transaction.atomic():
        return [publish(event_type()) for _ in range(count)]


def message_ids_by_event(received):
    ids = defaultdict(set)
    for _properties, envelope in received:
        ids[envelope["message"]["id"]].add(envelope["messageId"])
    return ids


@pytest.fixture
def side_connection():
    """A connection of the test's own, beside the relay's (which include Django's default one).

    Hooks on Slot.claim use it from the relay's recording thread too.
    """
    connection = connections.create_connection("default")
    connection.inc_thread_sharing()
    yield connection
    connection.close()


def delivered_and_free(connection) -> tuple[set[int], int]:
    """Rows marked delivered, and how many pending rows no transaction holds (SKIP LOCKED skips the claimed)."""
    connection.set_autocommit(False)
    try:
        with connection.cursor() as cursor:
            cursor.execute("SELECT id FROM outbox_outboxmessage WHERE status = 'delivered'")
            delivered = {row_id for (row_id,) in cursor.fetchall()}
            cursor.execute(
                "SELECT count(*) FROM (SELECT id FROM outbox_outboxmessage WHERE status = 'pending' "
                "FOR UPDATE SKIP LOCKED) AS free"
            )
            [free] = cursor.fetchone()
        return delivered, free
    finally:
        connection.rollback()
        connection.set_autocommit(True)


def test_a_pass_sends_batch_after_batch_in_write_order_with_two_statements_a_batch(rabbit, event_type):
    queue = rabbit.bind_queue(event_type.exchange())
    rows = publish_events(event_type, 230)
    relay = build_relay(batch_size=50)
    relay.broker.connect()
    now = relay.clock()  # synced now if it had to: no clock query in the pass
    try:
        with contextlib.ExitStack() as stack:
            captured = [stack.enter_context(CaptureQueriesContext(slot.connection)) for slot in relay.slots(2)]
            assert relay.deliver(now) == 230
    finally:
        relay.broker.close()
        relay.close()

    received = rabbit.receive(queue, 230)
    assert [envelope["messageId"] for _, envelope in received] == [str(row.message_id) for row in rows]
    assert OutboxMessage.objects.filter(status="delivered").count() == 230
    # Batches of 50, 50, 50, 50 and 30: a claim (BEGIN; ... SELECT) and a record (SET LOCAL
    # synchronous_commit = off; UPDATE ...; COMMIT) each.
    statements = [query["sql"].split()[0] for capture in captured for query in capture.captured_queries]
    assert sorted(statements) == ["BEGIN;"] * 5 + ["SET"] * 5


def test_the_next_batch_is_claimed_before_the_last_is_recorded_and_rows_are_marked_only_once_answered(
    rabbit, event_type, side_connection, monkeypatch
):
    rabbit.bind_queue(event_type.exchange())
    publish_events(event_type, 300)
    relay = build_relay(batch_size=100)
    relay.broker.connect()
    seen = []
    claim = Slot.claim

    def look_then_claim(slot, now, limit, after=0):
        delivered, free = delivered_and_free(side_connection)
        outcome = relay.broker.outcome
        answered = {row.id for row in outcome.delivered} if outcome else set()
        seen.append((len(delivered), free, delivered <= answered))
        return claim(slot, now, limit, after)

    monkeypatch.setattr(Slot, "claim", look_then_claim)
    try:
        assert relay.deliver(relay.clock()) == 300
    finally:
        relay.broker.close()
        relay.close()

    # The second batch is claimed while the first is held and none of it is recorded (its
    # confirms are read no sooner than after the 128th message). Every row marked delivered at
    # any claim had its confirm.
    assert seen[:2] == [(0, 300, True), (0, 200, True)]
    assert all(answered_first for _, _, answered_first in seen)
    assert OutboxMessage.objects.filter(status="delivered").count() == 300


def test_outcomes_of_every_kind_are_recorded_across_batch_boundaries(rabbit, event_type):
    queue = rabbit.bind_queue(event_type.exchange())
    with transaction.atomic():
        first, second = publish(event_type()), publish(event_type())
        # The broker refuses to declare exchanges named amq.*: the send fails and is retried.
        refused = OutboxMessage.objects.create(
            exchange=f"amq.bookworm-test-{uuid.uuid4().hex[:8]}", message_types=[], body={"id": "x"}
        )
        third = publish(event_type())
        unroutable = OutboxMessage.objects.create(
            exchange=f"BookWorm.Tests.Unbound{uuid.uuid4().hex[:8]}:ProbeIntegrationEvent",
            message_types=[],
            body={"id": "y"},
        )
    rabbit.exchanges.append(unroutable.exchange)
    relay = build_relay(batch_size=2)
    relay.broker.connect()
    now = timezone.now()
    try:
        assert relay.deliver(now) == 5
    finally:
        relay.broker.close()
        relay.close()

    statuses = {row.id: (row.status, row.attempts) for row in OutboxMessage.objects.all()}
    assert statuses == {
        first.id: ("delivered", 0),
        second.id: ("delivered", 0),
        refused.id: ("pending", 1),
        third.id: ("delivered", 0),
        unroutable.id: ("unroutable", 0),
    }
    refused.refresh_from_db()
    assert "ACCESS_REFUSED" in refused.last_error
    assert refused.available_at > now
    assert "NO_ROUTE" in OutboxMessage.objects.get(id=unroutable.id).last_error
    received = rabbit.receive(queue, 3)
    assert [envelope["messageId"] for _, envelope in received] == [
        str(first.message_id),
        str(second.message_id),
        str(third.message_id),
    ]


def test_sessions_ended_mid_pass_lose_nothing_and_a_resend_keeps_its_message_id(
    rabbit, event_type, side_connection, monkeypatch, caplog
):
    queue = rabbit.bind_queue(event_type.exchange())
    rows = publish_events(event_type, 400)
    relay = build_relay(batch_size=100)
    relay.broker.connect()
    claim = Slot.claim
    claims, ended = [], []

    def end_sessions_at_the_third_claim(slot, now, limit, after=0):
        claims.append(limit)
        if len(claims) == 3:
            # What a PostgreSQL restart does to the relay while two batches are out.
            with side_connection.cursor() as cursor:
                cursor.execute(
                    "SELECT pg_terminate_backend(pid) FROM pg_stat_activity "
                    "WHERE datname = current_database() AND pid <> pg_backend_pid()"
                )
                ended.append(cursor.rowcount)
        return claim(slot, now, limit, after)

    monkeypatch.setattr(Slot, "claim", end_sessions_at_the_third_claim)
    deadline = time.monotonic() + 60
    waker = Waker()

    def done():
        with side_connection.cursor() as cursor:
            cursor.execute("SELECT count(*) FROM outbox_outboxmessage WHERE status <> 'delivered'")
            return cursor.fetchone()[0] == 0

    try:
        with caplog.at_level(logging.INFO, logger="outbox"):
            run(
                relay,
                waker,
                poll_seconds=0.2,
                purge_every=3600,
                retention=timedelta(days=7),
                duplicate_window=timedelta(minutes=5),
                stopping=lambda: done() or time.monotonic() > deadline,
            )
    finally:
        waker.close()
        relay.broker.close()
        relay.close()

    assert ended and ended[0] >= 2  # the two sessions holding the first batches (the third opens at its claim)
    assert "outbox_database_unavailable" in [getattr(record, "action", None) for record in caplog.records]
    received = rabbit.drain(queue)
    assert message_ids_by_event(received) == {row.body["id"]: {str(row.message_id)} for row in rows}
    assert OutboxMessage.objects.exclude(status="delivered").count() == 0


@pytest.mark.slow
def test_a_relay_killed_with_batches_claimed_side_by_side_marks_nothing_unconfirmed_and_loses_nothing(
    rabbit, event_type, start_relay, subprocess_env, side_connection
):
    queue = rabbit.bind_queue(event_type.exchange())
    rows = publish_events(event_type, 5000)

    def claims_held():
        with side_connection.cursor() as cursor:
            cursor.execute(
                "SELECT count(*) FROM pg_stat_activity WHERE datname = current_database() "
                "AND state = 'idle in transaction' AND pid <> pg_backend_pid()"
            )
            return cursor.fetchone()[0] >= 2

    relay = start_relay(OUTBOX_BATCH_SIZE="100")
    # Two of its connections (or three) hold a claimed batch: the confirms of one are
    # outstanding while the next one's messages go out.
    wait_for(claims_held, timeout=60, interval=0.005)
    relay.kill()
    relay.wait()

    sent_before = rabbit.drain(queue)
    delivered = set(
        str(message_id)
        for message_id in OutboxMessage.objects.filter(status="delivered").values_list("message_id", flat=True)
    )
    # Marked delivered only once confirmed: each of them is in the queue.
    assert delivered <= {envelope["messageId"] for _, envelope in sent_before}
    assert OutboxMessage.objects.filter(status="pending").exists()

    finished = run_command(subprocess_env, "relay_outbox", "--once", OUTBOX_BATCH_SIZE="100", timeout=120)

    assert finished.returncode == 0, finished.stderr
    received = sent_before + rabbit.drain(queue)
    assert len(received) >= 5000
    assert message_ids_by_event(received) == {row.body["id"]: {str(row.message_id)} for row in rows}
    assert OutboxMessage.objects.exclude(status="delivered").count() == 0


def test_a_row_committed_late_below_the_rows_a_pass_claimed_goes_out_in_the_next_pass(
    rabbit, event_type, side_connection, monkeypatch
):
    queue = rabbit.bind_queue(event_type.exchange())
    # A transaction that takes its id first and commits after the rows written after it.
    side_connection.set_autocommit(False)
    with side_connection.cursor() as cursor:
        cursor.execute(
            "INSERT INTO outbox_outboxmessage (message_id, message_types, exchange, body, headers, created_at, "
            "status, attempts, available_at, last_error, origin) VALUES (%s, %s, %s, '{\"id\": \"late\"}', '{}', "
            "now(), 'pending', 0, now(), '', '') RETURNING id",
            [uuid.uuid4(), json.dumps(event_type.message_types()), event_type.exchange()],
        )
        [late_id] = cursor.fetchone()
    rows = publish_events(event_type, 250)
    relay = build_relay(batch_size=100)
    relay.broker.connect()
    claim = Slot.claim
    committed = []

    def commit_the_late_row_at_the_second_claim(slot, now, limit, after=0):
        if after and not committed:
            side_connection.commit()
            side_connection.set_autocommit(True)
            committed.append(late_id)
        return claim(slot, now, limit, after)

    monkeypatch.setattr(Slot, "claim", commit_the_late_row_at_the_second_claim)
    try:
        assert relay.deliver(relay.clock()) == 250
        assert committed == [late_id]
        assert OutboxMessage.objects.get(id=late_id).status == "pending"

        assert relay.deliver(relay.clock()) == 1
    finally:
        relay.broker.close()
        relay.close()

    received = rabbit.receive(queue, 251)
    assert [envelope["message"]["id"] for _, envelope in received][-1] == "late"
    assert sorted(envelope["messageId"] for _, envelope in received[:-1]) == sorted(str(r.message_id) for r in rows)
    assert OutboxMessage.objects.exclude(status="delivered").count() == 0
