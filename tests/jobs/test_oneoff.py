"""One-off runs (jobs.engine.oneoff): scheduled from code in the caller's transaction, run with their payload."""

import threading
from datetime import UTC, datetime, timedelta

import pytest
from django.db import connection, transaction
from django.test.utils import CaptureQueriesContext

from bookworm_scheduler.kernel.clock import default_clock
from jobs import FollowUp, PayloadError, Run, ScheduleError, UnknownJob, schedule, schedule_many
from jobs.engine import scheduler_metrics, store
from jobs.engine.loop import Scheduler
from jobs.engine.oneoff import schedule_or_get
from jobs.handover.executor import CeleryExecutor
from jobs.models import Alert, Attempt, Occurrence
from outbox.models import OutboxMessage
from tests.jobs.helpers import make_scheduler, wait_for, woken_by_notify
from tests.jobs.store_helpers import SESSION, claim_ready

pytestmark = pytest.mark.django_db


def row(occurrence) -> Occurrence:
    return Occurrence.objects.get(id=occurrence.id)


def grouping_scheduler(clock) -> Scheduler:
    """A scheduler whose groups take any job seen to run within 5 s (group_seconds 1)."""
    scheduler = Scheduler(
        instance_id="test",
        concurrency=2,
        lease=timedelta(seconds=60),
        grace=timedelta(seconds=60),
        clock=clock,
        group_seconds=1.0,
    )
    scheduler.planner.refresh()
    return scheduler


def run_ready(clock) -> int:
    scheduler = make_scheduler(clock)
    scheduler.planner.refresh()
    return scheduler.run_ready(clock.now)


# Scheduled.


def test_schedule_writes_a_one_off_run_of_the_registered_job(no_seed_definitions):
    at = datetime(2030, 1, 2, 3, 4, 5, tzinfo=UTC)
    occurrence = schedule("test.echo", at=at, payload={"order_id": 7}, key="reminder:7", by="orders")
    stored = row(occurrence)
    assert (stored.job, stored.job_name, stored.task_id, stored.one_off) == ("test.echo", "test.echo", None, True)
    assert (stored.status, stored.manual, stored.priority, stored.attempts) == ("scheduled", False, 1, 0)
    assert stored.scheduled_for == stored.run_after == at
    assert (stored.payload, stored.key, stored.triggered_by, stored.result) == (
        {"order_id": 7},
        "reminder:7",
        "orders",
        None,
    )
    assert occurrence.id == stored.id and occurrence.payload == {"order_id": 7}


def test_the_priority_is_the_jobs_own_unless_given(no_seed_definitions):
    assert row(schedule("test.retried")).priority == 2
    assert row(schedule("test.retried", priority=0)).priority == 0


def test_without_at_it_is_due_now_and_a_naive_at_is_refused(no_seed_definitions):
    occurrence = schedule("test.echo")
    assert abs((occurrence.run_after - datetime.now(UTC)).total_seconds()) < 5
    with pytest.raises(ScheduleError, match="aware datetime"):
        schedule("test.echo", at=datetime(2030, 1, 1))


@pytest.mark.django_db(transaction=True)
def test_a_run_scheduled_in_a_transaction_that_rolls_back_never_exists(no_seed_definitions):
    with pytest.raises(RuntimeError), transaction.atomic():
        schedule("test.echo", payload={"order_id": 1}, key="reminder:1")
        raise RuntimeError("the order's save failed")
    assert not Occurrence.objects.exists()
    assert schedule("test.echo", key="reminder:1").key == "reminder:1"  # the key was never taken
    assert Occurrence.objects.count() == 1


@pytest.mark.django_db(transaction=True)
def test_it_commits_nothing_and_wakes_the_schedulers_when_the_caller_commits(no_seed_definitions):
    with woken_by_notify() as woken:
        with transaction.atomic():
            occurrence = schedule("test.echo")
            assert not woken.wait(0.5)  # nothing is committed, nothing is notified yet
        assert woken.wait(10)
    assert row(occurrence).status == "scheduled"


def test_a_repeated_key_returns_the_live_run_until_it_finishes(clock, no_seed_definitions):
    first, created = schedule_or_get([Run("test.echo", payload={"n": 1}, key="k")])[0]
    again, created_again = schedule_or_get([Run("test.echo", payload={"n": 2}, key="k")])[0]
    assert (created, created_again, again.id, again.payload) == (True, False, first.id, {"n": 1})
    assert Occurrence.objects.count() == 1
    assert run_ready(clock) == 1
    assert row(first).status == "succeeded"
    later = schedule("test.echo", key="k")  # the key is free once its run finished
    assert later.id != first.id and Occurrence.objects.filter(key="k").count() == 2


