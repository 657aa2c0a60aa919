"""The celery executor: schedulers claim and hand over, real Celery workers run, over a real RabbitMQ."""

import logging
import uuid
from datetime import timedelta

import pytest
from celery import Celery
from django.conf import settings
from kombu import Connection

from bookworm_scheduler.celery import app as celery_app
from bookworm_scheduler.kernel.clock import database_now
from jobs.engine import store
from jobs.engine.definitions import load_definition
from jobs.handover.executor import TASK_NAME, CeleryExecutor
from jobs.handover.worker import LeaseKeeper, run_occurrence
from jobs.models import Attempt, Occurrence, Priority
from outbox.models import OutboxMessage
from tests.jobs.celery_helpers import claim_ready, messages_in
from tests.jobs.helpers import make_definition, wait_for, woken_by_notify

pytestmark = [pytest.mark.django_db(transaction=True), pytest.mark.slow]


@pytest.fixture
def executor(celery_queue):
    """This test's scheduler side, in process: claims with its own session and hands over."""
    return CeleryExecutor(
        session=uuid.uuid4(), definition_of=load_definition, queue=celery_queue, max_in_flight=100, hard_limit_margin=1
    )


def claim_one(executor) -> Occurrence:
    # Ready as soon as the database's clock passes the instant the trigger read from its estimate
    # of it (bookworm_scheduler.kernel.clock.DatabaseClock), which may run a fraction of a round trip ahead.
    (occurrence,) = wait_for(lambda: claim_ready(executor), timeout=5, interval=0.01)
    return occurrence


def hand_over(executor, task, priority=Priority.NORMAL) -> Occurrence:
    store.trigger(task, priority=priority)
    occurrence = claim_one(executor)
    executor.submit_all([occurrence], long_running=False)
    return occurrence


def status_of(occurrence) -> str:
    return Occurrence.objects.values_list("status", flat=True).get(id=occurrence.id)


def test_a_job_run_by_a_worker_records_success_and_publishes_its_event(
    scheduler_processes, celery_env, workers, no_seed_definitions
):
    task = make_definition("published-by-a-worker", "test.publish", every=3600)
    workers()
    scheduler_processes(env=celery_env, instance_id="hands-over")
    occurrence = store.trigger(task, priority=Priority.NORMAL)

    wait_for(lambda: status_of(occurrence) == "succeeded", timeout=30)
    occurrence.refresh_from_db()
    (attempt,) = Attempt.objects.filter(occurrence=occurrence)
    assert occurrence.attempts == 1 and attempt.status == "succeeded"
    assert occurrence.scheduler.startswith("celery@") and attempt.scheduler == occurrence.scheduler
    assert list(OutboxMessage.objects.values_list("body__occurrence", flat=True)) == [occurrence.id]


def test_a_worker_killed_mid_job_is_noticed_and_its_run_retried(
    scheduler_processes, celery_env, workers, no_seed_definitions
):
    task = make_definition(
        "killed-mid-job", "test.sleep", every=3600, kwargs={"seconds": 60, "on_attempt": 1}, max_retries=1
    )
    victim = workers(name="victim")
    scheduler_processes(env=celery_env, instance_id="hands-over")
    occurrence = store.trigger(task, priority=Priority.NORMAL)
    wait_for(lambda: Occurrence.objects.filter(id=occurrence.id, scheduler__startswith="celery@").exists(), timeout=30)
    victim.kill()
    workers(name="survivor")

    wait_for(lambda: status_of(occurrence) == "succeeded", timeout=45)
    lost, retried = Attempt.objects.filter(occurrence=occurrence).order_by("number")
    assert lost.status == "failed" and "presumed dead" in lost.error
    assert retried.status == "succeeded" and retried.scheduler.startswith("celery@")
    assert OutboxMessage.objects.filter(body__occurrence=occurrence.id).count() == 1


def test_a_task_delivered_twice_runs_the_job_once(executor, workers, no_seed_definitions):
    task = make_definition("delivered-twice", "test.publish", every=3600)
    worker = workers()
    store.trigger(task, priority=Priority.NORMAL)
    occurrence = claim_one(executor)
    executor.submit_all([occurrence, occurrence], long_running=False)  # the same claim's message twice

    wait_for(lambda: status_of(occurrence) == "succeeded", timeout=30)
    wait_for(lambda: "no longer the claim handed over" in worker.output, timeout=30)
    assert Attempt.objects.filter(occurrence=occurrence).count() == 1
    assert OutboxMessage.objects.filter(body__occurrence=occurrence.id).count() == 1


