import contextlib
import random
import threading
import time
import uuid
from collections import Counter
from datetime import timedelta

import psycopg
import pytest
from django.db import connection
from django.test.utils import CaptureQueriesContext
from django_celery_beat.models import PeriodicTask

from jobs.engine import store
from jobs.engine.loop import NOTIFY_CHANNEL
from jobs.models import Attempt, Occurrence, Priority, SchedulerInstance
from outbox.models import OutboxMessage
from tests.jobs.helpers import (
    FakeClock,
    make_definition,
    make_scheduler,
    start_of_future_hour,
    wait_for,
    woken_by_notify,
)
from tests.outbox.helpers import SERIALIZATION_FAILURE, serialization_failure


@pytest.mark.django_db
def test_higher_priority_runs_first_when_more_is_due_than_there_are_slots(clock, no_seed_definitions):
    for name, priority in [("low", Priority.LOW), ("normal", Priority.NORMAL), ("high", Priority.HIGH)]:
        task = make_definition(name, every=60, priority=priority)
        store.trigger(task, now=clock.now, priority=priority)
    scheduler = make_scheduler(clock, concurrency=1)
    scheduler.planner.refresh()
    order = []
    while scheduler.run_ready(clock.advance(seconds=1), limit=1):
        order.append(Occurrence.objects.filter(status="succeeded").latest("finished_at").job_name)
    assert order == ["high", "normal", "low"]


@pytest.mark.django_db
def test_the_priority_of_a_definition_is_copied_to_its_occurrences(clock, no_seed_definitions):
    task = make_definition("urgent", cron="* * * * *", planned_through=clock.now, priority=Priority.HIGH)
    scheduler = make_scheduler(clock)
    scheduler.planner.refresh()
    scheduler.planner.plan(clock.advance(minutes=1))
    assert Occurrence.objects.get(task=task).priority == Priority.HIGH


@pytest.mark.django_db
def test_long_running_jobs_are_not_claimed_by_the_bounded_workers(clock, no_seed_definitions):
    task = make_definition("long", every=3600, priority=Priority.LONG_RUNNING)
    occurrence = store.trigger(task, now=clock.now, priority=Priority.LONG_RUNNING)
    scheduler = make_scheduler(clock, concurrency=1)
    scheduler.planner.refresh()
    assert scheduler.run_ready(clock.now) == 0
    assert scheduler.run_ready(clock.now, long_running=True) == 1
    occurrence.refresh_from_db()
    assert occurrence.status == "succeeded"


@pytest.mark.django_db(transaction=True)
def test_three_schedulers_run_every_instant_exactly_once(no_seed_definitions):
    """Three schedulers, each a thread with its own connection, race over the same instants."""
    start = start_of_future_hour()
    tasks = [make_definition(f"grid-{i}", every=10, start_time=start, planned_through=start) for i in range(20)]
    steps = [start + timedelta(seconds=5 * i) for i in range(1, 31)]  # 150 s: 15 instants each
    errors = []

    def instance(name):
        try:
            own = FakeClock(start)
            scheduler = make_scheduler(own, instance_id=name, lease=3600)
            for now in steps:
                own.set(now)
                scheduler.planner.refresh()
                scheduler.planner.plan(now)
                time.sleep(random.random() / 100)
                scheduler.run_ready(now)
        except Exception as exc:  # surfaced by the assertion below
            errors.append(exc)
        finally:
            connection.close()

    threads = [threading.Thread(target=instance, args=(f"instance-{n}",)) for n in range(3)]
    for thread in threads:
        thread.start()
    for thread in threads:
        thread.join(120)
    assert errors == []

    expected = {(t.id, start + timedelta(seconds=10 * k)) for t in tasks for k in range(1, 16)}
    planned = Counter(Occurrence.objects.values_list("task_id", "scheduled_for"))
    assert set(planned) == expected, "an instant was missed or invented"
    assert max(planned.values()) == 1, "an instant was planned twice"
    assert set(Occurrence.objects.values_list("status", flat=True)) == {"succeeded"}
    ran = Counter(OutboxMessage.objects.values_list("body__occurrence", flat=True))
    assert len(ran) == len(expected) and max(ran.values()) == 1, "an occurrence ran twice"
    assert Attempt.objects.count() == len(expected)
    assert len(set(Occurrence.objects.values_list("scheduler", flat=True))) > 1


