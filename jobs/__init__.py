"""Job definitions, occurrences and the scheduler.

`from jobs import schedule, schedule_many, FollowUp` schedules one-off runs (jobs.engine.oneoff). They
are imported on first use (PEP 562): this package is imported while Django loads its apps, before
the models can be.
"""

ONE_OFF_NAMES = ("schedule", "schedule_many", "FollowUp", "Run", "ScheduleError", "UnknownJob", "PayloadError")

__all__ = list(ONE_OFF_NAMES)


def __getattr__(name: str):
    if name in ONE_OFF_NAMES:
        from jobs.engine import oneoff

        return getattr(oneoff, name)
    raise AttributeError(f"module 'jobs' has no attribute {name!r}")
