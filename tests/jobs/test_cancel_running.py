"""Cancelling a running occurrence: the request, the job that checks it, the one stopped at its return,
the Celery worker terminated, the console's button, and the concurrency a scheduler instance records."""

import threading
import uuid
from datetime import timedelta

import pytest
from django.contrib.admin.models import LogEntry
from django.db import connection
from django.test.utils import CaptureQueriesContext

from bookworm_scheduler.kernel.clock import database_now
from jobs.engine import store
from jobs.engine.definitions import load_definition
from jobs.engine.registry import JobContext, job
from jobs.engine.runner import CancelCheck, Runner
from jobs.handover.executor import CeleryExecutor
from jobs.models import Attempt, Occurrence, Priority, SchedulerInstance
from outbox.models import OutboxMessage
from outbox.publishing import publish
from tests.jobs.celery_helpers import claim_ready
from tests.jobs.helpers import FakeClock, make_definition, make_scheduler, start_of_future_hour, wait_for
from tests.jobs.sample_jobs import SampleRanEvent

pytestmark = pytest.mark.django_db(transaction=True)

SESSION = uuid.UUID("00000000-0000-4000-8000-0000000000c1")
HISTORY = "/tickerq/jobs/occurrence/"
CANCELLED = "cancelled by alice while running"

STARTED: dict[int, threading.Event] = {}  # occurrence id -> set once its job runs
RELEASE = threading.Event()  # lets test.cancel.ignores return


def started(occurrence_id: int) -> threading.Event:
    return STARTED.setdefault(occurrence_id, threading.Event())


@job("test.cancel.checks")
def checks(context: JobContext) -> None:
    """Publish, then wait for its cancel, checking it now and then, and stop."""
    publish(SampleRanEvent(occurrence=context.occurrence_id, attempt=context.attempt))
    started(context.occurrence_id).set()
    wait_for(context.cancelled, timeout=30, interval=0.05)
    context.stop_if_cancelled()


@job("test.cancel.ignores")
def ignores(context: JobContext) -> None:
    """Publish, then wait until the test lets it return: it never asks whether it was cancelled."""
    publish(SampleRanEvent(occurrence=context.occurrence_id, attempt=context.attempt))
    started(context.occurrence_id).set()
    assert RELEASE.wait(30)


def claim(task) -> Occurrence:
    occurrence = store.trigger(task, priority=Priority.NORMAL, now=database_now() - timedelta(seconds=1))
    now = database_now()
    return store.claim_one(occurrence.id, now=now, session=SESSION, scheduler="alpha", lease=timedelta(seconds=60))


def run_in_thread(occurrence: Occurrence) -> threading.Thread:
    """Run the claim as a scheduler's pool thread does, on a connection of its own."""
    runner = Runner(session=SESSION, clock=database_now)
    thread = threading.Thread(target=runner.run, args=(occurrence, None), daemon=True)
    thread.start()
    return thread


def assert_cancelled(occurrence: Occurrence, reason: str = CANCELLED) -> None:
    occurrence.refresh_from_db()
    assert (occurrence.status, occurrence.reason, occurrence.attempts) == ("skipped", reason, 1)
    (attempt,) = Attempt.objects.filter(occurrence=occurrence)
    assert (attempt.status, attempt.error) == ("failed", reason)
    assert not OutboxMessage.objects.filter(origin=f"occurrence:{occurrence.id}").exists()


# The inline executor: cooperative.


def test_a_job_that_checks_its_cancel_stops_and_the_cancel_is_recorded(no_seed_definitions):
    occurrence = claim(make_definition("checks", "test.cancel.checks", every=3600, max_retries=3))
    thread = run_in_thread(occurrence)
    assert started(occurrence.id).wait(10)

    assert store.cancel(occurrence, by="alice", now=database_now()) == "requested"
    thread.join(15)

    assert not thread.is_alive()
    assert_cancelled(occurrence)  # not retried, though its policy retries failures three times


def test_a_job_that_never_checks_is_stopped_at_its_return_and_its_event_is_not_published(no_seed_definitions):
    RELEASE.clear()
    occurrence = claim(make_definition("ignores", "test.cancel.ignores", every=3600))
    thread = run_in_thread(occurrence)
    assert started(occurrence.id).wait(10)

    assert store.cancel(occurrence, by="alice", now=database_now()) == "requested"
    RELEASE.set()
    thread.join(15)

    assert not thread.is_alive()
    assert_cancelled(occurrence)
    assert not OutboxMessage.objects.exists()


def test_a_jobs_check_reads_its_row_at_most_once_per_interval_and_remembers_a_yes(no_seed_definitions):
    occurrence = claim(make_definition("asks", "test.publish", every=3600))
    check = CancelCheck(occurrence.id, every=60)
    with CaptureQueriesContext(connection) as queries:
        assert [check(), check(), check()] == [False, False, False]
    assert len(queries) == 1

    store.cancel(occurrence, by="alice", now=database_now())
    assert check() is False  # not read again within the interval
    asked = CancelCheck(occurrence.id, every=60)
    with CaptureQueriesContext(connection) as queries:
        assert [asked(), asked()] == [True, True]
    assert len(queries) == 1


