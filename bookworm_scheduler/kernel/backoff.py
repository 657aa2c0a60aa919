"""Every wait before another try, in one place: Backoff's jittered delays for the processes' loops, named
by what they retry, and doubling() for a retry that is stored and waited for (an alert, an outbox message).

A job's own retries follow its policy (jobs.engine.policy.Policy.retry_at), which its definition sets.
"""

import random
from datetime import timedelta


class Backoff:
    """Delays with "equal" jitter under a cap that doubles from first to ceiling; reset() after a success.

    Each delay is drawn uniformly between half the cap and the cap: never near zero, so a failing
    service is not hammered, and spread out, so processes cut off together do not retry in step.
    With the defaults the caps are 1, 2, 4, 8, 16, 30, 30... seconds.

    rng is the source of randomness (anything with random.Random's uniform()); pass a seeded
    random.Random for repeatable delays.
    """

    def __init__(self, first: float = 1.0, ceiling: float = 30.0, *, rng: random.Random | None = None):
        self.first, self.ceiling = first, ceiling
        self.rng = rng or random.Random()
        self.reset()

    def reset(self) -> None:
        self.cap = self.first

    def next(self) -> float:
        cap, self.cap = self.cap, min(self.cap * 2, self.ceiling)
        return self.rng.uniform(cap / 2, cap)


# Its uses, by what is retried.


def after_outage() -> Backoff:
    """A daemon's loop cut off from its database or broker (the scheduler's main thread, the relay): from
    about 0.5 s up to 5 s, so that it is back at work within about 5 s of the service coming back."""
    return Backoff(first=0.5, ceiling=5.0)


def recording() -> Backoff:
    """Recording a run's outcome while the database is away: the outcome waits in memory, and the
    lease runs meanwhile, so the first tries come sooner than the loop's (0.2 s, up to 5 s)."""
    return Backoff(first=0.2, ceiling=5.0)


def conflict() -> Backoff:
    """A transaction that lost a conflict (a deadlock, a serialization failure): short, as the winner
    commits in a moment, and jittered, so that the two that deadlocked do not meet again in step."""
    return Backoff(first=0.05, ceiling=1.0)


def handover() -> Backoff:
    """The Celery hand-over's broker refusing a publish: handing over pauses from 1 s up to 30 s."""
    return Backoff(first=1.0, ceiling=30.0)


def doubling(first: timedelta, attempts: int, ceiling: timedelta) -> timedelta:
    """The wait after failed try number `attempts` (from 1) of a stored retry: first, doubling, up to ceiling."""
    return min(first * 2 ** (attempts - 1), ceiling)
