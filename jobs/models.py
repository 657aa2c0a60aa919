"""Job policies, planning cursors, occurrences, attempts, alerts and scheduler instances.

Job definitions themselves are django-celery-beat's PeriodicTask rows (with a crontab,
interval or clocked schedule); JobPolicy and PlanningCursor add what a scheduler needs and
owns beyond them. The SQL that the hot paths send is in jobs.sql.
"""

from datetime import datetime, timedelta

from django.conf import settings
from django.core.exceptions import ValidationError
from django.db import connections, models, router, transaction
from django.db.models import F, Q
from django.db.models.functions import Upper
from django.urls import reverse
from django_celery_beat.models import PeriodicTask

from bookworm_scheduler.backoff import doubling
from bookworm_scheduler.clock import default_clock
from bookworm_scheduler.db import insert_row, prepared_cursor
from bookworm_scheduler.instances import ProcessInstance

from . import sql
from .policy import MisfirePolicy, Policy, Priority


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
    plans what the old schedule owed: jobs/schedule_changes.py); disabling
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


class LeaseLost(Exception):
    """The occurrence is no longer claimed by this session: its lease expired and was reaped."""


class OccurrenceQuerySet(models.QuerySet):
    def finished_before(self, cutoff: datetime):
        """Finished occurrences that finished before cutoff (index occ_finished)."""
        return self.filter(status__in=Occurrence.FINISHED, finished_at__lt=cutoff)

    def prune_batch(self, cutoff: datetime, size: int) -> int:
        """Delete one batch of occurrences finished before cutoff, with their attempts; the count.

        One statement on PostgreSQL (sql.prune_occurrences); elsewhere Django's delete.
        """
        connection = connections[self.db]
        if connection.vendor == "postgresql":
            with connection.cursor() as cursor:
                cursor.execute(sql.prune_occurrences(self.db), [list(Occurrence.FINISHED), cutoff, size])
                return cursor.fetchone()[0]
        ids = list(self.finished_before(cutoff).order_by("finished_at").values_list("id", flat=True)[:size])
        if ids:
            self.filter(id__in=ids).delete()
        return len(ids)


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
    created_at = models.DateTimeField(auto_now_add=True)

    objects = OccurrenceQuerySet.as_manager()

    class Meta:
        ordering = ["-scheduled_for", "-id"]
        permissions = [
            ("run_job", "Can run a job now"),
            ("retry_occurrence", "Can retry a failed occurrence"),
            ("cancel_occurrence", "Can cancel a scheduled occurrence"),
        ]
        constraints = [
            models.UniqueConstraint(
                fields=["task", "scheduled_for"], condition=Q(manual=False), name="occurrence_once_per_instant"
            ),
            models.CheckConstraint(
                condition=Q(status__in=["scheduled", "running", "succeeded", "failed", "skipped", "missed"]),
                name="occurrence_status_valid",
            ),
            models.CheckConstraint(
                condition=~Q(status="running") | Q(session__isnull=False, lease_expires_at__isnull=False),
                name="occurrence_running_has_lease",
            ),
            models.CheckConstraint(condition=Q(run_after__gte=F("scheduled_for")), name="occurrence_runs_after_due"),
        ]
        indexes = [
            # sql.claim: the ready rows, highest priority and oldest first.
            models.Index(F("priority").desc(), "run_after", "id", condition=Q(status="scheduled"), name="occ_ready"),
            # sql.claim of LongRunning jobs: their ready rows only.
            models.Index("run_after", "id", condition=Q(status="scheduled", priority=3), name="occ_ready_long"),
            # Occurrence.next_ready_at: the earliest first run or pending retry.
            models.Index(fields=["run_after"], condition=Q(status="scheduled"), name="occ_scheduled_run_after"),
            # Occurrence.expired_leases and lease renewal.
            models.Index(fields=["lease_expires_at"], condition=Q(status="running"), name="occ_running_lease"),
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
                fields=["status", "-scheduled_for", "-id"], condition=~Q(status="succeeded"), name="occ_status_recent"
            ),
            # OccurrenceQuerySet.prune_batch: the oldest finished rows.
            models.Index(
                fields=["finished_at"],
                condition=Q(status__in=["succeeded", "failed", "skipped", "missed"]),
                name="occ_finished",
            ),
        ]

    def __str__(self):
        return f"{self.job_name} @ {self.scheduled_for.isoformat()}"

    @property
    def duration(self) -> timedelta | None:
        if self.started_at and self.finished_at:
            return self.finished_at - self.started_at
        return None

    @classmethod
    def trigger(
        cls, task: PeriodicTask, *, priority: int, by: str = "", now: datetime | None = None, **fields
    ) -> "Occurrence":
        """A manual run of task, due now by the database's clock; an idle scheduler claims it at once."""
        now = now or default_clock()
        return cls.objects.create(
            task=task,
            job_name=task.name,
            scheduled_for=now,
            run_after=now,
            manual=True,
            triggered_by=by[:150],
            priority=priority,
            **fields,
        )

    @classmethod
    def trigger_claimed(
        cls, task: PeriodicTask, *, priority: int, by: str, session, scheduler: str, lease: timedelta, now: datetime
    ) -> "Occurrence":
        """A manual run of task, due now and claimed by session in the same insert (its first attempt).

        For a process that runs it at once itself (a Celery worker fed by stock celery beat): no
        scheduler can claim it between the insert and the run.
        """
        return cls.trigger(
            task,
            priority=priority,
            by=by,
            now=now,
            status=cls.Status.RUNNING,
            attempts=1,
            scheduler=scheduler,
            session=session,
            lease_expires_at=now + lease,
            started_at=now,
        )

    @classmethod
    def claim_by_id(cls, occurrence_id: int, *, now, session, scheduler: str, lease: timedelta):
        """Compare-and-set one ready occurrence to running for session; None if not ready."""
        updated = cls.objects.filter(id=occurrence_id, status=cls.Status.SCHEDULED, run_after__lte=now).update(
            status=cls.Status.RUNNING,
            attempts=F("attempts") + 1,
            scheduler=scheduler,
            session=session,
            lease_expires_at=now + lease,
            started_at=now,
        )
        return cls.objects.get(id=occurrence_id) if updated else None

    @classmethod
    def next_ready_at(cls) -> datetime | None:
        """The earliest run_after of a scheduled occurrence (index occ_scheduled_run_after)."""
        return (
            cls.objects.filter(status=cls.Status.SCHEDULED)
            .order_by("run_after")
            .values_list("run_after", flat=True)
            .first()
        )

    @classmethod
    def claim(cls, *, now, session, scheduler: str, lease: timedelta, long_running: bool, limit: int = 1):
        """Claim up to `limit` ready occurrences, highest priority and oldest first (sql.claim)."""
        using = router.db_for_write(cls)
        connection = connections[using]
        statement, names, convert = sql.claim(using, long_running)

        def value(field, v):
            return cls._meta.get_field(field).get_db_prep_value(v, connection)

        params = [
            cls.Status.RUNNING,
            scheduler,
            value("session", session),
            value("lease_expires_at", now + lease),
            value("started_at", now),
            cls.Status.SCHEDULED,
            value("run_after", now),
            Priority.LONG_RUNNING,
            limit,
        ]
        # One statement in autocommit mode: atomic on its own, one round trip.
        return cls._fetch(using, statement, params, names, convert)

    @classmethod
    def lock_ready(cls, *, now, limit: int, besides=()) -> list["Occurrence"]:
        """Lock up to `limit` ready ordinary occurrences for the current transaction, unchanged (sql.lock_ready).

        Call inside transaction.atomic(): they stay locked (the group's claim, see
        Runner.run_group) until it ends. besides: the ids this transaction locked already.
        """
        using = router.db_for_write(cls)
        statement, names, convert = sql.lock_ready(using)
        value = cls._meta.get_field("run_after").get_db_prep_value(now, connections[using])
        params = [cls.Status.SCHEDULED, value, Priority.LONG_RUNNING, list(besides), limit]
        return cls._fetch(using, statement, params, names, convert)

    @classmethod
    def _fetch(cls, using: str, statement: str, params, names, convert) -> list["Occurrence"]:
        with prepared_cursor(using) as cursor:
            cursor.execute(statement, params)
            rows = cursor.fetchall()
        if convert:
            rows = convert(rows)
        claimed = [cls.from_db(using, names, row) for row in rows]
        return sorted(claimed, key=lambda o: (-o.priority, o.run_after, o.id))

    def take(self, *, session, scheduler: str, now) -> None:
        """Claim this occurrence (locked by lock_ready) in memory only: record_group writes it with the outcome."""
        self.status, self.attempts, self.started_at = self.Status.RUNNING, self.attempts + 1, now
        self.scheduler, self.session = scheduler, session

    @classmethod
    def renew_leases(cls, ids, *, session, now, lease: timedelta) -> int:
        """Extend the leases of this session's running occurrences."""
        if not ids:
            return 0
        return cls.objects.filter(id__in=ids, status=cls.Status.RUNNING, session=session).update(
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

    def _transition(self, *, session, **fields) -> None:
        """Compare-and-set from running (claimed by `session`, this attempt) to `fields`."""
        updated = Occurrence.objects.filter(
            pk=self.pk, status=self.Status.RUNNING, session=session, attempts=self.attempts
        ).update(lease_expires_at=None, **fields)
        if updated != 1:
            raise LeaseLost(f"occurrence {self.pk} attempt {self.attempts} is no longer claimed by session {session}")
        for name, value in fields.items():
            setattr(self, name, value)
        self.lease_expires_at = None

    def record_attempt(self, *, session, started_at, now, error: str = "", traceback: str = "", retry_at=None):
        """Record how the current attempt ended: success when error is empty, else failure.

        A failure with retry_at goes back to scheduled for that instant (the pending retry is a
        row, so it survives restarts); without it, the occurrence has failed, and its alert (if
        any channel is configured) is written in the same transaction. Raises LeaseLost
        if another scheduler reaped the claim meanwhile, so the caller's transaction (the job's
        own work included) rolls back.
        """
        fields, attempt_status, started_at = self._outcome(
            started_at=started_at, now=now, error=error, retry_at=retry_at
        )
        using = router.db_for_write(Occurrence)
        connection = connections[using]
        if connection.vendor != "postgresql":
            self._transition(session=session, **fields)
            self._alert_if_failed(now, using)
            attempt = Attempt(
                occurrence=self,
                number=self.attempts,
                status=attempt_status,
                scheduler=self.scheduler,
                started_at=started_at,
                finished_at=now,
                duration=now - started_at,
                error=error,
                traceback=traceback,
            )
            insert_row(attempt, using)
            return
        with prepared_cursor(using) as cursor:
            cursor.execute(
                sql.record_attempt(using),
                {
                    "id": self.pk,
                    "session": session,
                    "status": fields["status"],
                    "run_after": fields.get("run_after"),
                    "finished_at": fields.get("finished_at"),
                    "reason": fields["reason"],
                    "number": self.attempts,
                    "attempt_status": attempt_status,
                    "scheduler": self.scheduler,
                    "started_at": started_at,
                    "now": now,
                    "duration": now - started_at,
                    "error": error,
                    "traceback": traceback,
                },
            )
            row = cursor.fetchone()
        if row is None:
            raise LeaseLost(f"occurrence {self.pk} attempt {self.attempts} is no longer claimed by session {session}")
        for name, value in fields.items():
            setattr(self, name, value)
        self.lease_expires_at = None
        self._alert_if_failed(now, using)

    @classmethod
    def record_group(cls, outcomes, *, session, scheduler: str) -> None:
        """Record the attempts of a group's runs in one statement (sql.record_group), alerts included.

        outcomes: (occurrence, started_at, now, error, traceback, retry_at) per run, each
        occurrence taken (take()) from the rows this transaction locked with lock_ready. Raises
        LeaseLost, and so rolls the whole group back, if a row was not where the lock left it.
        """
        using = router.db_for_write(cls)
        columns: list[list] = [[] for _ in range(11)]
        finished = []
        for occurrence, started_at, now, error, traceback, retry_at in outcomes:
            fields, attempt_status, started_at = occurrence._outcome(
                started_at=started_at, now=now, error=error, retry_at=retry_at
            )
            row = (
                occurrence.pk,
                occurrence.attempts,
                fields["status"],
                fields.get("run_after"),
                fields.get("finished_at"),
                fields["reason"],
                attempt_status,
                started_at,
                now,
                error,
                traceback,
            )
            for column, value in zip(columns, row, strict=True):
                column.append(value)
            finished.append((occurrence, fields, now))
        with prepared_cursor(using) as cursor:
            cursor.execute(sql.record_group(using), [*columns, scheduler, session])
            recorded = len(cursor.fetchall())
        if recorded != len(finished):
            raise LeaseLost(f"{len(finished) - recorded} of the group's {len(finished)} locked occurrences moved")
        for occurrence, fields, now in finished:
            for name, value in fields.items():
                setattr(occurrence, name, value)
            occurrence.lease_expires_at = None
            occurrence._alert_if_failed(now, using)

    def _outcome(self, *, started_at, now, error: str, retry_at) -> tuple[dict, str, datetime]:
        """The fields an ended attempt sets on the occurrence, the attempt's status and its start (at most now)."""
        if not error:
            fields = dict(status=self.Status.SUCCEEDED, finished_at=now, reason="")
        elif retry_at is not None:
            fields = dict(status=self.Status.SCHEDULED, run_after=max(retry_at, self.scheduled_for), reason=error)
        else:
            fields = dict(status=self.Status.FAILED, finished_at=now, reason=error)
        return fields, Attempt.Status.FAILED if error else Attempt.Status.SUCCEEDED, min(started_at, now)

    def _alert_if_failed(self, now, using: str) -> None:
        """A run that failed for good writes its alert in the same transaction; jobs.alerts sends it."""
        if self.status == self.Status.FAILED and Alert.enabled():
            insert_row(Alert.job_failed(self, now), using)

    def attempt_recorded(self) -> bool:
        """Whether the current attempt's record committed (after a lost connection, say)."""
        return Attempt.objects.filter(occurrence_id=self.pk, number=self.attempts).exists()

    def release(self, *, session, reason: str) -> None:
        """Back to scheduled without counting the attempt: the run did not commit, through no fault of its job."""
        self._transition(session=session, status=self.Status.SCHEDULED, attempts=self.attempts - 1, reason=reason)

    def cancel(self, *, by: str, now) -> bool:
        """A scheduled occurrence that will not run (the dashboard's cancel); False if it no longer waits."""
        return bool(
            Occurrence.objects.filter(pk=self.pk, status=self.Status.SCHEDULED).update(
                status=self.Status.SKIPPED, finished_at=now, reason=f"cancelled by {by}"
            )
        )

    def miss(self, *, session, now, reason: str) -> None:
        """Finish as missed without running (its misfire policy: it could not start in time); no attempt is counted."""
        self._transition(
            session=session, status=self.Status.MISSED, finished_at=now, reason=reason, attempts=self.attempts - 1
        )

    def skip(self, *, session, now, reason: str) -> None:
        """Finish without running (definition disabled, deleted or expired); no attempt is counted."""
        self._transition(
            session=session, status=self.Status.SKIPPED, finished_at=now, reason=reason, attempts=self.attempts - 1
        )


class Attempt(models.Model):
    """One execution of an occurrence, with its outcome."""

    class Status(models.TextChoices):
        SUCCEEDED = "succeeded"
        FAILED = "failed"

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
            models.CheckConstraint(condition=Q(status__in=["succeeded", "failed"]), name="attempt_status_valid"),
            models.CheckConstraint(condition=Q(finished_at__gte=F("started_at")), name="attempt_finishes_after_start"),
        ]

    def __str__(self):
        return f"attempt {self.number} of {self.occurrence_id}"


