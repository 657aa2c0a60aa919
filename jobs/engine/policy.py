"""A job's policy: one value, built by keyword, used by @job, the admin's job policy and the runner.

The retry rule lives here (Policy.retry_at) so that the runner and the reaper retry alike.
"""

import dataclasses
from datetime import datetime, timedelta

from django.db import models


class Priority(models.IntegerChoices):
    """As in TickerQ. LongRunning jobs have slots of their own (SCHEDULER_LONG_RUNNING_CONCURRENCY)."""

    LOW = 0, "Low"
    NORMAL = 1, "Normal"
    HIGH = 2, "High"
    LONG_RUNNING = 3, "LongRunning"

    @property
    def cli_name(self) -> str:
        return self.name.lower()


class MisfirePolicy(models.TextChoices):
    """What happens to instants that fell due while no scheduler was running."""

    SKIP = "skip", "Skip: record every missed instant as missed"
    RUN_ONCE = "run_once", "Run once: run the latest missed instant, record the rest as missed"
    RUN_ALL = "run_all", "Run all: run every missed instant"


@dataclasses.dataclass(frozen=True, kw_only=True)
class Policy:
    priority: Priority = Priority.NORMAL
    retries: int = 0  # attempts after the first one
    retry_intervals: tuple[float, ...] = ()  # seconds before each retry; the last one repeats
    timeout: int | None = None  # seconds; None: no timeout
    misfire: MisfirePolicy = MisfirePolicy.RUN_ONCE

    def __post_init__(self):
        object.__setattr__(self, "priority", Priority(self.priority))
        object.__setattr__(self, "misfire", MisfirePolicy(self.misfire))
        object.__setattr__(self, "retry_intervals", tuple(self.retry_intervals))
        if self.retries < 0 or any(i < 0 for i in self.retry_intervals):
            raise ValueError("retries and retry intervals must not be negative")
        if self.timeout is not None and self.timeout <= 0:
            raise ValueError("a timeout must be positive")

    @property
    def long_running(self) -> bool:
        return self.priority == Priority.LONG_RUNNING

    def retry_at(self, attempt: int, failed_at: datetime) -> datetime | None:
        """When to try again after failed attempt number `attempt` (1-based); None: no retry left."""
        if attempt > self.retries:
            return None
        if not self.retry_intervals:
            return failed_at
        return failed_at + timedelta(seconds=self.retry_intervals[min(attempt, len(self.retry_intervals)) - 1])
