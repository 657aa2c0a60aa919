"""Job policies, occurrences, attempts and scheduler instances.

Job definitions themselves are django-celery-beat's PeriodicTask rows (with a crontab,
interval or clocked schedule); JobPolicy adds what a scheduler needs beyond them.
"""

import functools
import uuid
from datetime import timedelta

from django.core.exceptions import ValidationError
from django.db import connections, models, router
from django.db.models import F, Q
from django_celery_beat.models import PeriodicTask

from bookworm_scheduler.db import insert_row


class Priority(models.IntegerChoices):
    """As in TickerQ. LongRunning jobs run outside the concurrency limit."""

    LOW = 0, "Low"
    NORMAL = 1, "Normal"
    HIGH = 2, "High"
    LONG_RUNNING = 3, "LongRunning"

    @property
    def cli_name(self) -> str:
        return self.name.lower()


class MisfirePolicy(models.TextChoices):
    """What happens to instants that fell due while no scheduler was running."""

    SKIP = "skip", "Skip: record every missed instant as missed"
    RUN_ONCE = "run_once", "Run once: run the latest missed instant, record the rest as missed"
    RUN_ALL = "run_all", "Run all: run every missed instant"


class JobPolicy(models.Model):
    """How the scheduler runs one job definition: priority, retries, timeout, misfires."""

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
    # Read by the scheduler to notice changes made in the admin (see jobs.definitions).
    updated_at = models.DateTimeField(auto_now=True, db_index=True)

    class Meta:
        verbose_name_plural = "job policies"
        constraints = [
            models.CheckConstraint(condition=Q(priority__gte=0, priority__lte=3), name="job_policy_priority_valid"),
            models.CheckConstraint(
                condition=Q(misfire_policy__in=["skip", "run_once", "run_all"]), name="job_policy_misfire_valid"
            ),
            models.CheckConstraint(
                condition=Q(timeout_seconds__isnull=True) | Q(timeout_seconds__gt=0), name="job_policy_timeout_positive"
            ),
        ]

    def __str__(self):
        return f"policy of {self.task_id}"

    def clean(self):
        intervals = self.retry_intervals
        if not isinstance(intervals, list) or not all(
            isinstance(i, (int, float)) and not isinstance(i, bool) and i >= 0 for i in intervals
        ):
            raise ValidationError({"retry_intervals": "A list of non-negative numbers of seconds, e.g. [30, 60]."})


class LeaseLost(Exception):
    """The occurrence is no longer claimed by this session: its lease expired and was reaped."""


