"""Leases: this process's heartbeat, the renewal of its claims, and the reaping of dead ones.

Every claim has a lease that its scheduler renews (bookworm_scheduler.kernel.liveness). A scheduler that
dies stops renewing; once the lease has expired (by the database's clock) any scheduler records
the lost attempt and retries it per the job's policy, and marks the dead instance lost.
"""

import logging
from datetime import datetime, timedelta

from django.db import DatabaseError, transaction

from bookworm_scheduler.kernel.liveness import Liveness
from jobs.engine import observer, store
from jobs.engine.definitions import Definition, definition_for, load_definition
from jobs.engine.policy import Policy
from jobs.models import SchedulerInstance

logger = logging.getLogger(__name__)


class Leases:
    def __init__(self, *, session, scheduler: str, lease: timedelta):
        self.session = session
        self.scheduler = scheduler
        self.lease = lease
        self.liveness = Liveness.of_lease(lease)
        self.renew_every = self.liveness.renew_every
        self._renewed_at: datetime | None = None

    def register(self, now: datetime, *, concurrency: int | None = None) -> None:
        """Create this process's instance row, with how many occurrences it runs (or hands over) at once."""
        SchedulerInstance.objects.register(self.session, self.scheduler, now)
        SchedulerInstance.objects.filter(session=self.session).update(concurrency=concurrency)
        self._renewed_at = now

    def due(self, now: datetime, *, early: timedelta = timedelta(0)) -> bool:
        """Whether renewal is due (or, with `early`, will be within that time)."""
        return self._renewed_at is None or now - self._renewed_at >= self.renew_every - early

    def next_renewal_at(self) -> datetime | None:
        return None if self._renewed_at is None else self._renewed_at + self.renew_every

    def renew(self, now: datetime, running: list[int]) -> None:
        """Show this process alive and extend the leases of the occurrences it is running."""
        SchedulerInstance.objects.beat(self.session, now)
        store.renew_leases(running, session=self.session, now=now, lease=self.lease)
        self._renewed_at = now

    def reap(self, now: datetime, definitions: dict[int, Definition]) -> int:
        """Record the attempts whose lease expired as failed, retried per policy (or, cancel asked,
        as the cancel: a Celery worker stopped by its revoke); mark dead instances lost."""
        with transaction.atomic():
            expired = store.expired_leases(now)
            for occurrence in expired:
                if occurrence.cancel_requested_at is not None:
                    store.record_cancel(
                        occurrence, session=occurrence.session, started_at=occurrence.started_at, now=now
                    )
                    observer.event(occurrence, "occurrence_skipped", reason=occurrence.reason, status="skipped")
                    continue
                definition = definition_for(
                    occurrence, lambda task_id: definitions.get(task_id) or load_definition(task_id)
                )
                policy = definition.policy if definition else Policy()
                error = (
                    f"lease expired at {occurrence.lease_expires_at.isoformat()}: scheduler {occurrence.scheduler} "
                    f"(session {occurrence.session}) stopped renewing it and is presumed dead"
                )
                store.record_attempt(
                    occurrence,
                    session=occurrence.session,
                    started_at=occurrence.started_at,
                    now=now,
                    error=error,
                    retry_at=policy.retry_at(occurrence.attempts, now),
                )
                observer.event(
                    occurrence, "lease_expired", error=error, status=occurrence.status, level=logging.WARNING
                )
            lost = SchedulerInstance.objects.mark_lost(now, silence=self.liveness.lost_after)
        if lost:
            logger.warning(
                "marked %d scheduler instances lost: no heartbeat for %s s",
                lost,
                self.lease.total_seconds(),
                extra={"action": "instances_lost", "count": lost},
            )
        return len(expired)

    def retire(self, now: datetime) -> None:
        """Say goodbye: this instance stopped on purpose."""
        try:
            SchedulerInstance.objects.retire(self.session, now)
        except DatabaseError:
            pass  # the row then simply stops beating, and is marked lost
