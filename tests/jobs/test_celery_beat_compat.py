"""Stock celery beat (DatabaseScheduler) on the same definitions, a real Celery worker, a real RabbitMQ.

Beat sends each due PeriodicTask row's `task` (a registered @job) by name; the worker's task of
that name records a manual occurrence tagged "celery beat" and runs it as a scheduler would.
"""

from datetime import timedelta

import pytest
from django_celery_beat.models import PeriodicTask

from bookworm_scheduler.celery import app, job_queues
from bookworm_scheduler.kernel.clock import database_now
from jobs.models import Attempt, Occurrence, PlanningCursor
from outbox.models import OutboxMessage
from tests.jobs.celery_helpers import BeatProcess
from tests.jobs.helpers import make_definition, wait_for

pytestmark = [pytest.mark.django_db(transaction=True), pytest.mark.slow]


@pytest.fixture
def beat(celery_env):
    started = []

    def start():
        process = BeatProcess(celery_env)
        started.append(process)
        process.wait_ready()
        return process

    yield start
    for process in started:
        process.kill()


def beat_occurrences(task):
    return Occurrence.objects.filter(task=task, triggered_by__startswith="celery beat").order_by("id")


def test_a_definition_fired_by_celery_beat_is_recorded_with_its_event(beat, workers, no_seed_definitions):
    task = make_definition("beat-every-second", "test.publish", every=1)
    workers()
    beat()

    wait_for(lambda: beat_occurrences(task).filter(status="succeeded").count() >= 2, timeout=30)
    first = beat_occurrences(task).first()
    assert (first.status, first.manual, first.attempts, first.job_name) == (
        "succeeded",
        True,
        1,
        "beat-every-second",
    )
    assert first.scheduler.startswith("celery@")
    (attempt,) = Attempt.objects.filter(occurrence=first)
    assert attempt.status == "succeeded"
    assert OutboxMessage.objects.filter(body__occurrence=first.id).count() == 1
    assert PlanningCursor.objects.get(task=task).planned_through >= first.scheduled_for


def test_a_runscheduler_started_in_beats_place_plans_from_beats_last_run(
    beat, workers, scheduler_processes, no_seed_definitions
):
    an_hour_ago = database_now() - timedelta(hours=1)
    task = make_definition("beat-then-runscheduler", "test.publish", every=1, planned_through=an_hour_ago)
    workers()
    beating = beat()
    wait_for(lambda: beat_occurrences(task).filter(status="succeeded").exists(), timeout=30)
    beating.stop()  # beat's runs moved the definition's cursor
    scheduler_processes(instance_id="in-beats-place")  # the same rows, nothing converted

    wait_for(lambda: Occurrence.objects.filter(task=task, manual=False, status="succeeded").count() >= 2, timeout=30)
    # Planned from beat's last run, not from an hour ago: no instant of beat's hour is recorded missed.
    assert Occurrence.objects.filter(task=task, status="missed").count() == 0
    first_planned = Occurrence.objects.filter(task=task, manual=False).order_by("scheduled_for").first()
    assert first_planned.scheduled_for > beat_occurrences(task).first().scheduled_for


def test_a_failed_run_under_celery_beat_is_retried_per_the_job_policy(beat, workers, no_seed_definitions):
    task = make_definition(
        "beat-retried", "test.fail_until", every=1, kwargs={"succeed_on": 2}, max_retries=1, retry_intervals=[1]
    )
    workers(concurrency=2)
    beat()

    first = wait_for(lambda: beat_occurrences(task).first())
    wait_for(lambda: Occurrence.objects.filter(id=first.id, status="succeeded").exists(), timeout=30)
    attempts = list(Attempt.objects.filter(occurrence=first).order_by("number").values_list("number", "status"))
    assert attempts == [(1, "failed"), (2, "succeeded")]
    assert list(OutboxMessage.objects.filter(body__occurrence=first.id).values_list("body__attempt", flat=True)) == [2]


def test_a_worker_killed_mid_job_under_celery_beat_is_noticed_and_its_run_retried(beat, workers, no_seed_definitions):
    task = make_definition(
        "beat-killed-mid-job", "test.sleep", every=1, kwargs={"seconds": 60, "on_attempt": 1}, max_retries=1
    )
    PeriodicTask.objects.filter(id=task.id).update(one_off=True)  # beat sends it once, then disables it
    victim = workers(name="victim")
    beat()
    running = wait_for(lambda: beat_occurrences(task).filter(status="running").first(), timeout=30)
    victim.kill()  # its message was not acknowledged: RabbitMQ delivers it again
    workers(name="survivor", concurrency=2)

    wait_for(lambda: Occurrence.objects.filter(id=running.id, status="succeeded").exists(), timeout=60)
    lost, retried = Attempt.objects.filter(occurrence=running).order_by("number")
    assert lost.status == "failed" and "presumed dead" in lost.error
    assert retried.status == "succeeded" and retried.scheduler.startswith("celery@")
    assert beat_occurrences(task).count() == 1
    assert OutboxMessage.objects.filter(body__occurrence=running.id).count() == 1


def test_a_message_that_names_no_single_definition_runs_nothing(celery_queue, workers, no_seed_definitions):
    make_definition("beat-one", "test.publish", every=3600)
    make_definition("beat-two", "test.publish", every=3600)
    worker = workers()
    queue = job_queues(celery_queue)[0]
    # Sent by hand without beat's periodic_task_name header: two definitions of test.publish, which one?
    app.send_task("test.publish", queue=queue, routing_key=queue.routing_key)

    wait_for(lambda: "matches 2 definitions" in worker.output, timeout=30)
    assert Occurrence.objects.count() == 0