class Occurrence(models.Model):
    """One run of a job: a scheduled instant, or a manual trigger.

    The database makes a second occurrence of the same (job, instant) impossible; a scheduler
    claims it with SELECT ... FOR UPDATE SKIP LOCKED, so exactly one instance runs it.
    """

    class Status(models.TextChoices):
        SCHEDULED = "scheduled"  # waiting for run_after (a first run or a pending retry)
        RUNNING = "running"
        SUCCEEDED = "succeeded"
        FAILED = "failed"
        SKIPPED = "skipped"
        MISSED = "missed"

    FINISHED = (Status.SUCCEEDED, Status.FAILED, Status.SKIPPED, Status.MISSED)

    task = models.ForeignKey(PeriodicTask, null=True, blank=True, on_delete=models.SET_NULL, related_name="occurrences")
    # The definition's name when planned, so history outlives a deleted definition.
    job_name = models.CharField(max_length=200)
    scheduled_for = models.DateTimeField()
    manual = models.BooleanField(default=False)
    priority = models.PositiveSmallIntegerField(choices=Priority.choices, default=Priority.NORMAL)
    status = models.CharField(max_length=16, choices=Status.choices, default=Status.SCHEDULED)
    # Not claimed before this instant: scheduled_for, then the time of a pending retry.
    run_after = models.DateTimeField()
    attempts = models.PositiveSmallIntegerField(default=0)
    # The instance id of the scheduler that claimed it last, and that process's session.
    instance = models.CharField(max_length=200, blank=True)
    claimed_by = models.UUIDField(null=True, blank=True)
    lease_expires_at = models.DateTimeField(null=True, blank=True)
    claimed_at = models.DateTimeField(null=True, blank=True)  # start of the current attempt
    started_at = models.DateTimeField(null=True, blank=True)
    finished_at = models.DateTimeField(null=True, blank=True)
    # The last error, or why it was skipped or missed.
    detail = models.TextField(blank=True)
    created_at = models.DateTimeField(auto_now_add=True)

    class Meta:
        ordering = ["-scheduled_for", "-id"]
        constraints = [
            models.UniqueConstraint(
                fields=["task", "scheduled_for"], condition=Q(manual=False), name="occurrence_once_per_instant"
            ),
            models.CheckConstraint(
                condition=Q(status__in=["scheduled", "running", "succeeded", "failed", "skipped", "missed"]),
                name="occurrence_status_valid",
            ),
            models.CheckConstraint(
                condition=~Q(status="running") | Q(claimed_by__isnull=False, lease_expires_at__isnull=False),
                name="occurrence_running_has_lease",
            ),
            models.CheckConstraint(condition=Q(run_after__gte=F("scheduled_for")), name="occurrence_runs_after_due"),
        ]
        indexes = [
            # Scheduler.claim: the ready rows, highest priority and oldest first.
            models.Index(F("priority").desc(), "run_after", "id", condition=Q(status="scheduled"), name="occ_ready"),
            # Scheduler.reap_expired_leases and lease renewal.
            models.Index(fields=["lease_expires_at"], condition=Q(status="running"), name="occ_running_lease"),
            # History of one job, newest first (admin, `jobs history --job`, `jobs list` last status).
            models.Index(fields=["task", "-scheduled_for"], name="occ_task_recent"),
            # History of all jobs, newest first.
            models.Index(fields=["-scheduled_for", "-id"], name="occ_recent"),
        ]

    def __str__(self):
        return f"{self.job_name} @ {self.scheduled_for.isoformat()}"

    @property
    def duration(self) -> timedelta | None:
        if self.started_at and self.finished_at:
            return self.finished_at - self.started_at
        return None

    @classmethod
    def trigger(cls, task: PeriodicTask, now, priority: int) -> "Occurrence":
        """A manual run of task, due now; a running scheduler picks it up within a second."""
        return cls.objects.create(
            task=task, job_name=task.name, scheduled_for=now, run_after=now, manual=True, priority=priority
        )

    @classmethod
    def claim_next(cls, *, now, session, instance: str, lease: timedelta, long_running: bool, limit: int = 1):
        """Claim up to `limit` ready occurrences, highest priority and oldest first.

        One statement: the inner SELECT takes the rows with FOR UPDATE SKIP LOCKED (on
        PostgreSQL), so concurrent schedulers never claim the same row; the UPDATE moves them
        to running with a lease. Uses the partial index occ_ready.
        """
        using = router.db_for_write(cls)
        connection = connections[using]
        sql, names, converters = _claim_statement(connection.alias, long_running)

        def value(field, v):
            return cls._meta.get_field(field).get_db_prep_value(v, connection)

        params = [
            cls.Status.RUNNING,
            instance,
            value("claimed_by", session),
            value("claimed_at", now),
            value("lease_expires_at", now + lease),
            value("started_at", now),
            cls.Status.SCHEDULED,
            value("run_after", now),
            Priority.LONG_RUNNING,
            limit,
        ]
        # One statement in autocommit mode: atomic on its own, one round trip.
        with connection.cursor() as cursor:
            cursor.execute(sql, params)
            rows = cursor.fetchall()
        if converters:
            rows = converters(rows)
        claimed = [cls.from_db(using, names, row) for row in rows]
        return sorted(claimed, key=lambda o: (-o.priority, o.run_after, o.id))

    @classmethod
    def renew_leases(cls, ids, *, session, now, lease: timedelta) -> int:
        """Extend the leases of this session's running occurrences (the heartbeat)."""
        if not ids:
            return 0
        return cls.objects.filter(id__in=ids, status=cls.Status.RUNNING, claimed_by=session).update(
            lease_expires_at=now + lease
        )

    @classmethod
    def expired_leases(cls, now, limit: int = 100):
        """Running occurrences whose claimer stopped renewing; call inside a transaction.

        Rows locked by a live transaction are skipped. Uses the partial index occ_running_lease.
        """
        return list(
            cls.objects.select_for_update(skip_locked=True).filter(status=cls.Status.RUNNING, lease_expires_at__lt=now)[
                :limit
            ]
        )

    def _transition(self, *, claimer, **fields) -> None:
        """Compare-and-set from running (claimed by `claimer`, this attempt) to `fields`."""
        updated = Occurrence.objects.filter(
            pk=self.pk, status=self.Status.RUNNING, claimed_by=claimer, attempts=self.attempts
        ).update(lease_expires_at=None, **fields)
        if updated != 1:
            raise LeaseLost(f"occurrence {self.pk} attempt {self.attempts} is no longer claimed by {claimer}")
        for name, value in fields.items():
            setattr(self, name, value)
        self.lease_expires_at = None

    # One round trip on PostgreSQL: the compare-and-set and the attempt row together.
    RECORD_ATTEMPT_SQL = """
        WITH finished AS (
            UPDATE jobs_occurrence
               SET status = %(status)s, run_after = COALESCE(%(run_after)s, run_after),
                   finished_at = %(finished_at)s, detail = %(detail)s, lease_expires_at = NULL
             WHERE id = %(id)s AND status = 'running' AND claimed_by = %(claimer)s AND attempts = %(number)s
         RETURNING id
        )
        INSERT INTO jobs_attempt
               (occurrence_id, number, status, instance, started_at, finished_at, duration, error, traceback)
        SELECT id, %(number)s, %(attempt_status)s, %(instance)s, %(started_at)s, %(now)s, %(duration)s,
               %(error)s, %(traceback)s
          FROM finished
        RETURNING id
    """

    def record_attempt(self, *, claimer, started_at, now, error: str = "", traceback: str = "", retry_at=None):
        """Record how the current attempt ended: success when error is empty, else failure.

        A failure with retry_at goes back to scheduled for that instant (the pending retry is a
        row, so it survives restarts); without it, the occurrence has failed. Raises LeaseLost
        if another scheduler reaped the claim meanwhile, so the caller's transaction (the job's
        own work included) rolls back.
        """
        if not error:
            fields = dict(status=self.Status.SUCCEEDED, finished_at=now, detail="")
        elif retry_at is not None:
            fields = dict(status=self.Status.SCHEDULED, run_after=retry_at, detail=error)
        else:
            fields = dict(status=self.Status.FAILED, finished_at=now, detail=error)
        attempt = Attempt(
            occurrence=self,
            number=self.attempts,
            status=Attempt.Status.FAILED if error else Attempt.Status.SUCCEEDED,
            instance=self.instance,
            started_at=started_at,
            finished_at=now,
            duration=now - started_at,
            error=error,
            traceback=traceback,
        )
        using = router.db_for_write(Occurrence)
        if connections[using].vendor != "postgresql":
            self._transition(claimer=claimer, **fields)
            return insert_row(attempt, using)
        with connections[using].cursor() as cursor:
            cursor.execute(
                self.RECORD_ATTEMPT_SQL,
                {
                    "id": self.pk,
                    "claimer": claimer,
                    "status": fields["status"],
                    "run_after": fields.get("run_after"),
                    "finished_at": fields.get("finished_at"),
                    "detail": fields["detail"],
                    "number": attempt.number,
                    "attempt_status": attempt.status,
                    "instance": attempt.instance,
                    "started_at": started_at,
                    "now": now,
                    "duration": attempt.duration,
                    "error": error,
                    "traceback": traceback,
                },
            )
            row = cursor.fetchone()
        if row is None:
            raise LeaseLost(f"occurrence {self.pk} attempt {self.attempts} is no longer claimed by {claimer}")
        for name, value in fields.items():
            setattr(self, name, value)
        self.lease_expires_at = None
        attempt.pk = row[0]
        return attempt

    def skip(self, *, claimer, now, reason: str) -> None:
        """Finish without running (definition disabled, deleted or expired); no attempt is counted."""
        self._transition(
            claimer=claimer, status=self.Status.SKIPPED, finished_at=now, detail=reason, attempts=self.attempts - 1
        )


