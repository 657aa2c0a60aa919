"""Alerts: messages to the people who run the scheduler, each channel with its own outcome."""

from datetime import datetime, timedelta

from django.conf import settings
from django.db import models
from django.db.models import Q
from django.urls import reverse

from bookworm_scheduler.kernel.backoff import doubling
from jobs.models.occurrences import Occurrence


class AlertKind(models.TextChoices):
    JOB_FAILED = "job_failed"
    FAILURE_RATE = "failure_rate"


class AlertDelivery(models.TextChoices):
    PENDING = "pending", "pending"
    SENT = "sent", "sent"
    FAILED = "failed", "failed"  # gave up after ALERT_MAX_ATTEMPTS tries
    SKIPPED = "skipped", "skipped"  # the channel is not configured


# Alerts with a channel still to send: the condition of index alert_pending, which
# AlertQuerySet.due repeats so that PostgreSQL uses it.
ALERT_PENDING = Q(email_status=AlertDelivery.PENDING) | Q(webhook_status=AlertDelivery.PENDING)


class AlertQuerySet(models.QuerySet):
    def due(self, now: datetime):
        """Alerts with a channel still to send, whose next try has come; oldest first (index alert_pending)."""
        return self.filter(Alert.PENDING, next_try_at__lte=now).order_by("next_try_at", "id")

    def created_since(self, kind: str, since: datetime):
        """Alerts of kind created after since (index alert_created)."""
        return self.filter(created_at__gt=since, kind=kind)

    def prune_batch(self, cutoff: datetime, size: int) -> int:
        """Delete one batch of alerts created before cutoff with nothing left to send; the count."""
        old = self.filter(created_at__lt=cutoff).exclude(Alert.PENDING).order_by("created_at")
        ids = list(old.values_list("id", flat=True)[:size])
        if ids:
            self.filter(id__in=ids).delete()
        return len(ids)


