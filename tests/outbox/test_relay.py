"""One pass of the relay, run in this process against the real broker and database."""

import json
import uuid
from datetime import timedelta
from io import StringIO

import pytest
from django.core.management import call_command
from django.core.management.base import CommandError
from django.db import transaction
from django.utils import timezone

from bookworm_scheduler.kernel.clock import default_clock
from outbox.models import OutboxMessage, PublishedKey
from outbox.publishing import publish
from tests.outbox.helpers import build_relay

pytestmark = pytest.mark.django_db(transaction=True)


def publish_events(event_type, count):
    with transaction.atomic():
        return [publish(event_type()) for _ in range(count)]


def test_a_batch_goes_out_in_write_order(rabbit, relay, event_type):
    queue = rabbit.bind_queue(event_type.exchange())
    rows = publish_events(event_type, 20)

    assert relay.deliver_batch(relay.clock()) == 20

    received = rabbit.receive(queue, 20)
    assert [envelope["messageId"] for _, envelope in received] == [str(row.message_id) for row in rows]
    assert OutboxMessage.objects.filter(status="delivered").count() == 20
    assert relay.deliver_batch(relay.clock()) == 0


def test_headers_and_a_correlation_id_travel_in_the_envelope(rabbit, relay, event_type):
    queue = rabbit.bind_queue(event_type.exchange())
    correlation_id = uuid.uuid4()
    with transaction.atomic():
        row = publish(event_type(), correlation_id=correlation_id, headers={"tenant": "bookworm", "n": 1})

    relay.deliver_batch(relay.clock())

    [(properties, envelope)] = rabbit.receive(queue, 1)
    assert envelope["headers"] == {"tenant": "bookworm", "n": 1}
    assert envelope["correlationId"] == properties.correlation_id == str(correlation_id)
    assert envelope["message"] == row.body


def test_rows_not_yet_available_wait_for_their_time(relay, event_type):
    [row] = publish_events(event_type, 1)
    OutboxMessage.objects.filter(id=row.id).update(available_at=row.available_at + timedelta(minutes=1))

    assert relay.deliver_batch(row.available_at) == 0


def test_a_message_no_queue_receives_is_marked_unroutable_and_comes_back_with_requeue(rabbit, relay, event_type):
    [row] = publish_events(event_type, 1)

    relay.deliver_batch(relay.clock())

    row.refresh_from_db()
    assert row.status == "unroutable"
    assert "NO_ROUTE" in row.last_error

    queue = rabbit.bind_queue(event_type.exchange())
    call_command("outbox", "requeue", "--status", "unroutable", stdout=StringIO())
    row.refresh_from_db()
    assert (row.status, row.attempts, row.last_error) == ("pending", 0, "")

    relay.deliver_batch(relay.clock())

    [(properties, envelope)] = rabbit.receive(queue, 1)
    assert properties.message_id == envelope["messageId"] == str(row.message_id)
    row.refresh_from_db()
    assert row.status == "delivered"


def test_a_message_whose_exchange_is_refused_is_retried_then_dead_and_comes_back_with_requeue(rabbit, event_type):
    relay = build_relay(max_attempts=2)
    relay.broker.connect()
    queue = rabbit.bind_queue(event_type.exchange())
    with transaction.atomic():
        # The broker refuses to declare exchanges named amq.*: the channel is closed on us.
        bad = OutboxMessage.objects.create(
            exchange=f"amq.bookworm-test-{uuid.uuid4().hex[:8]}",
            message_types=[],
            body={"id": "x"},
            available_at=default_clock(),
        )
        good = publish(event_type())
    # The database's time, as publish() sets available_at: this host's clock may be behind it by a
    # fraction of a round trip, and the claim would leave a row published that instant for later.
    now = default_clock()

    try:
        assert relay.deliver_batch(now) == 2
        bad.refresh_from_db()
        assert (bad.status, bad.attempts) == ("pending", 1)
        assert "ACCESS_REFUSED" in bad.last_error
        assert bad.available_at > now
        assert relay.deliver_batch(now) == 0

        assert relay.deliver_batch(now + timedelta(hours=1)) == 1
    finally:
        relay.broker.close()

    bad.refresh_from_db()
    assert (bad.status, bad.attempts) == ("dead", 2)
    assert "ACCESS_REFUSED" in bad.last_error
    [(_, envelope)] = rabbit.receive(queue, 1)
    assert envelope["messageId"] == str(good.message_id)

    call_command("outbox", "requeue", "--id", str(bad.id), stdout=StringIO())
    requeued = OutboxMessage.objects.get(id=bad.id)
    assert (requeued.status, requeued.attempts, requeued.last_error) == ("pending", 0, "")
    assert requeued.message_id == bad.message_id


