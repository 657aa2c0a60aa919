"""Job definitions' own rows: each definition's policy, its follow-ups, its planning cursor, and the definitions'
version."""

from django.core.exceptions import ValidationError
from django.db import models
from django.db.models import Q
from django_celery_beat.models import PeriodicTask

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


class FollowUpWhen(models.TextChoices):
    """A definition's follow-up's `when`: jobs.engine.oneoff.FollowUp's values (oneoff_store.FOLLOW_UP_WHEN)."""

    SUCCEEDED = "succeeded", "succeeds"
    FAILED = "failed", "fails for good"
    CANCELLED = "cancelled", "is cancelled"
    FINISHED = "finished", "ends, whatever the outcome"


class DefinitionFollowUp(models.Model):
    """When a run of this definition ends `when`, run the registered job `job` with `payload` (issue 25's follow-ups).

    Planning and a manual run copy the definition's follow-ups onto each occurrence's `then` (Definition.then),
    so the occurrence store creates them in the transaction that records its end, as a one-off run's: once,
    whatever dies after, and with no read of this table when a run ends. A change applies to the runs
    planned after it.
    """

    task = models.ForeignKey(PeriodicTask, on_delete=models.CASCADE, related_name="follow_ups")
    when = models.CharField(
        "when this job", max_length=16, choices=FollowUpWhen.choices, default=FollowUpWhen.SUCCEEDED
    )
    job = models.CharField("run", max_length=200, help_text="A registered job.")
    payload = models.JSONField(
        null=True, blank=True, help_text="A JSON object the follow-up sees as JobContext.payload; empty: none."
    )

    class Meta:
        verbose_name = "follow-up"
        constraints = [models.CheckConstraint(condition=Q(when__in=FollowUpWhen.values), name="follow_up_when_valid")]

    def __str__(self):
        return f"when {self.task} {self.get_when_display()}, run {self.job}"

    def as_then(self) -> dict:
        """As an occurrence's `then` keeps a follow-up (jobs.engine.oneoff.FollowUp.checked)."""
        return {"job": self.job, "when": self.when, "payload": self.payload}

    def clean(self):
        from jobs.engine.oneoff import FollowUp, PayloadError, ScheduleError, UnknownJob

        try:
            FollowUp(self.job, self.when, self.payload).checked()
        except ScheduleError as exc:
            field = {UnknownJob: "job", PayloadError: "payload"}.get(type(exc), "when")
            raise ValidationError({field: f"{str(exc)[:1].upper()}{str(exc)[1:]}."}) from None


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
