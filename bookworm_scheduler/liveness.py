"""A scheduler's liveness: how often it proves it is alive, and when its silence makes it stale, then lost.

One value decides all three, the lease (SCHEDULER_LEASE_SECONDS). A scheduler renews its claims'
leases and its heartbeat every third of the lease, so that two renewals may fail (a slow statement,
a pause) before a lease runs out; a Celery worker renews the claim it runs as often. Silent for two
renewals, a scheduler is stale (the dashboard, the admin, /metrics); silent for the whole lease, its
claims are reaped and its row is marked lost (jobs.leases).
"""

import dataclasses
from datetime import datetime, timedelta

from django.conf import settings


@dataclasses.dataclass(frozen=True)
class Liveness:
    lease: timedelta

    @property
    def renew_every(self) -> timedelta:
        return self.lease / 3

    @property
    def stale_after(self) -> timedelta:
        return 2 * self.renew_every

    @property
    def lost_after(self) -> timedelta:
        return self.lease

    def is_stale(self, last_seen: datetime, now: datetime) -> bool:
        return now - last_seen > self.stale_after


def scheduler_liveness() -> Liveness:
    """The liveness of SCHEDULER_LEASE_SECONDS, the lease every scheduler and Celery worker shares."""
    return Liveness(timedelta(seconds=settings.SCHEDULER_LEASE_SECONDS))