def test_requeue_leaves_pending_and_delivered_rows_alone(event_type):
    [pending, delivered] = publish_events(event_type, 2)
    OutboxMessage.objects.filter(id=delivered.id).update(status="delivered", delivered_at=timezone.now())

    with pytest.raises(CommandError, match="^nothing to requeue: no dead or unroutable message among ids "):
        call_command("outbox", "requeue", "--id", str(pending.id), str(delivered.id), stdout=StringIO())

    assert OutboxMessage.objects.get(id=pending.id).status == "pending"
    assert OutboxMessage.objects.get(id=delivered.id).status == "delivered"


def test_status_counts_rows_per_status_and_the_age_of_the_oldest_pending_row(event_type):
    rows = publish_events(event_type, 7)
    now = timezone.now()
    OutboxMessage.objects.filter(id=rows[0].id).update(created_at=now - timedelta(minutes=10))
    OutboxMessage.objects.filter(id__in=[rows[3].id, rows[4].id]).update(status="delivered", delivered_at=now)
    OutboxMessage.objects.filter(id=rows[5].id).update(status="dead")
    OutboxMessage.objects.filter(id=rows[6].id).update(status="unroutable")
    out = StringIO()

    call_command("outbox", "status", "--json", stdout=out)

    status = json.loads(out.getvalue())
    assert {name: status[name] for name in ("pending", "delivered", "dead", "unroutable")} == {
        "pending": 3,
        "delivered": 2,
        "dead": 1,
        "unroutable": 1,
    }
    assert 600 <= status["oldest_pending_age_seconds"] < 3600


def test_status_of_an_empty_outbox_is_all_zeros():
    out = StringIO()

    call_command("outbox", "status", "--json", stdout=out)

    assert json.loads(out.getvalue()) == {
        "pending": 0,
        "delivered": 0,
        "unroutable": 0,
        "dead": 0,
        "oldest_pending_age_seconds": 0.0,
    }


def test_retention_deletes_only_delivered_rows_older_than_the_retention(relay, event_type):
    rows = publish_events(event_type, 4)
    now = timezone.now()
    old = now - timedelta(days=8)
    OutboxMessage.objects.filter(id=rows[0].id).update(status="delivered", delivered_at=old, created_at=old)
    OutboxMessage.objects.filter(id=rows[1].id).update(status="delivered", delivered_at=now - timedelta(days=6))
    OutboxMessage.objects.filter(id=rows[2].id).update(status="dead", created_at=old)
    OutboxMessage.objects.filter(id=rows[3].id).update(created_at=old)
    PublishedKey.objects.create(idempotency_key="old", published_at=now - timedelta(minutes=6))
    PublishedKey.objects.create(idempotency_key="recent", published_at=now - timedelta(minutes=4))

    deleted = relay.purge(now, retention=timedelta(days=7), duplicate_window=timedelta(minutes=5))

    assert deleted == 1
    assert set(OutboxMessage.objects.values_list("id", flat=True)) == {row.id for row in rows[1:]}
    assert list(PublishedKey.objects.values_list("idempotency_key", flat=True)) == ["recent"]