@functools.cache
def _claim_statement(alias: str, long_running: bool):
    """The claim's SQL, the attribute names of what it returns, and the converters of its rows.

    Built once per database: the claim runs once per occurrence on the hot path.
    """
    connection = connections[alias]
    fields = Occurrence._meta.concrete_fields
    table = connection.ops.quote_name(Occurrence._meta.db_table)
    lock = " FOR UPDATE SKIP LOCKED" if connection.features.has_select_for_update_skip_locked else ""
    kind = "=" if long_running else "<>"
    sql = (
        f"UPDATE {table} SET status = %s, attempts = attempts + 1, instance = %s, claimed_by = %s, "
        f"claimed_at = %s, lease_expires_at = %s, started_at = COALESCE(started_at, %s) "
        f"WHERE id IN (SELECT id FROM {table} WHERE status = %s AND run_after <= %s AND priority {kind} %s "
        f"ORDER BY priority DESC, run_after, id LIMIT %s{lock}) "
        f"RETURNING {', '.join(connection.ops.quote_name(f.column) for f in fields)}"
    )
    compiler = Occurrence.objects.none().query.get_compiler(alias)
    converters = compiler.get_converters([f.get_col(Occurrence._meta.db_table) for f in fields])
    convert = (lambda rows: list(compiler.apply_converters(rows, converters))) if converters else None
    return sql, [f.attname for f in fields], convert


