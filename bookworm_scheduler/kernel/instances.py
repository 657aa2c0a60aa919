"""The heartbeat row of a long-running process: a scheduler's (jobs) or a relay's (outbox)."""

import os
import socket
import uuid
from datetime import datetime, timedelta

from django.db import models
from django.db.models import F

import bookworm_scheduler
from bookworm_scheduler.kernel.liveness import Liveness

# How long the row of a stopped or lost process is kept (the admin's list of instances shows it).
KEEP = timedelta(days=1)


class InstanceQuerySet(models.QuerySet):
    def alive(self):
        return self.filter(state=self.model.State.RUNNING)

    def register(self, session, instance_id: str, now) -> None:
        """A process's row, as it starts: who and where it is, running, seen now."""
        self.update_or_create(
            session=session,
            defaults=dict(
                instance_id=instance_id,
                host=socket.gethostname(),
                pid=os.getpid(),
                version=bookworm_scheduler.__version__,
                started_at=now,
                last_seen=now,
                state=self.model.State.RUNNING,
            ),
        )

    def beat(self, session, now) -> int:
        """Renew one process's heartbeat; a process marked lost that beats again was only slow."""
        return self.filter(session=session).update(last_seen=now, state=self.model.State.RUNNING, stopped_at=None)

    def retire(self, session, now) -> int:
        """The process stopped on purpose."""
        return self.filter(session=session).update(state=self.model.State.STOPPED, stopped_at=now, last_seen=now)

    def mark_lost(self, now, silence: timedelta) -> int:
        """Processes that stopped beating without saying so (kill -9, a lost host) are lost."""
        return (
            self.alive()
            .filter(last_seen__lt=now - silence)
            .update(state=self.model.State.LOST, stopped_at=F("last_seen"))
        )

    def prune(self, now) -> int:
        """Delete the rows of processes stopped or lost more than KEEP before now."""
        deleted, _ = self.exclude(state=self.model.State.RUNNING).filter(last_seen__lt=now - KEEP).delete()
        return deleted


class ProcessInstance(models.Model):
    """One process's row: who it is, when it last beat, and whether it is running."""

    # Labelled by their own words, as every state is (jobs.models.OccurrenceStatus).
    class State(models.TextChoices):
        RUNNING = "running", "running"
        STOPPED = "stopped", "stopped"  # said goodbye
        LOST = "lost", "lost"  # stopped beating: killed, or its host went away

    session = models.UUIDField(primary_key=True, default=uuid.uuid4, editable=False)
    instance_id = models.CharField(max_length=200)
    host = models.CharField(max_length=255)
    pid = models.PositiveIntegerField()
    version = models.CharField(max_length=40)
    started_at = models.DateTimeField()
    # InstanceQuerySet.mark_lost and .prune, the freshest instance for /health/.
    last_seen = models.DateTimeField(db_index=True)
    state = models.CharField(max_length=16, choices=State.choices, default=State.RUNNING)
    stopped_at = models.DateTimeField(null=True, blank=True)

    objects = InstanceQuerySet.as_manager()

    class Meta:
        abstract = True
        ordering = ["-last_seen"]

    def __str__(self):
        return f"{self.instance_id} (pid {self.pid})"

    def is_stale(self, now: datetime, liveness: Liveness) -> bool:
        """Running, but silent for longer than its liveness allows: dead or stuck."""
        return self.state == self.State.RUNNING and liveness.is_stale(self.last_seen, now)