def test_a_claim_whose_cancel_was_asked_before_it_ran_is_recorded_without_running(no_seed_definitions):
    occurrence = claim(make_definition("released", "test.publish", every=3600))
    store.cancel(occurrence, by="alice", now=database_now())
    store.release(occurrence, session=SESSION, reason="released: a conflict")  # its request stays
    again = store.claim_one(
        occurrence.id, now=database_now(), session=SESSION, scheduler="alpha", lease=timedelta(seconds=60)
    )

    Runner(session=SESSION, clock=database_now).run(again, None)

    assert_cancelled(occurrence)


def test_the_reaper_records_an_expired_claim_whose_cancel_was_asked_as_the_cancel(no_seed_definitions):
    occurrence = claim(make_definition("reaped", "test.publish", every=3600, max_retries=3))
    store.cancel(occurrence, by="alice", now=database_now())
    scheduler = make_scheduler(FakeClock(database_now() + timedelta(minutes=5)))

    assert scheduler.reap(scheduler.clock()) == 1

    assert_cancelled(occurrence)


# The Celery executor: revoke and terminate.


@pytest.fixture
def executor(celery_queue):
    return CeleryExecutor(
        session=uuid.uuid4(), definition_of=load_definition, queue=celery_queue, max_in_flight=100, hard_limit_margin=1
    )


def hand_over(executor, task) -> Occurrence:
    store.trigger(task, priority=Priority.NORMAL)
    (occurrence,) = wait_for(lambda: claim_ready(executor), timeout=5, interval=0.01)
    executor.submit_all([occurrence], long_running=False)
    return occurrence


def status_of(occurrence) -> str:
    return Occurrence.objects.values_list("status", flat=True).get(id=occurrence.id)


@pytest.mark.slow
def test_a_worker_running_a_cancelled_job_is_terminated_and_the_cancel_recorded(executor, workers, no_seed_definitions):
    task = make_definition("sleeps", "test.sleep", every=3600, kwargs={"seconds": 60}, max_retries=3)
    worker = workers(concurrency=1)
    occurrence = hand_over(executor, task)
    wait_for(lambda: Occurrence.objects.filter(id=occurrence.id, scheduler__startswith="celery@").exists(), timeout=30)
    (pool_process,) = worker.pool_pids()

    assert store.cancel(occurrence, by="alice", now=database_now()) == "requested"

    wait_for(lambda: status_of(occurrence) == "skipped", timeout=20)  # the worker's lease renewal: each second
    assert_cancelled(occurrence)
    # The job slept on: only the terminate (SIGTERM to the pool process) ended it, and the pool replaced it.
    wait_for(lambda: worker.pool_pids() and pool_process not in worker.pool_pids(), timeout=20)
    assert worker.process.poll() is None


@pytest.mark.slow
def test_a_hand_over_cancelled_before_a_worker_took_it_is_revoked_and_never_runs(
    executor, workers, no_seed_definitions
):
    task = make_definition("queued", "test.publish", every=3600)
    occurrence = hand_over(executor, task)  # no worker yet: it waits in the queue, claimed by the scheduler
    assert store.cancel(occurrence, by="alice", now=database_now()) == "requested"

    executor.stop_cancelled(database_now())  # at its next lease renewal

    assert_cancelled(occurrence)
    worker = workers()
    wait_for(lambda: "no longer the claim handed over" in worker.output, timeout=30)
    assert_cancelled(occurrence)


# The console.


def test_the_cancel_button_asks_a_running_occurrence_to_stop_and_the_page_says_so(admin_client, no_seed_definitions):
    occurrence = claim(make_definition("button", "test.publish", every=3600))
    page = f"{HISTORY}{occurrence.id}/change/"
    assert 'class="button occurrence-cancel"' in admin_client.get(page).content.decode()

    response = admin_client.post(f"{HISTORY}{occurrence.id}/cancel/", {"next": page}, follow=True)

    assert response.redirect_chain == [(page, 302)]
    occurrence.refresh_from_db()
    assert (occurrence.status, occurrence.cancel_requested_by) == ("running", "admin")
    shown = response.content.decode()
    assert "Cancel requested by admin at" in shown
    assert 'class="button occurrence-cancel"' not in shown
    assert "Asked 1 running occurrence(s) to stop" in shown
    assert LogEntry.objects.get().change_message == "Cancel requested"


# Concurrency.


def test_a_scheduler_instance_records_its_concurrency(no_seed_definitions):
    clock = FakeClock(start_of_future_hour())
    inline = make_scheduler(clock, instance_id="inline", concurrency=3)  # and one LongRunning slot
    inline.start(clock.now)
    celery = make_scheduler(clock, instance_id="celery")
    celery.pool = CeleryExecutor(  # what build_executor makes of SCHEDULER_EXECUTOR=celery
        session=celery.session, definition_of=load_definition, queue="unused", max_in_flight=7, hard_limit_margin=1
    )
    celery.start(clock.now)

    assert dict(SchedulerInstance.objects.values_list("instance_id", "concurrency")) == {"inline": 4, "celery": 7}