class Alert(models.Model):
    """A message to the people who run the scheduler: a job failed for good, or too many runs fail.

    A job_failed alert is written in the transaction that records the failure
    (jobs.engine.store.record_attempt) and sent after it commits by jobs.alerts.delivery, with retries: a crash
    between the failure and the send loses no alert. Each channel (email, webhook) has its own
    outcome; a channel not configured when the alert was written is skipped. Nothing is written
    while no channel is configured.
    """

    Kind = AlertKind

    Delivery = AlertDelivery

    CHANNELS = ("email", "webhook")
    PENDING = ALERT_PENDING
    # The wait before the second try, doubling after each failed one, up to RETRY_MAX.
    RETRY_FIRST, RETRY_MAX = timedelta(seconds=30), timedelta(hours=1)

    kind = models.CharField(max_length=16, choices=Kind.choices)
    # Null once history pruning deleted the occurrence: job_name and error are copies that stay.
    occurrence = models.ForeignKey(Occurrence, null=True, blank=True, on_delete=models.SET_NULL, related_name="alerts")
    job_name = models.CharField(max_length=200, blank=True)
    error = models.TextField(blank=True)
    subject = models.CharField(max_length=255)
    text = models.TextField()
    created_at = models.DateTimeField()
    email_status = models.CharField(max_length=16, choices=Delivery.choices)
    webhook_status = models.CharField(max_length=16, choices=Delivery.choices)
    attempts = models.PositiveSmallIntegerField(default=0, help_text="Tries of the channels still pending.")
    next_try_at = models.DateTimeField()
    last_error = models.TextField(blank=True)

    objects = AlertQuerySet.as_manager()

    class Meta:
        ordering = ["-created_at", "-id"]
        constraints = [
            models.CheckConstraint(condition=Q(kind__in=AlertKind.values), name="alert_kind_valid"),
            models.CheckConstraint(
                condition=Q(email_status__in=AlertDelivery.values) & Q(webhook_status__in=AlertDelivery.values),
                name="alert_delivery_valid",
            ),
        ]
        indexes = [
            # AlertQuerySet.due (jobs.alerts.delivery.send_due_alerts): the alerts still to send.
            models.Index(fields=["next_try_at", "id"], condition=ALERT_PENDING, name="alert_pending"),
            # The failure-rate cool-down (AlertQuerySet.created_since) and AlertQuerySet.prune_batch.
            models.Index(fields=["created_at"], name="alert_created"),
        ]

    def __str__(self):
        return f"{self.kind} alert {self.pk}: {self.subject}"

    @staticmethod
    def configured() -> dict[str, bool]:
        """Which channels the settings configure, by name."""
        return {"email": bool(settings.ALERT_EMAILS), "webhook": bool(settings.ALERT_WEBHOOK_URL)}

    @classmethod
    def enabled(cls) -> bool:
        return any(cls.configured().values())

    @staticmethod
    def dashboard_link(path: str) -> str:
        """A dashboard path as a link: absolute under ALERT_DASHBOARD_URL, else the path alone."""
        return settings.ALERT_DASHBOARD_URL + path

    @classmethod
    def new(cls, kind: str, *, now: datetime, subject: str, text: str, **fields) -> "Alert":
        """An unsaved alert, pending on each configured channel and due now."""
        status = {name: cls.Delivery.PENDING if on else cls.Delivery.SKIPPED for name, on in cls.configured().items()}
        return cls(
            kind=kind,
            subject=subject[:255],
            text=text,
            created_at=now,
            email_status=status["email"],
            webhook_status=status["webhook"],
            next_try_at=now,
            **fields,
        )

    @classmethod
    def job_failed(cls, occurrence: Occurrence, now: datetime) -> "Alert":
        """The alert of an occurrence that failed for good: the job, the error and a link to the run."""
        error = occurrence.reason
        shown = error if len(error) <= 1000 else error[:1000] + "…"
        how = f"run manually by {occurrence.triggered_by}" if occurrence.triggered_by else "scheduled"
        if occurrence.one_off:
            how = f"a one-off run scheduled by {occurrence.triggered_by or 'code'}"
        text = (
            f"Job {occurrence.job_name} failed after {occurrence.attempts} attempt(s) "
            f"({how} for {occurrence.scheduled_for.isoformat()}).\n\n"
            f"Error: {shown}\n\n"
            f"{cls.dashboard_link(reverse('admin:jobs_occurrence_change', args=[occurrence.pk]))}"
        )
        return cls.new(
            cls.Kind.JOB_FAILED,
            now=now,
            subject=f"Job {occurrence.job_name} failed",
            text=text,
            occurrence=occurrence,
            job_name=occurrence.job_name,
            error=error,
        )

    @classmethod
    def failure_rate(cls, *, failed: int, finished: int, window: timedelta, now: datetime) -> "Alert":
        """The alert of too many failures: failed of finished runs within window."""
        minutes = int(window.total_seconds() // 60)
        link = cls.dashboard_link(reverse("admin:jobs_occurrence_changelist") + "?status__exact=failed")
        text = (
            f"{failed} of the {finished} runs that finished in the last {minutes} minutes failed for good "
            f"({failed / finished:.0%}; the threshold is {settings.ALERT_FAILURE_RATE_THRESHOLD:.0%}). "
            f"No other failure-rate alert is sent for {settings.ALERT_COOLDOWN_MINUTES} minutes.\n\n"
            f"Failed runs: {link}"
        )
        subject = f"{failed} of {finished} runs failed in the last {minutes} minutes"
        return cls.new(cls.Kind.FAILURE_RATE, now=now, subject=subject, text=text)

    def pending_channels(self) -> list[str]:
        return [name for name in self.CHANNELS if getattr(self, f"{name}_status") == self.Delivery.PENDING]

    def record_delivery(self, errors: dict[str, str | None], now: datetime) -> None:
        """Record one try of the channels in errors (name: "" if sent, None if no longer configured, else why not).

        A failed channel stays pending for another try after a backoff, until ALERT_MAX_ATTEMPTS
        tries: then it has failed. Saves with update_fields.
        """
        self.attempts += 1
        for name, error in errors.items():
            if error is None:
                status = self.Delivery.SKIPPED
            elif not error:
                status = self.Delivery.SENT
            elif self.attempts >= settings.ALERT_MAX_ATTEMPTS:
                status = self.Delivery.FAILED
            else:
                status = self.Delivery.PENDING
            setattr(self, f"{name}_status", status)
        failures = [f"{name}: {error}" for name, error in errors.items() if error]
        if failures:
            self.last_error = "; ".join(failures)
        self.next_try_at = now + doubling(self.RETRY_FIRST, self.attempts, self.RETRY_MAX)
        self.save(update_fields=["email_status", "webhook_status", "attempts", "next_try_at", "last_error"])