# Alerts with a channel still to send: the condition of index alert_pending, which
# AlertQuerySet.due repeats so that PostgreSQL uses it.
ALERT_PENDING = Q(email_status="pending") | Q(webhook_status="pending")


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
    (Occurrence.record_attempt) and sent after it commits by jobs.alerts, with retries: a crash
    between the failure and the send loses no alert. Each channel (email, webhook) has its own
    outcome; a channel not configured when the alert was written is skipped. Nothing is written
    while no channel is configured.
    """

    class Kind(models.TextChoices):
        JOB_FAILED = "job_failed"
        FAILURE_RATE = "failure_rate"

    class Delivery(models.TextChoices):
        PENDING = "pending"
        SENT = "sent"
        FAILED = "failed"  # gave up after ALERT_MAX_ATTEMPTS tries
        SKIPPED = "skipped"  # the channel is not configured

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
            models.CheckConstraint(condition=Q(kind__in=["job_failed", "failure_rate"]), name="alert_kind_valid"),
            models.CheckConstraint(
                condition=Q(email_status__in=["pending", "sent", "failed", "skipped"])
                & Q(webhook_status__in=["pending", "sent", "failed", "skipped"]),
                name="alert_delivery_valid",
            ),
        ]
        indexes = [
            # AlertQuerySet.due (jobs.alerts.send_due_alerts): the alerts still to send.
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
    """The heartbeat of one runscheduler process (every third of its lease, jobs.leases).

    Another scheduler marks it lost once it has been silent for a whole lease; with none
    running to do that, the dashboard shows it stale (bookworm_scheduler.liveness).
    """

    class Meta(ProcessInstance.Meta):
        pass


def prune_history(now: datetime, *, keep: timedelta, batch: int, batches: int) -> tuple[int, bool]:
    """Delete up to batches x batch finished occurrences older than keep, and old instance rows.

    Each batch is its own short transaction. On PostgreSQL an advisory lock lets one scheduler
    prune at a time (the others skip). Returns (occurrences deleted, more left?).
    """
    deleted = 0
    for _ in range(batches):
        with transaction.atomic():
            if not sql.try_lock("jobs.prune_history"):
                return deleted, False
            count = Occurrence.objects.prune_batch(now - keep, batch)
            if deleted == 0:
                SchedulerInstance.objects.prune(now - timedelta(days=1))
        deleted += count
        if count < batch:
            return deleted, False
    return deleted, True
