"""The schema: job policies, planning cursors, occurrences, attempts, alerts and scheduler instances.

Job definitions themselves are django-celery-beat's PeriodicTask rows (with a crontab,
interval or clocked schedule); JobPolicy and PlanningCursor add what a scheduler needs and
owns beyond them. An occurrence's state changes are the occurrence store's (jobs.engine.store);
the SQL that the hot paths send is in jobs.engine.sql. The status words of the constraints and
indexes below are the enums' (OccurrenceStatus, AttemptStatus, ...), as the migrations spell them.
"""

from datetime import UTC, datetime, timedelta

from django.conf import settings
from django.core.exceptions import ValidationError
from django.db import models
from django.db.models import F, Q
from django.db.models.functions import Upper
from django.urls import reverse
from django_celery_beat.models import PeriodicTask

from bookworm_scheduler.kernel.backoff import doubling
from bookworm_scheduler.kernel.instances import ProcessInstance
from jobs.engine.policy import MisfirePolicy, Policy, Priority


class JobPolicy(models.Model):
    """How the scheduler runs one job definition: the Policy value, editable in the admin."""

    task = models.OneToOneField(PeriodicTask, primary_key=True, on_delete=models.CASCADE, related_name="policy")
    priority = models.PositiveSmallIntegerField(choices=Priority.choices, default=Priority.NORMAL)
    misfire_policy = models.CharField(max_length=16, choices=MisfirePolicy.choices, default=MisfirePolicy.RUN_ONCE)
    max_retries = models.PositiveSmallIntegerField(default=0, help_text="Attempts after the first one.")
    retry_intervals = models.JSONField(
        default=list,
        blank=True,
        help_text="Seconds to wait before each retry, e.g. [30, 60, 300]; the last one repeats. Empty: retry at once.",
    )
    timeout_seconds = models.PositiveIntegerField(null=True, blank=True, help_text="Empty: no timeout.")

    class Meta:
        verbose_name_plural = "job policies"
        constraints = [
            models.CheckConstraint(
                condition=Q(priority__gte=min(Priority.values), priority__lte=max(Priority.values)),
                name="job_policy_priority_valid",
            ),
            models.CheckConstraint(
                condition=Q(misfire_policy__in=MisfirePolicy.values), name="job_policy_misfire_valid"
            ),
            models.CheckConstraint(
                condition=Q(timeout_seconds__isnull=True) | Q(timeout_seconds__gt=0), name="job_policy_timeout_positive"
            ),
        ]

    def __str__(self):
        return f"policy of {self.task_id}"

    @classmethod
    def fields_of(cls, policy: Policy) -> dict:
        return dict(
            priority=policy.priority,
            misfire_policy=policy.misfire,
            max_retries=policy.retries,
            retry_intervals=list(policy.retry_intervals),
            timeout_seconds=policy.timeout,
        )

    def as_policy(self) -> Policy:
        return Policy(
            priority=self.priority,
            misfire=self.misfire_policy,
            retries=self.max_retries,
            retry_intervals=tuple(self.retry_intervals or ()),
            timeout=self.timeout_seconds,
        )

    def clean(self):
        intervals = self.retry_intervals
        if not isinstance(intervals, list) or not all(
            isinstance(i, (int, float)) and not isinstance(i, bool) and i >= 0 for i in intervals
        ):
            raise ValidationError({"retry_intervals": "A list of non-negative numbers of seconds, e.g. [30, 60]."})


class PlanningCursor(models.Model):
    """How far one definition is planned: every instant up to planned_through has its row.

    Kept by the database (triggers of migration 0003) for every path that writes definitions:
    a new definition starts from the moment it was created; a changed schedule (its crontab,
    interval or clocked row, or the start time) plans from the moment of the change (a save() first
    plans what the old schedule owed: jobs/engine/definition_changes.py); disabling
    sets paused_at and enabling sets resumed_at, and the planner never plans an instant in
    (paused_at, resumed_at]. Planning moves planned_through and clears the pause once past it.
    """

    task = models.OneToOneField(
        PeriodicTask, primary_key=True, on_delete=models.DO_NOTHING, db_constraint=False, related_name="planning"
    )
    planned_through = models.DateTimeField()
    paused_at = models.DateTimeField(null=True, blank=True)
    resumed_at = models.DateTimeField(null=True, blank=True)

    def __str__(self):
        return f"{self.task_id} planned through {self.planned_through.isoformat()}"


