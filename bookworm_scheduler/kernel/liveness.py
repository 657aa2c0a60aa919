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

A process paused while its transaction is open (SIGSTOP, a frozen VM, a long stall) would hold that
transaction's row locks for the whole pause, whatever its lease says: the rows a group locked
stay out of every other scheduler's reach. So a scheduler's, a Celery worker's and a relay's own
sessions are ended by PostgreSQL once a transaction sits idle for idle_in_transaction (its
idle_in_transaction_session_timeout, set at their start: kernel.db.bound_idle_transactions). A
scheduler's (and a worker's, which runs the same jobs under the same lease) is two renewals
(stale_after): its last statement came at most a renewal after its last renewal, so the locks are
free before its lease runs out and another scheduler reaps its claims, and a live scheduler's own
transactions never sit idle that long (a group is open for a fraction of a second; an atomic
job's transaction waits on its job, which must not sit idle in it that long: README, and it
fails if it does). A relay's is its lost_after, or its batch's longest wait for the broker (the
confirms' timeout plus the blocked connection's, and a beat), if longer: a relay holds its batch's
transaction open while the broker answers.

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
    idle_in_transaction: timedelta  # the longest its sessions may sit idle in a transaction

    @classmethod
    def of_lease(cls, lease: timedelta) -> "Liveness":
        stale_after = 2 * (lease / 3)
        return cls(renew_every=lease / 3, stale_after=stale_after, lost_after=lease, idle_in_transaction=stale_after)

    def is_stale(self, last_seen: datetime, now: datetime) -> bool:
        return now - last_seen > self.stale_after


def scheduler_liveness() -> Liveness:
    """The liveness of SCHEDULER_LEASE_SECONDS, the lease every scheduler and Celery worker shares."""
    return Liveness.of_lease(timedelta(seconds=settings.SCHEDULER_LEASE_SECONDS))


def relay_liveness() -> Liveness:
    renew_every, lost_after = timedelta(seconds=5), timedelta(minutes=2)
    broker_wait = timedelta(seconds=settings.OUTBOX_CONFIRM_TIMEOUT_SECONDS + settings.OUTBOX_BLOCKED_TIMEOUT_SECONDS)
    return Liveness(
        renew_every=renew_every,
        stale_after=timedelta(seconds=settings.HEALTH_HEARTBEAT_MAX_AGE_SECONDS),
        lost_after=lost_after,
        idle_in_transaction=max(lost_after, broker_wait + renew_every),
    )


def health_max_age() -> timedelta:
    """How long /health/ tolerates silence from every scheduler, or from every relay."""
    return timedelta(seconds=settings.HEALTH_HEARTBEAT_MAX_AGE_SECONDS)