def test_a_saturated_worker_runs_the_high_priority_job_before_the_low_ones(executor, workers, no_seed_definitions):
    blocker = make_definition("blocker", "test.sleep", every=3600, kwargs={"seconds": 2})
    low = make_definition("low", "test.publish", every=3600, priority=Priority.LOW)
    high = make_definition("high", "test.publish", every=3600, priority=Priority.HIGH)
    workers(concurrency=1)
    first = hand_over(executor, blocker)
    wait_for(lambda: Occurrence.objects.filter(id=first.id, scheduler__startswith="celery@").exists(), timeout=30)
    queued = [hand_over(executor, low, Priority.LOW), hand_over(executor, low, Priority.LOW)]
    queued.append(hand_over(executor, high, Priority.HIGH))
    assert status_of(first) == "running", "the worker must still be busy with the blocker"

    wait_for(lambda: all(status_of(o) == "succeeded" for o in [first, *queued]), timeout=30)
    order = list(
        Occurrence.objects.filter(id__in=[o.id for o in queued])
        .order_by("started_at")
        .values_list("job_name", flat=True)
    )
    assert order == ["high", "low", "low"]


def test_the_soft_time_limit_records_a_timeout_even_if_the_job_swallows_exceptions(
    executor, workers, no_seed_definitions
):
    task = make_definition("swallower", "test.swallow", every=3600, kwargs={"seconds": 30}, timeout_seconds=1)
    workers()
    occurrence = hand_over(executor, task)

    wait_for(lambda: status_of(occurrence) == "failed", timeout=30)
    occurrence.refresh_from_db()
    (attempt,) = Attempt.objects.filter(occurrence=occurrence)
    assert occurrence.reason == "timed out after 1 s" and attempt.error == "timed out after 1 s"
    assert attempt.duration < timedelta(seconds=5)


def test_the_hard_time_limit_stops_a_job_stuck_in_a_c_call_and_it_is_retried(
    executor, scheduler_processes, celery_env, workers, no_seed_definitions
):
    task = make_definition(
        "stuck", "test.stuck_in_c_call", every=3600, kwargs={"seconds": 60}, timeout_seconds=1, max_retries=1
    )
    workers()
    occurrence = hand_over(executor, task)  # soft limit 1 s, hard limit 2 s
    wait_for(lambda: Occurrence.objects.filter(id=occurrence.id, scheduler__startswith="celery@").exists(), timeout=30)
    scheduler_processes(env=celery_env, instance_id="reaper")  # records the lost attempt, hands the retry over

    wait_for(lambda: Attempt.objects.filter(occurrence=occurrence).count() >= 1, timeout=30)
    first = Attempt.objects.get(occurrence=occurrence, number=1)
    assert first.status == "failed" and "presumed dead" in first.error
    assert first.finished_at - first.started_at < timedelta(seconds=15)
    wait_for(lambda: status_of(occurrence) == "failed", timeout=40)  # the retry is stuck and stopped too
    assert list(Attempt.objects.filter(occurrence=occurrence).values_list("status", flat=True)) == ["failed", "failed"]


def test_a_claim_the_broker_does_not_take_is_released_and_handed_over_when_it_returns(
    celery_queue, workers, no_seed_definitions
):
    task = make_definition("broker-down", "test.publish", every=3600)
    down = Celery(broker="amqp://guest:guest@127.0.0.1:1//")
    down.conf.broker_connection_timeout = 1
    session = uuid.uuid4()
    broken = CeleryExecutor(
        session=session,
        definition_of=load_definition,
        queue=celery_queue,
        max_in_flight=100,
        hard_limit_margin=1,
        app=down,
    )
    store.trigger(task, priority=Priority.NORMAL)
    occurrence = claim_one(broken)
    broken.submit_all([occurrence], long_running=False)

    occurrence.refresh_from_db()
    assert (occurrence.status, occurrence.attempts) == ("scheduled", 0)
    assert occurrence.reason.startswith("released: the broker did not take it")
    assert broken.free(long_running=False) == 0  # it waits before trying again

    workers()
    back = CeleryExecutor(
        session=session, definition_of=load_definition, queue=celery_queue, max_in_flight=100, hard_limit_margin=1
    )
    back.submit_all([claim_one(back)], long_running=False)
    wait_for(lambda: status_of(occurrence) == "succeeded", timeout=30)
    assert Attempt.objects.filter(occurrence=occurrence).count() == 1


def test_claims_handed_over_as_one_batch_each_reach_the_workers_once(
    executor, celery_queue, workers, no_seed_definitions
):
    task = make_definition("batched", "test.publish", every=3600)
    for _ in range(30):
        store.trigger(task, priority=Priority.NORMAL)
    claimed = []  # as claim_one, each once the database's clock has passed its trigger's instant
    wait_for(lambda: claimed.extend(claim_ready(executor, limit=30 - len(claimed))) or len(claimed) == 30, timeout=5)
    executor.submit_all(claimed, long_running=False)

    assert messages_in(celery_queue) == 30  # every claim's message confirmed by the broker before submit_all returned
    assert set(Occurrence.objects.values_list("status", flat=True)) == {"running"}
    workers()
    wait_for(lambda: Occurrence.objects.filter(status="succeeded").count() == 30, timeout=60)
    assert Attempt.objects.count() == 30
    assert OutboxMessage.objects.count() == 30


