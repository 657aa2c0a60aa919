"""Reconnect delays shared by the long-running processes."""


class Backoff:
    """Delays that double from first to ceiling (about 1 s to 30 s); reset() after a success."""

    def __init__(self, first: float = 1.0, ceiling: float = 30.0):
        self.first, self.ceiling = first, ceiling
        self.reset()

    def reset(self) -> None:
        self.current = self.first

    def next(self) -> float:
        delay, self.current = self.current, min(self.current * 2, self.ceiling)
        return delay
