"""Scheduler instances: one heartbeat row per runscheduler process."""

from django.db import models

from bookworm_scheduler.kernel.instances import ProcessInstance


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