@pytest.mark.django_db(transaction=True)
def test_two_transactions_racing_with_one_key_get_one_run(no_seed_definitions):
    barrier, ids, errors = threading.Barrier(2), [], []

    def schedule_it():
        try:
            with transaction.atomic():
                barrier.wait(10)
                ids.append(schedule("test.echo", key="race").id)
        except Exception as exc:  # surfaced below
            errors.append(exc)
        finally:
            connection.close()

    threads = [threading.Thread(target=schedule_it) for _ in range(2)]
    for thread in threads:
        thread.start()
    for thread in threads:
        thread.join(30)
    assert errors == []
    assert len(ids) == 2 and ids[0] == ids[1]
    assert Occurrence.objects.filter(key="race").count() == 1


def test_schedule_many_inserts_every_run_in_one_statement(no_seed_definitions):
    at = datetime(2030, 1, 1, tzinfo=UTC)
    schedule("test.echo", key="held")
    runs = [Run("test.echo", at=at + timedelta(seconds=n), payload={"n": n}) for n in range(500)]
    runs.append({"job": "test.echo", "key": "held"})
    default_clock.sync()  # the clock reads the database's time at most every 30 s: not in the count
    with CaptureQueriesContext(connection) as queries:
        occurrences = schedule_many(runs, by="bulk")
    assert len(queries) == 2  # the insert, and the read of the run that held a key
    assert [o.payload for o in occurrences[:3]] == [{"n": 0}, {"n": 1}, {"n": 2}]
    assert occurrences[-1].key == "held" and occurrences[-1].payload is None
    assert Occurrence.objects.count() == 501
    assert Occurrence.objects.filter(triggered_by="bulk").count() == 500
    assert [o.scheduled_for for o in occurrences[:2]] == [at, at + timedelta(seconds=1)]


def test_schedule_many_checks_every_run_before_writing_any(no_seed_definitions):
    with pytest.raises(UnknownJob):
        schedule_many([Run("test.echo"), Run("test.nope")])
    assert not Occurrence.objects.exists()


# Bad input: a clear error, nothing written.


def test_an_unknown_job_is_refused_with_the_nearest_name(no_seed_definitions):
    with pytest.raises(UnknownJob, match=r"no registered job is named 'test.ecko' \(did you mean test.echo\?\)"):
        schedule("test.ecko")
    assert not Occurrence.objects.exists()


@pytest.mark.parametrize(
    ("payload", "message"),
    [
        ([1, 2], "must be a JSON object"),
        ("text", "must be a JSON object"),
        ({"at": {1, 2}}, "not JSON"),
        ({"x": float("nan")}, "not JSON"),
        ({"text": "x" * 100}, "more than SCHEDULER_PAYLOAD_MAX_BYTES"),
    ],
)
def test_a_payload_that_is_no_json_object_or_too_big_is_refused(payload, message, settings, no_seed_definitions):
    settings.SCHEDULER_PAYLOAD_MAX_BYTES = 64
    with pytest.raises(PayloadError, match=message):
        schedule("test.echo", payload=payload)
    assert isinstance(PayloadError("x"), ValueError)
    assert not Occurrence.objects.exists()


def test_a_bad_key_priority_expiry_or_follow_up_is_refused(no_seed_definitions):
    with pytest.raises(ScheduleError, match="key"):
        schedule("test.echo", key="k" * 201)
    with pytest.raises(ScheduleError, match="priority"):
        schedule("test.echo", priority=9)
    with pytest.raises(ScheduleError, match="expires"):
        schedule("test.echo", expires=datetime(2000, 1, 1, tzinfo=UTC))
    with pytest.raises(ScheduleError, match="when"):
        schedule("test.echo", then=[FollowUp("test.echo", when="sometimes")])
    assert not Occurrence.objects.exists()


# Run.


def test_the_job_gets_its_payload_and_its_result_is_kept(clock, no_seed_definitions):
    occurrence = schedule("test.echo", payload={"order_id": 42, "items": ["a", "b"]})
    assert run_ready(clock) == 1
    stored = row(occurrence)
    assert (stored.status, stored.attempts, stored.reason) == ("succeeded", 1, "")
    assert stored.result == {"payload": {"order_id": 42, "items": ["a", "b"]}, "attempt": 1, "parent": None}
    assert OutboxMessage.objects.filter(origin=f"occurrence:{occurrence.id}").count() == 1


def test_runs_in_a_group_get_their_payloads_and_keep_their_results(clock, no_seed_definitions):
    scheduler = grouping_scheduler(clock)
    first = schedule("test.echo", payload={"n": 1})
    assert scheduler.run_ready(clock.now) == 1  # seen once alone: then quick enough for a group
    occurrences = schedule_many([Run("test.echo", payload={"n": n}) for n in (2, 3)])
    assert scheduler.run_group(clock.now) == (2, False)
    assert [row(o).result["payload"] for o in (first, *occurrences)] == [{"n": 1}, {"n": 2}, {"n": 3}]
    assert {row(o).status for o in occurrences} == {"succeeded"}


def test_a_result_that_is_not_json_fails_the_run_and_rolls_its_work_back(clock, no_seed_definitions):
    occurrence = schedule("test.not_json")
    assert run_ready(clock) == 1
    stored = row(occurrence)
    assert stored.status == "failed" and stored.result is None
    assert stored.reason.startswith("ResultNotJson: the job's result is not JSON: Object of type object")
    assert not OutboxMessage.objects.exists()