@pytest.mark.django_db
def test_an_expired_lease_is_reaped_recorded_and_retried(clock, no_seed_definitions, caplog):
    task = make_definition("victim", every=3600, max_retries=1)
    occurrence = store.trigger(task, now=clock.now, priority=Priority.NORMAL)
    dead = make_scheduler(clock, instance_id="dead", lease=30)
    store.claim_ready(
        now=clock.now, session=dead.session, scheduler="dead", lease=dead.leases.lease, long_running=False
    )
    survivor = make_scheduler(clock, instance_id="survivor", lease=30)
    survivor.planner.refresh()
    assert survivor.reap(clock.advance(seconds=29)) == 0
    assert survivor.reap(clock.advance(seconds=2)) == 1
    assert [r.occurrence for r in caplog.records if getattr(r, "action", None) == "lease_expired"] == [occurrence.id]
    occurrence.refresh_from_db()
    assert occurrence.status == "scheduled" and occurrence.attempts == 1
    attempt = Attempt.objects.get(occurrence=occurrence)
    assert attempt.status == "failed" and "scheduler dead" in attempt.error and "presumed dead" in attempt.error
    survivor.run_ready(clock.now)
    occurrence.refresh_from_db()
    assert (occurrence.status, occurrence.attempts, occurrence.scheduler) == ("succeeded", 2, "survivor")


@pytest.mark.django_db
def test_the_heartbeat_renews_the_leases_of_running_occurrences(clock, no_seed_definitions):
    task = make_definition("steady", every=3600)
    store.trigger(task, now=clock.now, priority=Priority.NORMAL)
    scheduler = make_scheduler(clock, lease=30)
    scheduler.start(clock.now)
    [claimed] = store.claim_ready(
        now=clock.now, session=scheduler.session, scheduler="test", lease=scheduler.leases.lease, long_running=False
    )
    scheduler.leases.renew(clock.advance(seconds=20), [claimed.id])
    assert scheduler.reap(clock.advance(seconds=20)) == 0
    assert SchedulerInstance.objects.get(session=scheduler.session).last_seen == clock.now - timedelta(seconds=20)


@pytest.mark.django_db(transaction=True)
def test_the_loop_runs_what_it_plans_in_its_pool_and_says_goodbye(no_seed_definitions):
    task = make_definition("soon", every=1)
    scheduler = make_scheduler(None, concurrency=2)
    loop = threading.Thread(target=scheduler.run, kwargs={"shutdown_timeout": 10})
    loop.start()
    try:
        wait_for(lambda: Occurrence.objects.filter(task=task, status="succeeded").count() >= 3, timeout=15)
    finally:
        scheduler.stop()
        loop.join(20)
    assert not loop.is_alive()
    instance = SchedulerInstance.objects.get(session=scheduler.session)
    assert instance.state == "stopped" and instance.stopped_at is not None


def hourly_falling_due(clock):
    """An hourly definition planned through now, a scheduler that loaded it, and its next instant, now."""
    task = make_definition("hourly", cron="0 * * * *", planned_through=clock.now)
    scheduler = make_scheduler(clock)
    scheduler.planner.refresh()
    return task, scheduler, clock.advance(hours=1)


@contextlib.contextmanager
def cursor_held_elsewhere(task):
    """Another scheduler's transaction holding task's planning cursor (it is planning it, or died doing so)."""
    with psycopg.connect(**connection.get_connection_params()) as other:
        other.execute("SELECT * FROM jobs_planningcursor WHERE task_id = %s FOR UPDATE", [task.id])
        yield other


@pytest.mark.django_db(transaction=True)
def test_a_definition_another_scheduler_was_planning_is_looked_at_again_within_a_second(clock, no_seed_definitions):
    task, scheduler, due = hourly_falling_due(clock)
    with cursor_held_elsewhere(task):
        assert scheduler.planner.plan(due) == 0
        assert scheduler.planner.next_due[task.id] == due + timedelta(seconds=1)
    scheduler.planner.plan(clock.advance(seconds=1))
    assert list(Occurrence.objects.filter(task=task).values_list("scheduled_for", flat=True)) == [due]


@pytest.mark.django_db(transaction=True)
def test_a_definition_another_scheduler_planned_meanwhile_is_passed_over_without_its_lock(clock, no_seed_definitions):
    task, scheduler, due = hourly_falling_due(clock)
    with cursor_held_elsewhere(task) as other:
        assert scheduler.planner.plan(due) == 0
        other.execute("UPDATE jobs_planningcursor SET planned_through = %s WHERE task_id = %s", [due, task.id])
    with cursor_held_elsewhere(task):  # held again: the other scheduler is at work on it still
        assert scheduler.planner.plan(clock.advance(seconds=1)) == 0
        assert scheduler.planner.next_due[task.id] == due + timedelta(hours=1)  # from the cursor, read unlocked
    assert not Occurrence.objects.filter(task=task).exists()  # the other scheduler's to insert, not this one's


@pytest.mark.django_db
def test_each_attempt_records_when_it_really_started(clock, no_seed_definitions):
    task = make_definition("victim", every=3600, max_retries=1)
    occurrence = store.trigger(task, now=clock.now, priority=Priority.NORMAL)
    first_claim = clock.now
    store.claim_ready(
        now=clock.now, session=uuid.uuid4(), scheduler="dead", lease=timedelta(seconds=30), long_running=False
    )
    survivor = make_scheduler(clock, instance_id="survivor", lease=30)
    survivor.planner.refresh()
    survivor.reap(clock.advance(seconds=31))
    retried_at = clock.advance(seconds=9)
    survivor.run_ready(clock.now)
    lost, retried = Attempt.objects.filter(occurrence=occurrence).order_by("number")
    assert (lost.started_at, retried.started_at) == (first_claim, retried_at)
    occurrence.refresh_from_db()
    assert occurrence.started_at == retried_at


