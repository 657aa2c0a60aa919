"""The job bench/celery_beat.py schedules: it does nothing, so the benchmark measures dispatch alone.

Celery beat sends it by name (no worker consumes the bench queue, so beat needs no Celery task
of that name); runscheduler runs it as this registered job, or hands it to Celery with
SCHEDULER_EXECUTOR=celery.
"""

from jobs.engine.registry import JobContext, job

NAME = "bench.noop"


@job(NAME)
def noop(context: JobContext) -> None:
    """Nothing: the benchmark measures dispatch, not work."""
