"""run(), the relay's loop, in this process against the real broker and database."""

import logging
import time
from datetime import timedelta

import pytest
from django.db import connections, transaction

from outbox.models import OutboxMessage
from outbox.publishing import publish
from outbox.relay import run
from outbox.waker import Waker
from tests.outbox.helpers import SERIALIZATION_FAILURE, serialization_failure

pytestmark = pytest.mark.django_db(transaction=True)


def publish_events(event_type, count):
    with transaction.atomic():
        return [publish(event_type()) for _ in range(count)]


def run_relay(relay, *, once=False, until=lambda: False, timeout=30):
    """run() until() is true (or, once, until nothing is pending); it also stops when timeout has passed."""
    deadline = time.monotonic() + timeout
    waker = Waker()
    try:
        run(
            relay,
            waker,
            poll_seconds=0.2,
            purge_every=3600,
            retention=timedelta(days=7),
            duplicate_window=timedelta(minutes=5),
            stopping=lambda: until() or time.monotonic() > deadline,
            once=once,
        )
    finally:
        waker.close()


def assert_one_relay_error_then_a_new_connection(records):
    [error] = [record for record in records if record.levelno >= logging.ERROR]
    assert (error.action, error.error) == ("outbox_relay_error", "RuntimeError: a bug in the relay")
    assert error.exc_info[0] is RuntimeError
    assert 0.25 <= error.retry_in <= 0.5
    actions = [getattr(record, "action", None) for record in records]
    assert actions.index("outbox_relay_error") < actions.index("outbox_broker_connected")


def test_an_unexpected_error_in_a_batch_is_logged_with_its_traceback_and_the_rows_go_out_after_it(
    rabbit, relay, event_type, monkeypatch, caplog
):
    queue = rabbit.bind_queue(event_type.exchange())
    rows = publish_events(event_type, 5)
    publish_batch = relay.broker.publish_batch
    calls = []

    def fail_the_first_batch(batch):
        calls.append(batch)
        if len(calls) == 1:
            next(iter(batch))  # the rows are claimed, and locked by the batch's transaction
            raise RuntimeError("a bug in the relay")
        return publish_batch(batch)

    monkeypatch.setattr(relay.broker, "publish_batch", fail_the_first_batch)

    with caplog.at_level(logging.INFO, logger="outbox"):
        run_relay(relay, once=True)

    assert_one_relay_error_then_a_new_connection(caplog.records)
    assert list(OutboxMessage.objects.values_list("status", flat=True)) == ["delivered"] * 5
    received = rabbit.drain(queue)
    assert sorted(envelope["messageId"] for _, envelope in received) == sorted(str(row.message_id) for row in rows)


def test_an_unexpected_error_between_batches_is_logged_and_the_relay_goes_on(
    rabbit, relay, event_type, monkeypatch, caplog
):
    queue = rabbit.bind_queue(event_type.exchange())
    service = relay.broker.service
    rows = []

    def fail_the_first_wait(seconds):
        if not rows:
            # Rows committed while the relay waits, then the wait fails.
            rows.extend(publish_events(event_type, 5))
            raise RuntimeError("a bug in the relay")
        return service(seconds)

    monkeypatch.setattr(relay.broker, "service", fail_the_first_wait)

    with caplog.at_level(logging.INFO, logger="outbox"):
        run_relay(relay, until=lambda: rows and not OutboxMessage.objects.exclude(status="delivered").exists())

    assert_one_relay_error_then_a_new_connection(caplog.records)
    assert list(OutboxMessage.objects.values_list("status", flat=True)) == ["delivered"] * 5
    received = rabbit.drain(queue)
    assert sorted(envelope["messageId"] for _, envelope in received) == sorted(str(row.message_id) for row in rows)


def test_a_pass_that_loses_a_conflict_is_logged_as_one_and_tried_again_soon(
    rabbit, relay, event_type, monkeypatch, caplog
):
    queue = rabbit.bind_queue(event_type.exchange())
    rows = publish_events(event_type, 5)
    deliver = relay.deliver
    passes = []

    def deliver_after_a_conflict(now, *args, **kwargs):
        passes.append(now)
        if len(passes) == 1:
            serialization_failure(connections[relay.using], "outbox_outboxmessage", rows[0].id)
        return deliver(now, *args, **kwargs)

    monkeypatch.setattr(relay, "deliver", deliver_after_a_conflict)

    with caplog.at_level(logging.INFO, logger="outbox"):
        run_relay(relay, once=True)

    [conflict] = [record for record in caplog.records if record.levelno >= logging.WARNING]
    assert (conflict.action, conflict.levelname) == ("outbox_database_conflict", "WARNING")
    assert conflict.error == SERIALIZATION_FAILURE
    assert 0.025 <= conflict.retry_in <= 0.05
    assert list(OutboxMessage.objects.values_list("status", flat=True)) == ["delivered"] * 5
    received = rabbit.drain(queue)
    assert sorted(envelope["messageId"] for _, envelope in received) == sorted(str(row.message_id) for row in rows)