@pytest.mark.django_db
def test_a_scheduler_whose_heartbeat_stopped_is_marked_lost(clock, no_seed_definitions, caplog):
    dead = make_scheduler(clock, instance_id="dead", lease=30)
    dead.start(clock.now)
    survivor = make_scheduler(clock, instance_id="survivor", lease=30)
    survivor.start(clock.advance(seconds=25))
    survivor.reap(clock.advance(seconds=6))
    states = dict(SchedulerInstance.objects.values_list("instance_id", "state"))
    assert states == {"dead": "lost", "survivor": "running"}
    assert SchedulerInstance.objects.get(instance_id="dead").stopped_at == clock.now - timedelta(seconds=31)


def tables_read(scheduler, now) -> set[str]:
    """The tables one pass of the scheduler's main loop sent statements about."""
    with CaptureQueriesContext(connection) as captured:
        scheduler.run_pass(now)
    return {table for query in captured.captured_queries for table in TABLES if table in (query["sql"] or "")}


TABLES = ("jobs_definitionsversion", "jobs_occurrence")


@pytest.mark.django_db(transaction=True)
def test_a_notify_of_ready_occurrences_claims_and_only_a_definitions_one_looks_at_the_definitions(
    clock, no_seed_definitions
):
    make_definition("housekept", every=3600)
    scheduler = make_scheduler(clock)
    assert tables_read(scheduler, clock.now) == {"jobs_definitionsversion", "jobs_occurrence"}  # the first pass

    for payload in ("", "scheduled"):  # occurrences inserted, or scheduled again
        scheduler.notified(payload)
        assert tables_read(scheduler, clock.advance(seconds=1)) == {"jobs_occurrence"}
    scheduler.notified("definitions")
    assert tables_read(scheduler, clock.advance(seconds=1)) == {"jobs_definitionsversion", "jobs_occurrence"}
    scheduler.notified(None)  # listening again: anything may have been missed
    assert tables_read(scheduler, clock.advance(seconds=1)) == {"jobs_definitionsversion", "jobs_occurrence"}


@pytest.mark.django_db(transaction=True)
def test_a_written_definition_and_an_occurrence_scheduled_again_notify(no_seed_definitions):
    task = make_definition("notifying", every=3600)
    occurrence = store.trigger(task, priority=Priority.NORMAL)
    with psycopg.connect(**connection.get_connection_params(), autocommit=True) as listening:
        listening.execute(f"LISTEN {NOTIFY_CHANNEL}")
        PeriodicTask.objects.filter(id=task.id).update(description="edited with QuerySet.update()")
        Occurrence.objects.filter(id=occurrence.id).update(status="skipped")  # finished: no one needs waking
        Occurrence.objects.filter(id=occurrence.id).update(status="scheduled")  # the admin's retry, say
        payloads = [notify.payload for notify in listening.notifies(timeout=10, stop_after=2)]
    assert payloads == ["definitions", "scheduled"]


@pytest.mark.django_db(transaction=True)
def test_inserted_occurrences_wake_idle_schedulers_at_once(no_seed_definitions):
    task = make_definition("manual", every=3600)
    with woken_by_notify() as woken:
        store.trigger(task, priority=Priority.NORMAL)
        assert woken.wait(10)


@pytest.mark.django_db(transaction=True)
def test_a_pass_that_loses_a_conflict_is_logged_as_one_and_run_again_soon(no_seed_definitions, monkeypatch, caplog):
    task = make_definition("after-the-conflict", every=3600)
    occurrence = store.trigger(task, priority=Priority.NORMAL)
    scheduler = make_scheduler(None)
    prune = scheduler.prune
    conflicts = []

    def prune_after_a_concurrent_heartbeat(now):
        if not conflicts:
            conflicts.append(now)
            serialization_failure(connection, "jobs_schedulerinstance", scheduler.session, key="session")
        return prune(now)

    monkeypatch.setattr(scheduler, "prune", prune_after_a_concurrent_heartbeat)
    loop = threading.Thread(target=scheduler.run, kwargs={"shutdown_timeout": 10})
    loop.start()
    try:
        wait_for(lambda: Occurrence.objects.filter(id=occurrence.id, status="succeeded").exists(), timeout=15)
    finally:
        scheduler.stop()
        loop.join(20)

    [conflict] = [record for record in caplog.records if getattr(record, "action", None) == "database_conflict"]
    assert conflict.levelname == "WARNING" and 0.025 <= conflict.retry_in <= 0.05
    assert conflict.error == SERIALIZATION_FAILURE
    assert not [record for record in caplog.records if getattr(record, "action", None) == "database_unavailable"]
