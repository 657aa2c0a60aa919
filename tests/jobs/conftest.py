import pytest
from django_celery_beat.models import PeriodicTask

from tests.jobs import sample_jobs  # noqa: F401  (registers the sample jobs)
from tests.jobs.helpers import FakeClock, SchedulerProcess, start_of_future_hour


@pytest.fixture
def clock():
    # A future hour, so nothing planned from the real clock interferes.
    return FakeClock(start_of_future_hour())


@pytest.fixture
def no_seed_definitions(db):
    PeriodicTask.objects.all().delete()


@pytest.fixture
def scheduler_env(subprocess_env):
    env = dict(subprocess_env)
    env["SCHEDULER_JOB_MODULES"] = "tests.jobs.sample_jobs"
    return env


@pytest.fixture
def scheduler_processes(scheduler_env):
    started = []

    def start(*args, env=None, **kwargs):
        process = SchedulerProcess(env or scheduler_env, *args, **kwargs)
        started.append(process)
        return process

    yield start
    for process in started:
        if process.process.poll() is None:
            process.kill()
