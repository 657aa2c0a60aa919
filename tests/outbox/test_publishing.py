import threading
import uuid
from datetime import timedelta

import pytest
from django.db import connection, transaction
from django.utils import timezone

from jobs.seed.contracts import CleanUpSentEmailIntegrationEvent
from outbox.models import OutboxMessage, PublishedKey
from outbox.publishing import TransactionRequired, deferred, publish

pytestmark = pytest.mark.django_db(transaction=True)


def test_an_event_is_written_with_what_the_relay_needs():
    event = CleanUpSentEmailIntegrationEvent()
    with transaction.atomic():
        message = publish(event)
    row = OutboxMessage.objects.get(id=message.id)
    assert row.exchange == "BookWorm.Contracts:CleanUpSentEmailIntegrationEvent"
    assert row.message_types == [
        "urn:message:BookWorm.Contracts:CleanUpSentEmailIntegrationEvent",
        "urn:message:BookWorm.Chassis.EventBus:IntegrationEvent",
    ]
    assert row.body == {"id": str(event.id), "creationDate": event.creation_date.isoformat().replace("+00:00", "Z")}
    assert event.id.version == 7 and row.message_id.version == 7 and row.message_id != event.id
    assert row.status == "pending"


def test_the_event_exists_only_if_the_transaction_commits():
    with pytest.raises(RuntimeError), transaction.atomic():
        publish(CleanUpSentEmailIntegrationEvent())
        raise RuntimeError("the work failed")
    assert not OutboxMessage.objects.exists()


def test_publishing_outside_a_transaction_is_refused():
    with pytest.raises(TransactionRequired):
        publish(CleanUpSentEmailIntegrationEvent())


def test_a_repeated_idempotency_key_within_the_window_is_a_no_op(settings):
    settings.OUTBOX_DUPLICATE_WINDOW_SECONDS = 300
    with transaction.atomic():
        assert publish(CleanUpSentEmailIntegrationEvent(), idempotency_key="nightly-2026-11-26") is not None
    with transaction.atomic():
        assert publish(CleanUpSentEmailIntegrationEvent(), idempotency_key="nightly-2026-11-26") is None
    assert OutboxMessage.objects.count() == 1


def test_a_key_older_than_the_window_publishes_again():
    PublishedKey.objects.create(idempotency_key="hourly", published_at=timezone.now() - timedelta(minutes=6))
    with transaction.atomic():
        assert publish(CleanUpSentEmailIntegrationEvent(), idempotency_key="hourly") is not None


def test_an_explicit_message_id_is_its_own_idempotency_key():
    message_id = uuid.uuid4()
    for _ in range(2):
        with transaction.atomic():
            publish(CleanUpSentEmailIntegrationEvent(), message_id=message_id)
    assert list(OutboxMessage.objects.values_list("message_id", flat=True)) == [message_id]


def test_a_key_rolled_back_with_its_transaction_can_be_published_again():
    with pytest.raises(RuntimeError), transaction.atomic():
        publish(CleanUpSentEmailIntegrationEvent(), idempotency_key="retry-me")
        raise RuntimeError
    with transaction.atomic():
        assert publish(CleanUpSentEmailIntegrationEvent(), idempotency_key="retry-me") is not None


def test_two_transactions_racing_for_one_key_publish_once():
    barrier = threading.Barrier(2)
    results = []

    def publisher():
        try:
            with transaction.atomic():
                barrier.wait()
                results.append(publish(CleanUpSentEmailIntegrationEvent(), idempotency_key="raced"))
        finally:
            connection.close()

    threads = [threading.Thread(target=publisher) for _ in range(2)]
    for thread in threads:
        thread.start()
    for thread in threads:
        thread.join(30)
    assert sum(result is not None for result in results) == 1
    assert OutboxMessage.objects.count() == 1


class Statements(list):
    """The statements sent through Django's connection (an execute_wrapper): prepared ones have no text in its log."""

    def __call__(self, execute, sql, params, many, context):
        self.append(sql)
        return execute(sql, params, many, context)

    def outbox_inserts(self) -> int:
        return sum(sql.startswith('INSERT INTO "outbox_outboxmessage"') for sql in self)


def test_rows_published_in_a_deferred_block_are_kept_until_its_caller_inserts_them_in_one_statement():
    events = [CleanUpSentEmailIntegrationEvent() for _ in range(3)]
    statements = Statements()
    with transaction.atomic(), connection.execute_wrapper(statements):
        with deferred() as kept:
            messages = [publish(event) for event in events]
        assert [message.pk for message in messages] == [None, None, None]
        assert kept.rows == messages and not OutboxMessage.objects.exists()
        kept.insert()
    assert statements.outbox_inserts() == 1
    assert kept.rows == []
    rows = OutboxMessage.objects.order_by("id")
    assert [row.id for row in rows] == [message.pk for message in messages]
    assert [row.body["id"] for row in rows] == [str(event.id) for event in events]


def test_kept_rows_are_inserted_before_the_blocks_next_statement_and_roll_back_with_a_nested_block():
    with transaction.atomic():
        with deferred() as kept:
            first = publish(CleanUpSentEmailIntegrationEvent())
            with pytest.raises(RuntimeError), transaction.atomic():  # its SAVEPOINT writes `first` before it
                assert first.pk is not None
                publish(CleanUpSentEmailIntegrationEvent())
                raise RuntimeError("the nested work failed")  # ROLLBACK TO writes the second, then drops it
            assert OutboxMessage.objects.filter(id=first.pk).exists()
            third = publish(CleanUpSentEmailIntegrationEvent())
        assert kept.rows == [third]
        kept.rows.clear()  # the caller drops what is still kept (a job that failed)
    assert list(OutboxMessage.objects.values_list("id", flat=True)) == [first.pk]
