"""Occurrences (one run of a job each) and their attempts."""

from datetime import UTC, datetime, timedelta

from django.db import models
from django.db.models import F, Q
from django.db.models.functions import Upper
from django_celery_beat.models import PeriodicTask

from jobs.engine.policy import Priority


# States are labelled by their own words (Django would capitalise them): one word per state in the
# console's lists, filters and pages, the command line and the API alike.
class OccurrenceStatus(models.TextChoices):
    SCHEDULED = "scheduled", "scheduled"  # waiting for run_after (a first run or a pending retry)
    RUNNING = "running", "running"
    SUCCEEDED = "succeeded", "succeeded"
    FAILED = "failed", "failed"
    SKIPPED = "skipped", "skipped"
    MISSED = "missed", "missed"
    EXPIRED = "expired", "expired"  # a one-off run not started by its expires_at: never run late


OCCURRENCE_FINISHED = (
    OccurrenceStatus.SUCCEEDED,
    OccurrenceStatus.FAILED,
    OccurrenceStatus.SKIPPED,
    OccurrenceStatus.MISSED,
    OccurrenceStatus.EXPIRED,
)
# Not finished: while a one-off run with a key is one of these, scheduling that key again returns it.
OCCURRENCE_LIVE = (OccurrenceStatus.SCHEDULED, OccurrenceStatus.RUNNING)


class OccurrenceQuerySet(models.QuerySet):
    def finished_before(self, cutoff: datetime):
        """Finished occurrences that finished before cutoff (index occ_finished)."""
        return self.filter(status__in=Occurrence.FINISHED, finished_at__lt=cutoff)


class Occurrence(models.Model):
    """One run of a job: a definition's scheduled instant, a manual trigger, or a one-off run.

    The database makes a second occurrence of the same (definition, instant) impossible; a scheduler
    claims it with SELECT ... FOR UPDATE SKIP LOCKED, so exactly one instance runs it. A one-off run
    (jobs.engine.oneoff.schedule) has no definition: `job` names its registered job, and it carries
    its own payload, idempotency key and expiry; its job's return value is kept in `result`.
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
    # A one-off run's registered job (jobs.engine.registry); blank for a definition's occurrence, whose
    # definition names the job. db_default: the planner's rows are inserted in SQL.
    job = models.CharField(max_length=200, blank=True, db_default="")
    payload = models.JSONField(null=True, blank=True, help_text="A one-off run's JSON object (JobContext.payload).")
    result = models.JSONField(null=True, blank=True, help_text="What the job returned, when it succeeded.")
    # While a one-off run with this key is scheduled or running, scheduling the key again returns it.
    key = models.CharField(max_length=200, blank=True, db_default="")
    expires_at = models.DateTimeField(null=True, blank=True, help_text="Not started by then: expired, never run.")
    # The run whose outcome created this one (a follow-up), and the follow-ups this one creates.
    parent = models.ForeignKey(
        "self", null=True, blank=True, on_delete=models.SET_NULL, related_name="children", db_index=False
    )
    then = models.JSONField(null=True, blank=True, help_text="Follow-ups to create when it ends.")

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
            # jobs.engine.oneoff: one live run per key (INSERT ... ON CONFLICT DO NOTHING, then read it).
            # Partial: only keyed runs still scheduled or running are in it.
            models.UniqueConstraint(
                fields=["key"], condition=Q(status__in=OCCURRENCE_LIVE) & ~Q(key=""), name="occurrence_key_once_live"
            ),
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
            # Upcoming one-off runs, soonest first (jobs.web.oneoff_admin.upcoming): an ordered read however many wait.
            models.Index(
                "run_after",
                "id",
                condition=Q(status__in=OCCURRENCE_LIVE) & ~Q(job=""),
                name="occ_oneoff_upcoming",
            ),
            # A run's follow-ups (its children), and pruning's unlinking of them.
            models.Index(fields=["parent"], condition=Q(parent__isnull=False), name="occ_parent"),
            # jobs.engine.store.prune: the oldest finished rows.
            models.Index(
                fields=["finished_at"],
                condition=Q(status__in=OCCURRENCE_FINISHED),
                name="occ_finished",
            ),
        ]

    def __str__(self):
        # The page's title and the audit log's name of it: the same for every viewer, so in UTC.
        return f"{self.job_name} at {self.scheduled_utc}"

    @property
    def scheduled_utc(self) -> str:
        """Its instant as the audit log and the command line say it: in UTC, to the second."""
        return f"{self.scheduled_for.astimezone(UTC):%Y-%m-%d %H:%M:%S} UTC"

    @property
    def one_off(self) -> bool:
        """A one-off run of a registered job (no definition; jobs.engine.oneoff)."""
        return bool(self.job)

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