def test_a_hand_over_is_the_message_celery_send_task_sends(executor, celery_queue, no_seed_definitions):
    task = make_definition("same-message", "test.publish", every=3600, timeout_seconds=5)
    store.trigger(task, priority=Priority.HIGH)
    occurrence = claim_one(executor)
    message = executor.message(occurrence, long_running=False)
    assert executor.publisher.publish_all([message]) == [""]
    queue = message.pop("queue")
    celery_app.send_task(TASK_NAME, queue=queue, routing_key=queue.routing_key, retry=False, **message)

    with Connection(settings.RABBITMQ_URL) as conn:
        channel = conn.default_channel
        ours, celerys = (channel.basic_get(queue.name, no_ack=True) for _ in range(2))
    assert ours.body == celerys.body
    assert ours.properties == celerys.properties  # the task's headers, time limits and priority among them
    assert ours.properties["application_headers"]["timelimit"] == [6, 5]
    assert ours.properties["priority"] == 2


def test_the_scheduler_claims_no_more_than_the_in_flight_bound(celery_queue, no_seed_definitions):
    task = make_definition("many", "test.publish", every=3600)
    executor = CeleryExecutor(
        session=uuid.uuid4(), definition_of=load_definition, queue=celery_queue, max_in_flight=2, hard_limit_margin=1
    )
    assert executor.free(long_running=False) == 2
    hand_over(executor, task)
    hand_over(executor, task)
    assert executor.free(long_running=False) == 0  # no worker runs: nothing more is claimed
    executor.shutdown()
    assert list(Occurrence.objects.values_list("status", "attempts")) == [("scheduled", 0), ("scheduled", 0)]
    assert executor.running_ids() == []


def test_a_worker_taking_a_claim_over_wakes_the_schedulers(executor, no_seed_definitions):
    task = make_definition("taken-over", "test.publish", every=3600)
    store.trigger(task, priority=Priority.NORMAL)
    occurrence = claim_one(executor)
    with woken_by_notify() as woken:
        taken = store.take_over(
            occurrence.id,
            handed_by=executor.session,
            attempt=1,
            session=uuid.uuid4(),
            worker="celery@test",
            lease=timedelta(seconds=60),
            now=database_now(),
        )
        assert taken is not None
        assert woken.wait(10)


def test_room_freed_by_a_worker_is_used_at_once_not_at_the_next_poll(
    scheduler_processes, celery_env, workers, no_seed_definitions
):
    task = make_definition("one-at-a-time", "test.publish", every=3600)
    workers(concurrency=2)
    scheduler_processes(env=dict(celery_env, SCHEDULER_CELERY_MAX_IN_FLIGHT="1"), instance_id="hands-over")
    first = store.trigger(task, priority=Priority.NORMAL)
    wait_for(lambda: status_of(first) == "succeeded", timeout=30)  # the scheduler and the worker are up
    for _ in range(10):
        store.trigger(task, priority=Priority.NORMAL)

    # One hand-over in flight at a time: waiting for the next poll (1 s) would take about 10 s.
    wait_for(lambda: Occurrence.objects.filter(status="succeeded").count() == 11, timeout=30)
    started = list(Occurrence.objects.exclude(id=first.id).order_by("started_at").values_list("started_at", flat=True))
    assert started[-1] - started[0] < timedelta(seconds=2)  # about 0.3 s here; 4 s without the wake-up


def test_a_fault_of_ours_in_the_workers_task_records_the_attempt_at_once(
    executor, no_seed_definitions, monkeypatch, caplog
):
    task = make_definition("worker-fault", "test.publish", every=3600, max_retries=1, retry_intervals=[60])
    store.trigger(task, priority=Priority.NORMAL)
    occurrence = claim_one(executor)

    def no_thread(keeper):
        raise RuntimeError("can't start new thread")

    monkeypatch.setattr(LeaseKeeper, "__enter__", no_thread)

    # The worker's task, run here as a worker process runs it.
    assert run_occurrence(occurrence.id, str(executor.session), occurrence.attempts) == "ran"

    occurrence.refresh_from_db()
    (attempt,) = Attempt.objects.filter(occurrence=occurrence)
    assert (occurrence.status, occurrence.attempts, occurrence.lease_expires_at) == ("scheduled", 1, None)
    assert occurrence.run_after - attempt.finished_at == timedelta(seconds=60)
    assert (attempt.status, attempt.error) == ("failed", "RuntimeError: can't start new thread")
    assert attempt.scheduler.startswith("celery@")
    assert [getattr(r, "action", None) for r in caplog.records if r.levelno >= logging.WARNING] == [
        "run_error",
        "retry_scheduled",
    ]
