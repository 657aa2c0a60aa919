from datetime import timedelta

import uuid6
from django.db import connections, models
from django.db.models import Q
from django.utils import timezone

from bookworm_scheduler.kernel.backoff import doubling
from bookworm_scheduler.kernel.instances import ProcessInstance


class OutboxQuerySet(models.QuerySet):
    """The CLI's and the admin's operations on many rows, each one statement (the relay's are in outbox.sql)."""

    def requeue(self, now) -> int:
        """Send dead and unroutable rows again, with their message ids unchanged."""
        return self.filter(status__in=OutboxMessage.REQUEUEABLE).update(
            status=OutboxMessage.Status.PENDING, attempts=0, available_at=now, last_error=""
        )

    def requeue_selected(self, now, limit: int) -> list["OutboxMessage"]:
        """Requeue (as requeue does) the dead and unroutable rows among these, at most limit of them.

        Returns the rows requeued, as they were. Call inside transaction.atomic(): the rows stay
        locked until the caller commits, together with its record of who requeued them.
        """
        rows = list(self.filter(status__in=OutboxMessage.REQUEUEABLE).order_by("id").select_for_update()[:limit])
        OutboxMessage.objects.using(self.db).filter(id__in=[row.id for row in rows]).requeue(now)
        return rows

    def discard(self, limit: int) -> list["OutboxMessage"]:
        """Delete the pending, dead and unroutable rows among these, at most limit of them.

        Returns the rows deleted. A pending row that a relay is sending at this moment is locked
        by the relay and left alone (SKIP LOCKED): it may still be delivered. Delivered rows are
        left to retention. Call inside transaction.atomic(), as for requeue_selected.
        """
        rows = list(
            self.filter(status__in=OutboxMessage.DISCARDABLE).order_by("id").select_for_update(skip_locked=True)[:limit]
        )
        OutboxMessage.objects.using(self.db).filter(id__in=[row.id for row in rows]).delete()
        return rows

    def delete_delivered_before(self, cutoff, limit: int) -> int:
        """Delete at most limit delivered rows delivered before cutoff (index outbox_delivered).

        Bounded so that a large backlog is purged in short transactions that do not hold
        up the relay or bloat one giant delete.
        """
        ids = self.filter(status=OutboxMessage.Status.DELIVERED, delivered_at__lt=cutoff).values_list("id", flat=True)[
            :limit
        ]
        deleted, _ = self.filter(id__in=list(ids)).delete()
        return deleted

    def status_counts(self, now) -> dict:
        """Rows per status and the age of the oldest pending row (`outbox status`, /tickerq/api/outbox/).

        One count per status, each an index-only scan of an index that holds only that status's
        rows first (outbox_pending, outbox_delivered, outbox_status_recent): a GROUP BY over the
        table reads every row of it. Delivered rows are most of the table, so their count costs
        the most. The oldest pending row is the first in write
        order: one step into outbox_pending, where MIN(created_at) would read every pending row.
        """
        counts = {status: self.filter(status=status).count() for status in OutboxMessage.Status.values}
        oldest = (
            self.filter(status=OutboxMessage.Status.PENDING).order_by("id").values_list("created_at", flat=True).first()
        )
        counts["oldest_pending_age_seconds"] = (now - oldest).total_seconds() if oldest else 0.0
        return counts

    def failed_pending(self, scan: int) -> "OutboxQuerySet":
        """The pending rows with a failed send (attempts > 0) among the first `scan` pending rows in write order.

        Bounded: the subquery reads at most `scan` entries of outbox_pending, however long the
        backlog. The relay claims ready rows oldest first, so the rows it tried and failed to send
        (OutboxMessage.record_failure) are among the oldest pending ones.
        """
        first = OutboxMessage.objects.using(self.db).filter(status=OutboxMessage.Status.PENDING).order_by("id")
        return self.filter(id__in=first.values("id")[:scan], attempts__gt=0)

    def exchanges_of_newest(self, status: str, window: int, limit: int) -> list[tuple[str, int]]:
        """(exchange, rows) among the newest `window` rows in status, the most rows first, at most limit of them.

        Bounded: the subquery reads at most `window` entries of outbox_status_recent (status, -id).
        """
        newest = OutboxMessage.objects.using(self.db).filter(status=status).order_by("-id").values("id")[:window]
        rows = (
            self.filter(id__in=newest)
            .values_list("exchange")
            .annotate(n=models.Count("*"))
            .order_by("-n", "exchange")[:limit]
        )
        return [(exchange, n) for exchange, n in rows]

    def last_delivered_at(self):
        """When the newest delivery happened: one step from the end of outbox_delivered; None if none is kept."""
        return (
            self.filter(status=OutboxMessage.Status.DELIVERED)
            .order_by("-delivered_at")
            .values_list("delivered_at", flat=True)
            .first()
        )