class DefinitionsVersion(models.Model):
    """One row whose version moves (by trigger) on every write to a definition, schedule or policy.

    Schedulers read it when the same trigger NOTIFYs them (or at their safety poll) and reload
    their definitions when it moved, whatever path the write took: the admin, a
    QuerySet.update() or plain SQL.
    """

    version = models.BigIntegerField(default=0)

    @classmethod
    def current(cls, using=None) -> int | None:
        return cls.objects.using(using).filter(id=1).values_list("version", flat=True).first()


# States are labelled by their own words (Django would capitalise them): one word per state in the
# console's lists, filters and pages, the command line and the API alike.
class OccurrenceStatus(models.TextChoices):
    SCHEDULED = "scheduled", "scheduled"  # waiting for run_after (a first run or a pending retry)
    RUNNING = "running", "running"
    SUCCEEDED = "succeeded", "succeeded"
    FAILED = "failed", "failed"
    SKIPPED = "skipped", "skipped"
    MISSED = "missed", "missed"


OCCURRENCE_FINISHED = (
    OccurrenceStatus.SUCCEEDED,
    OccurrenceStatus.FAILED,
    OccurrenceStatus.SKIPPED,
    OccurrenceStatus.MISSED,
)


class OccurrenceQuerySet(models.QuerySet):
    def finished_before(self, cutoff: datetime):
        """Finished occurrences that finished before cutoff (index occ_finished)."""
        return self.filter(status__in=Occurrence.FINISHED, finished_at__lt=cutoff)


class Occurrence(models.Model):
    """One run of a job: a scheduled instant, or a manual trigger.

    The database makes a second occurrence of the same (job, instant) impossible; a scheduler
    claims it with SELECT ... FOR UPDATE SKIP LOCKED, so exactly one instance runs it.
    """

    Status = OccurrenceStatus
    FINISHED = OCCURRENCE_FINISHED

    task = models.ForeignKey(PeriodicTask, null=True, blank=True, on_delete=models.SET_NULL, related_name="occurrences")
    # The definition's name when planned, so history outlives a deleted definition.
    job_name = models.CharField(max_length=200)
    scheduled_for = models.DateTimeField()
    manual = models.BooleanField(default=False)
    triggered_by = models.CharField(max_length=150, blank=True, help_text="Who asked for a manual run.")
    priority = models.PositiveSmallIntegerField(choices=Priority.choices, default=Priority.NORMAL)
    status = models.CharField(max_length=16, choices=Status.choices, default=Status.SCHEDULED)
    # Not claimed before this instant: scheduled_for, then the time of a pending retry.
    run_after = models.DateTimeField()
    attempts = models.PositiveSmallIntegerField(default=0)
    # The scheduler instance that claimed it last, and the session (SchedulerInstance) of that process.
    scheduler = models.CharField(max_length=200, blank=True)
    session = models.UUIDField(null=True, blank=True)
    lease_expires_at = models.DateTimeField(null=True, blank=True)
    started_at = models.DateTimeField(null=True, blank=True)  # start of the latest attempt
    finished_at = models.DateTimeField(null=True, blank=True)
    # Why it has its status: the last error, or why it was skipped, missed or released.
    reason = models.TextField(blank=True)
    # A running occurrence's cancel, asked from the console (jobs.engine.store.cancel): its runner ends it.
    cancel_requested_at = models.DateTimeField(null=True, blank=True)
    cancel_requested_by = models.CharField(max_length=150, blank=True, db_default="")  # rows inserted in SQL
    created_at = models.DateTimeField(auto_now_add=True)

    objects = OccurrenceQuerySet.as_manager()

    class Meta:
        ordering = ["-scheduled_for", "-id"]
        permissions = [
            ("run_job", "Can run a job now"),
            ("retry_occurrence", "Can retry a failed occurrence"),
            ("cancel_occurrence", "Can cancel an occurrence (a running one: ask it to stop)"),
        ]
        constraints = [
            models.UniqueConstraint(
                fields=["task", "scheduled_for"], condition=Q(manual=False), name="occurrence_once_per_instant"
            ),
            models.CheckConstraint(
                condition=Q(status__in=OccurrenceStatus.values),
                name="occurrence_status_valid",
            ),
            models.CheckConstraint(
                condition=~Q(status=OccurrenceStatus.RUNNING)
                | Q(session__isnull=False, lease_expires_at__isnull=False),
                name="occurrence_running_has_lease",
            ),
            models.CheckConstraint(condition=Q(run_after__gte=F("scheduled_for")), name="occurrence_runs_after_due"),
        ]
        indexes = [
            # sql.claim: the ready rows, highest priority and oldest first.
            models.Index(
                F("priority").desc(),
                "run_after",
                "id",
                condition=Q(status=OccurrenceStatus.SCHEDULED),
                name="occ_ready",
            ),
            # sql.claim of LongRunning jobs: their ready rows only.
            models.Index(
                "run_after",
                "id",
                condition=Q(status=OccurrenceStatus.SCHEDULED, priority=Priority.LONG_RUNNING),
                name="occ_ready_long",
            ),
            # jobs.engine.store.next_ready_at: the earliest first run or pending retry.
            models.Index(
                fields=["run_after"], condition=Q(status=OccurrenceStatus.SCHEDULED), name="occ_scheduled_run_after"
            ),
            # jobs.engine.store.expired_leases and lease renewal.
            models.Index(
                fields=["lease_expires_at"], condition=Q(status=OccurrenceStatus.RUNNING), name="occ_running_lease"
            ),
            # History of one job, newest first (admin, `jobs history --job`, the last run of each job);
            # status and started_at make the jobs list's per-job counts index-only scans.
            models.Index(fields=["task", "-scheduled_for"], include=["status", "started_at"], name="occ_task_recent"),
            # History of all jobs, newest first.
            models.Index(fields=["-scheduled_for", "-id"], name="occ_recent"),
            # The admin's exact, case-insensitive search by job name, newest first.
            # job_name included: the admin's capped count of a search is an index-only scan.
            models.Index(
                Upper("job_name"),
                F("scheduled_for").desc(),
                F("id").desc(),
                include=["job_name"],
                name="occ_job_name_recent",
            ),
            # The history filtered by scheduler, by manual runs, or by a status other than succeeded.
            models.Index(fields=["scheduler", "-scheduled_for", "-id"], name="occ_scheduler_recent"),
            models.Index(fields=["-scheduled_for", "-id"], condition=Q(manual=True), name="occ_manual_recent"),
            models.Index(
                fields=["status", "-scheduled_for", "-id"],
                condition=~Q(status=OccurrenceStatus.SUCCEEDED),
                name="occ_status_recent",
            ),
            # jobs.engine.store.prune: the oldest finished rows.
            models.Index(
                fields=["finished_at"],
                condition=Q(status__in=OCCURRENCE_FINISHED),
                name="occ_finished",
            ),
        ]

    def __str__(self):
        # The page's title and the audit log's name of it: the same for every viewer, so in UTC.
        return f"{self.job_name} at {self.scheduled_for.astimezone(UTC):%Y-%m-%d %H:%M:%S} UTC"

    @property
    def duration(self) -> timedelta | None:
        if self.started_at and self.finished_at:
            return self.finished_at - self.started_at
        return None