class Attempt(models.Model):
    """One execution of an occurrence, with its outcome."""

    class Status(models.TextChoices):
        SUCCEEDED = "succeeded"
        FAILED = "failed"

    occurrence = models.ForeignKey(Occurrence, on_delete=models.CASCADE, related_name="attempt_set")
    number = models.PositiveSmallIntegerField()
    status = models.CharField(max_length=16, choices=Status.choices)
    instance = models.CharField(max_length=200)
    started_at = models.DateTimeField()
    finished_at = models.DateTimeField()
    duration = models.DurationField()
    error = models.TextField(blank=True)
    traceback = models.TextField(blank=True)

    class Meta:
        ordering = ["-started_at"]
        constraints = [
            models.UniqueConstraint(fields=["occurrence", "number"], name="attempt_number_unique"),
            models.CheckConstraint(condition=Q(status__in=["succeeded", "failed"]), name="attempt_status_valid"),
            models.CheckConstraint(condition=Q(finished_at__gte=F("started_at")), name="attempt_finishes_after_start"),
        ]

    def __str__(self):
        return f"attempt {self.number} of {self.occurrence_id}"


class SchedulerInstance(models.Model):
    """The heartbeat of one runscheduler process."""

    session = models.UUIDField(primary_key=True, default=uuid.uuid4, editable=False)
    instance_id = models.CharField(max_length=200)
    host = models.CharField(max_length=255)
    pid = models.PositiveIntegerField()
    version = models.CharField(max_length=40)
    started_at = models.DateTimeField()
    last_seen = models.DateTimeField(db_index=True)
    stopped_at = models.DateTimeField(null=True, blank=True)

    class Meta:
        ordering = ["-last_seen"]

    def __str__(self):
        return f"{self.instance_id} (pid {self.pid})"