class OutboxMessage(models.Model):
    """One integration event waiting for, or done with, delivery to RabbitMQ.

    Written in the same transaction as the state change that produced it (see
    outbox.publishing.publish); the relay sends it and records the outcome.
    """

    # Labelled by their own words, as every state is (jobs.models.OccurrenceStatus).
    class Status(models.TextChoices):
        PENDING = "pending", "pending"
        DELIVERED = "delivered", "delivered"
        UNROUTABLE = "unroutable", "unroutable"
        DEAD = "dead", "dead"

    # What the admin's and the command line's actions may touch (OutboxQuerySet.requeue, .discard).
    REQUEUEABLE = (Status.DEAD, Status.UNROUTABLE)
    DISCARDABLE = (Status.PENDING, Status.DEAD, Status.UNROUTABLE)

    # A re-send of the same row keeps its message id; consumers drop duplicates by it.
    message_id = models.UUIDField(default=uuid6.uuid7, db_index=True, editable=False)
    correlation_id = models.UUIDField(null=True, blank=True)
    # URNs, most derived first: the envelope's messageType.
    message_types = models.JSONField()
    # The fanout exchange of the most derived type, e.g. BookWorm.Contracts:CleanUpSentEmailIntegrationEvent.
    exchange = models.CharField(max_length=255)
    # The event object: the envelope's "message".
    body = models.JSONField()
    headers = models.JSONField(default=dict, blank=True)
    # publish() sets created_at and available_at from the database's clock (default_clock), which
    # the relay judges them by; these defaults stamp only rows made without it (a test, a shell).
    created_at = models.DateTimeField(default=timezone.now)
    status = models.CharField(max_length=16, choices=Status.choices, default=Status.PENDING)
    attempts = models.PositiveIntegerField(default=0)
    # Not sent before this instant: the relay's retry backoff moves it forward.
    available_at = models.DateTimeField(default=timezone.now)
    last_error = models.TextField(blank=True)
    delivered_at = models.DateTimeField(null=True, blank=True)
    # What published it, e.g. "occurrence:42" (see outbox.publishing.origin); empty if unknown.
    origin = models.CharField(max_length=100, blank=True)

    objects = OutboxQuerySet.as_manager()

    class Meta:
        ordering = ["-id"]
        permissions = [
            ("requeue_outboxmessage", "Can requeue dead or unroutable messages"),
            ("discard_outboxmessage", "Can discard messages"),
        ]
        constraints = [
            models.CheckConstraint(
                condition=Q(status__in=["pending", "delivered", "unroutable", "dead"]),
                name="outbox_message_status_valid",
            ),
            models.CheckConstraint(
                condition=Q(status="delivered", delivered_at__isnull=False) | ~Q(status="delivered"),
                name="outbox_delivered_has_time",
            ),
        ]
        indexes = [
            # The relay claims pending rows in write order.
            models.Index(fields=["id"], condition=Q(status="pending"), name="outbox_pending"),
            # Retention deletes delivered rows by age.
            models.Index(fields=["delivered_at"], condition=Q(status="delivered"), name="outbox_delivered"),
            # The admin lists by status, newest first.
            models.Index(fields=["status", "-id"], name="outbox_status_recent"),
            # The admin's filter by message type, newest first.
            models.Index(fields=["exchange", "-id"], name="outbox_exchange_recent"),
            # The events one occurrence (or other origin) published.
            models.Index(fields=["origin"], condition=~Q(origin=""), name="outbox_origin"),
        ]

    def __str__(self):
        return f"{self.exchange} {self.message_id}"

    def record_failure(self, error: str, now, max_attempts: int, max_delay_seconds: int) -> None:
        """Count a failed send: retry after a doubling delay, or give up as dead.

        Only sets the fields; the relay writes them with the rest of its batch's outcomes
        (outbox.sql.record_outcomes).
        """
        self.attempts += 1
        self.last_error = error
        if self.attempts >= max_attempts:
            self.status = self.Status.DEAD
        else:
            self.available_at = now + self.retry_delay(self.attempts, max_delay_seconds)

    @staticmethod
    def retry_delay(attempts: int, max_delay_seconds: int) -> timedelta:
        """The wait after a message's `attempts`-th failed send: 1 s, doubling, at most max_delay_seconds."""
        return doubling(timedelta(seconds=1), attempts, timedelta(seconds=max_delay_seconds))


class PublishedKey(models.Model):
    """Idempotency keys published within the duplicate-detection window."""

    idempotency_key = models.CharField(max_length=255, primary_key=True)
    published_at = models.DateTimeField()

    def __str__(self):
        return self.idempotency_key

    @classmethod
    def purge(cls, before, using: str) -> int:
        """Forget keys published before the duplicate-detection window began."""
        deleted, _ = cls.objects.using(using).filter(published_at__lt=before).delete()
        return deleted

    @classmethod
    def claim(cls, key: str, now, window: timedelta, using: str) -> bool:
        """Record key as published now; False if it was already published within window.

        One statement, so two transactions racing for the same key cannot both win: the
        second waits on the first's row and then sees its published_at.
        """

        table = connections[using].ops.quote_name(cls._meta.db_table)
        with connections[using].cursor() as cursor:
            cursor.execute(
                f"INSERT INTO {table} (idempotency_key, published_at) VALUES (%s, %s) "
                f"ON CONFLICT (idempotency_key) DO UPDATE SET published_at = excluded.published_at "
                f"WHERE {table}.published_at <= %s RETURNING idempotency_key",
                [key, now, now - window],
            )
            return cursor.fetchone() is not None


class RelayInstance(ProcessInstance):
    """The heartbeat of one relay_outbox process, as jobs.SchedulerInstance is a scheduler's.

    Written by outbox.heartbeat.Heartbeat; read by /health/ (a relay with a fresh heartbeat) and the admin.
    """

    class Meta(ProcessInstance.Meta):
        constraints = [
            models.CheckConstraint(
                condition=Q(state__in=["running", "stopped", "lost"]), name="relay_instance_state_valid"
            ),
        ]
