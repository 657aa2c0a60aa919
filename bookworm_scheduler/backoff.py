"""Reconnect delays shared by the long-running processes."""

import random


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
