"""Liveness: how often a process proves it is alive, and when its silence makes it stale, then lost.

A scheduler's follows from one value, the lease (SCHEDULER_LEASE_SECONDS): it renews its claims'
leases and its heartbeat every third of the lease, so that two renewals may fail (a slow
statement, a pause) before a lease runs out; a Celery worker renews the claim it runs as often.
Silent for two renewals, a scheduler is stale (the dashboard, the admin, /metrics); silent for
the whole lease, its claims are reaped and its row is marked lost (jobs.engine.leases).

A relay holds no lease. It beats every 5 s outside a batch, is stale once silent for
HEALTH_HEARTBEAT_MAX_AGE_SECONDS (/metrics, as /health/ judges it), and lost after 2 minutes:
longer than a live relay's longest silence with the default settings, a batch that waits
OUTBOX_CONFIRM_TIMEOUT_SECONDS (30) for confirms on a connection blocked up to
OUTBOX_BLOCKED_TIMEOUT_SECONDS (60). A process marked lost that beats again is running again.

/health/ asks another question, whether any scheduler or relay is alive at all, and tolerates
HEALTH_HEARTBEAT_MAX_AGE_SECONDS of silence from all of them (health_max_age): at least a lease,
so that a scheduler whose claims are still its own is never reported down.
"""

import dataclasses
from datetime import datetime, timedelta

from django.conf import settings


@dataclasses.dataclass(frozen=True)
class Liveness:
    renew_every: timedelta
    stale_after: timedelta
    lost_after: timedelta

    @classmethod
    def of_lease(cls, lease: timedelta) -> "Liveness":
        return cls(renew_every=lease / 3, stale_after=2 * (lease / 3), lost_after=lease)

    def is_stale(self, last_seen: datetime, now: datetime) -> bool:
        return now - last_seen > self.stale_after


def scheduler_liveness() -> Liveness:
    """The liveness of SCHEDULER_LEASE_SECONDS, the lease every scheduler and Celery worker shares."""
    return Liveness.of_lease(timedelta(seconds=settings.SCHEDULER_LEASE_SECONDS))


def relay_liveness() -> Liveness:
    return Liveness(
        renew_every=timedelta(seconds=5),
        stale_after=timedelta(seconds=settings.HEALTH_HEARTBEAT_MAX_AGE_SECONDS),
        lost_after=timedelta(minutes=2),
    )


def health_max_age() -> timedelta:
    """How long /health/ tolerates silence from every scheduler, or from every relay."""
    return timedelta(seconds=settings.HEALTH_HEARTBEAT_MAX_AGE_SECONDS)
