import uuid
from datetime import UTC, datetime, timedelta

import pytest
from django.conf import settings
from django_celery_beat.models import PeriodicTask

from bookworm_scheduler.kernel.clock import database_now
from jobs.engine import store
from jobs.models import Occurrence, Priority
from tests.jobs import sample_jobs  # noqa: F401  (registers the sample jobs)
from tests.jobs.celery_helpers import WorkerProcess, delete_queues, unique_queue
from tests.jobs.helpers import SchedulerProcess, make_definition


@pytest.fixture
def no_seed_definitions(db):
    PeriodicTask.objects.all().delete()


@pytest.fixture
def task(db):
    """A definition that runs every hour, for tests that need one (the store's contract tests)."""
    return make_definition("store-contract", every=3600)


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


# The celery executor and stock celery beat: a queue of its own per test, real worker processes.


@pytest.fixture
def celery_queue():
    name = unique_queue()
    yield name
    delete_queues(name, settings.RABBITMQ_URL)


@pytest.fixture
def celery_env(scheduler_env, celery_queue):
    return dict(
        scheduler_env,
        SCHEDULER_EXECUTOR="celery",
        SCHEDULER_CELERY_QUEUE=celery_queue,
        SCHEDULER_LEASE_SECONDS="3",
        SCHEDULER_JOB_MODULES="tests.jobs.sample_jobs,tests.jobs.celery_helpers",
    )


@pytest.fixture
def workers(celery_env):
    started = []

    def start(**kwargs):
        worker = WorkerProcess(celery_env, **kwargs)
        started.append(worker)
        worker.wait_ready()
        return worker

    yield start
    for worker in started:
        worker.kill()


# An occurrence waiting, and one running, for the cancel's doors (the API's and the command line's).
CANCEL_AT = datetime(2030, 3, 1, 12, 0, tzinfo=UTC)
CANCEL_SESSION = uuid.UUID("00000000-0000-4000-8000-0000000000a7")


@pytest.fixture
def waiting():
    return Occurrence.objects.create(job_name="ResendErrorEmailJob", scheduled_for=CANCEL_AT, run_after=CANCEL_AT)


@pytest.fixture
def running():
    """An occurrence claimed by a scheduler, as the scheduler's claim leaves it (store.claim_one)."""
    task = PeriodicTask.objects.get(name="ResendErrorEmailJob")
    occurrence = store.trigger(task, priority=Priority.NORMAL, now=database_now() - timedelta(seconds=1))
    return store.claim_one(
        occurrence.id, now=database_now(), session=CANCEL_SESSION, scheduler="alpha", lease=timedelta(seconds=60)
    )