class AttemptStatus(models.TextChoices):
    SUCCEEDED = "succeeded", "succeeded"
    FAILED = "failed", "failed"


class Attempt(models.Model):
    """One execution of an occurrence, with its outcome."""

    Status = AttemptStatus

    occurrence = models.ForeignKey(Occurrence, on_delete=models.CASCADE, related_name="attempt_set")
    number = models.PositiveSmallIntegerField()
    status = models.CharField(max_length=16, choices=Status.choices)
    scheduler = models.CharField(max_length=200)
    started_at = models.DateTimeField()  # when this attempt really started
    finished_at = models.DateTimeField()
    duration = models.DurationField()
    error = models.TextField(blank=True)
    traceback = models.TextField(blank=True)

    class Meta:
        ordering = ["-started_at"]
        constraints = [
            models.UniqueConstraint(fields=["occurrence", "number"], name="attempt_number_unique"),
            models.CheckConstraint(condition=Q(status__in=AttemptStatus.values), name="attempt_status_valid"),
            models.CheckConstraint(condition=Q(finished_at__gte=F("started_at")), name="attempt_finishes_after_start"),
        ]

    def __str__(self):
        return f"attempt {self.number} of {self.occurrence_id}"


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


class SchedulerInstance(ProcessInstance):
    """The heartbeat of one runscheduler process (every third of its lease, jobs.engine.leases).

    Another scheduler marks it lost once it has been silent for a whole lease; with none
    running to do that, the dashboard shows it stale (bookworm_scheduler.kernel.liveness).
    """

    concurrency = models.PositiveIntegerField(
        null=True,
        blank=True,
        help_text="At most this many occurrences at once: the pool's threads, or Celery's in flight.",
    )

    class Meta(ProcessInstance.Meta):
        pass