def test_a_one_off_run_that_fails_for_good_alerts_naming_who_scheduled_it(clock, settings, no_seed_definitions):
    settings.ALERT_EMAILS = ["ops@example.com"]
    occurrence = schedule("test.not_json", by="orders")
    assert run_ready(clock) == 1
    alert = Alert.objects.get(occurrence=occurrence)
    assert (alert.subject, alert.job_name) == ("Job test.not_json failed", "test.not_json")
    assert "(a one-off run scheduled by orders for " in alert.text


def test_its_retries_follow_the_jobs_policy(clock, no_seed_definitions):
    occurrence = schedule("test.retried", payload={"succeed_on": 3})
    assert run_ready(clock) == 3
    stored = row(occurrence)
    assert (stored.status, stored.attempts, stored.result) == ("succeeded", 3, 3)
    assert list(Attempt.objects.filter(occurrence=occurrence).order_by("number").values_list("status", flat=True)) == [
        "failed",
        "failed",
        "succeeded",
    ]


def test_a_late_run_runs_and_is_never_missed(clock, no_seed_definitions):
    late = schedule("test.echo", at=datetime.now(UTC) - timedelta(days=2), payload={"late": True})
    assert run_ready(clock) == 1
    assert (row(late).status, row(late).result["payload"]) == ("succeeded", {"late": True})


def test_the_celery_executor_does_not_judge_a_late_one_off_run_missed(clock, no_seed_definitions):
    executor = CeleryExecutor(
        session=SESSION, definition_of=lambda task_id: None, queue="unused", max_in_flight=1, hard_limit_margin=1
    )
    schedule("test.echo", at=datetime.now(UTC) - timedelta(days=2))
    (claimed,) = claim_ready(clock.now)
    assert executor.misfired(claimed) is False
    assert row(claimed).status == "running"
    assert executor.message(claimed, long_running=False)["args"] == [claimed.id, str(SESSION), 1]


def finished_count(status: str) -> float:
    labels = {"job_name": "test.echo", "status": status}
    return scheduler_metrics.REGISTRY.get_sample_value("bookworm_job_runs_finished_total", labels) or 0.0


def test_a_run_not_started_by_its_expiry_is_recorded_expired_and_never_runs(clock, no_seed_definitions):
    expiring = schedule("test.echo", expires=timedelta(minutes=5))
    lasting = schedule("test.echo", expires=clock.now + timedelta(minutes=5))
    before = {status: finished_count(status) for status in ("expired", "skipped", "succeeded")}
    assert run_ready(clock) == 2
    assert {status: finished_count(status) - before[status] for status in before} == {
        "expired": 1,
        "skipped": 0,
        "succeeded": 1,
    }
    stored = row(expiring)
    assert (stored.status, stored.attempts, stored.finished_at) == ("expired", 0, clock.now)
    assert stored.reason == f"expired: not started by {stored.expires_at.isoformat()}"
    assert not Attempt.objects.filter(occurrence=expiring).exists()
    assert row(lasting).status == "succeeded"
    assert OutboxMessage.objects.filter(origin=f"occurrence:{expiring.id}").count() == 0


def test_an_expired_run_leaves_a_group_and_is_recorded_expired_alone(clock, no_seed_definitions):
    scheduler = grouping_scheduler(clock)
    schedule("test.echo")
    scheduler.run_ready(clock.now)  # seen once alone: then quick enough for a group
    expiring = schedule("test.echo", expires=timedelta(minutes=5))
    assert scheduler.run_group(clock.now) == (0, True)
    assert scheduler.run_ready(clock.now) == 1
    assert row(expiring).status == "expired"


def test_a_scheduled_run_is_cancelled_as_any_occurrence_is(clock, no_seed_definitions):
    occurrence = schedule("test.echo")
    assert store.cancel(occurrence, by="alice", now=clock.now) == "cancelled"
    assert (row(occurrence).status, row(occurrence).reason) == ("skipped", "cancelled by alice")
    assert run_ready(clock) == 0


@pytest.mark.slow
@pytest.mark.django_db(transaction=True)
def test_a_scheduler_process_runs_them_at_their_time_with_their_payloads(scheduler_processes, no_seed_definitions):
    scheduler_processes(instance_id="inline")
    soon = schedule("test.echo", at=datetime.now(UTC) + timedelta(seconds=2), payload={"order_id": 5})
    late = schedule("test.echo", at=datetime.now(UTC) - timedelta(hours=3), payload={"late": True})
    wait_for(lambda: {row(soon).status, row(late).status} == {"succeeded"}, timeout=30)
    assert [row(o).result["payload"] for o in (soon, late)] == [{"order_id": 5}, {"late": True}]
    assert row(soon).started_at >= row(soon).scheduled_for and row(soon).scheduler == "inline"
