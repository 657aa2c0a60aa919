import uuid6
from datetime import timedelta

from django.db import models
from django.db.models import Q
from django.utils import timezone


class OutboxMessage(models.Model):
    """One integration event waiting for, or done with, delivery to RabbitMQ.

    Written in the same transaction as the state change that produced it (see
    outbox.publishing.publish); the relay sends it and records the outcome.
    """

    class Status(models.TextChoices):
        PENDING = "pending"
        DELIVERED = "delivered"
        UNROUTABLE = "unroutable"
        DEAD = "dead"

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
    created_at = models.DateTimeField(default=timezone.now)
    status = models.CharField(max_length=16, choices=Status.choices, default=Status.PENDING)
    attempts = models.PositiveIntegerField(default=0)
    # Not sent before this instant: the relay's retry backoff moves it forward.
    available_at = models.DateTimeField(default=timezone.now)
    last_error = models.TextField(blank=True)
    delivered_at = models.DateTimeField(null=True, blank=True)

    class Meta:
        ordering = ["-id"]
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
        ]

    def __str__(self):
        return f"{self.exchange} {self.message_id}"


class PublishedKey(models.Model):
    """Idempotency keys published within the duplicate-detection window."""

    idempotency_key = models.CharField(max_length=255, primary_key=True)
    published_at = models.DateTimeField()

    def __str__(self):
        return self.idempotency_key

    @classmethod
    def claim(cls, key: str, now, window: timedelta, using: str) -> bool:
        """Record key as published now; False if it was already published within window.

        One statement, so two transactions racing for the same key cannot both win: the
        second waits on the first's row and then sees its published_at.
        """
        from django.db import connections

        table = connections[using].ops.quote_name(cls._meta.db_table)
        with connections[using].cursor() as cursor:
            cursor.execute(
                f"INSERT INTO {table} (idempotency_key, published_at) VALUES (%s, %s) "
                f"ON CONFLICT (idempotency_key) DO UPDATE SET published_at = excluded.published_at "
                f"WHERE {table}.published_at <= %s RETURNING idempotency_key",
                [key, now, now - window],
            )
            return cursor.fetchone() is not None
