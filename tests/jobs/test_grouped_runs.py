"""Runs grouped in one transaction (GroupRunner.run_group): each keeps the promises of a run on its own."""

from collections import Counter
from datetime import timedelta

import pytest
from django.db import connection, transaction
from django.utils import timezone
from django_celery_beat.models import IntervalSchedule, PeriodicTask, PeriodicTasks

from jobs.engine import store
from jobs.models import Attempt, Occurrence, Priority
from outbox.models import OutboxMessage
from tests.jobs.helpers import make_definition, make_scheduler, wait_for


def trigger(task, clock=None, count=1):
    """count manual runs of task, due at clock.now (without a clock: the database's time)."""
    now = clock.now if clock else None
    return [store.trigger(task, now=now, priority=Priority.NORMAL) for _ in range(count)]


def events_of(occurrences):
    return OutboxMessage.objects.filter(body__occurrence__in=[o.id for o in occurrences])


def statuses(occurrences):
    return [Occurrence.objects.get(id=o.id).status for o in occurrences]


def known_quick(scheduler, clock, *jobs):
    """Run one occurrence of each job on its own first: a job joins a group once it was seen to be quick."""
    for job in jobs:
        trigger(make_definition(f"first {job}", job, every=3600), clock)
    scheduler.planner.refresh()
    assert scheduler.run_ready(clock.now) == len(jobs)
    # Generous for a loaded test machine: the point here is what a group does, not when it commits.
    scheduler.runner.group_seconds = 10.0


def run_between_quick_ones(clock, job):
    """One group: two quick runs, one of job, two quick runs (all five ran); the occurrences, in three parts."""
    scheduler = make_scheduler(clock)
    known_quick(scheduler, clock, "test.publish", job)
    before = trigger(make_definition("before", every=3600), clock, 2)
    [middle] = trigger(make_definition("middle", job, every=3600), clock)
    after = trigger(make_definition("after", every=3600), clock, 2)
    scheduler.planner.refresh()
    assert scheduler.run_group(clock.advance(seconds=1)) == (5, False)
    return before, middle, after


@pytest.mark.django_db
def test_a_failing_job_in_a_group_rolls_back_only_its_own_work(clock, no_seed_definitions, caplog):
    scheduler = make_scheduler(clock)
    known_quick(scheduler, clock, "test.publish", "test.fail")
    before = trigger(make_definition("before", every=3600), clock, 3)
    [failing] = trigger(make_definition("failing", "test.fail", every=3600), clock)
    after = trigger(make_definition("after", every=3600), clock, 3)
    scheduler.planner.refresh()

    assert scheduler.run_group(clock.advance(seconds=1)) == (7, False)

    assert statuses(before + after) == ["succeeded"] * 6
    assert events_of(before + after).count() == 6
    failing.refresh_from_db()
    assert (failing.status, failing.attempts, failing.reason) == (
        "failed",
        1,
        "RuntimeError: the sample job failed on purpose",
    )
    assert not events_of([failing]).exists()  # it published before it raised: rolled back with it
    attempt = Attempt.objects.get(occurrence=failing)
    assert attempt.status == "failed" and "on purpose" in attempt.traceback
    assert Attempt.objects.filter(occurrence__in=before + after, number=1, status="succeeded").count() == 6
    events = [(r.action, r.occurrence) for r in caplog.records if getattr(r, "grouped", False)]
    assert ("occurrence_failed", failing.id) in events and len(events) == 7


@pytest.mark.django_db
def test_the_events_of_a_groups_runs_are_written_in_one_statement_before_its_record(clock, no_seed_definitions):
    scheduler = make_scheduler(clock)
    known_quick(scheduler, clock, "test.publish")
    runs = trigger(make_definition("quick", every=3600), clock, 5)
    scheduler.planner.refresh()
    statements = []

    def record(execute, sql, params, many, context):
        statements.append(" ".join(sql.split()[:3]))
        return execute(sql, params, many, context)

    with connection.execute_wrapper(record):
        assert scheduler.run_group(clock.advance(seconds=1)) == (5, False)

    # A job that only publishes sends no statement: its row waits for the group's (outbox.publishing.deferred).
    inserts = [n for n, sql in enumerate(statements) if sql.startswith('INSERT INTO "outbox_outboxmessage"')]
    assert len(inserts) == 1
    assert statements[inserts[0] + 1] == "WITH done AS"  # the record (sql.record_group), in the same transaction
    events = events_of(runs).order_by("id")
    assert [event.origin for event in events] == [f"occurrence:{run.id}" for run in runs]
    assert statuses(runs) == ["succeeded"] * 5


@pytest.mark.django_db
def test_a_failure_with_retries_left_in_a_group_is_scheduled_again(clock, no_seed_definitions):
    scheduler = make_scheduler(clock)
    known_quick(scheduler, clock, "test.publish", "test.fail_until")
    [flaky] = trigger(make_definition("flaky", "test.fail_until", every=3600, max_retries=1), clock)
    others = trigger(make_definition("others", every=3600), clock, 2)
    scheduler.planner.refresh()

    assert scheduler.run_group(clock.advance(seconds=1)) == (3, False)
    flaky.refresh_from_db()
    assert (flaky.status, flaky.attempts, flaky.reason) == ("scheduled", 1, "RuntimeError: attempt 1 fails")
    assert statuses(others) == ["succeeded", "succeeded"]

    assert scheduler.run_group(clock.advance(seconds=1)) == (1, False)
    flaky.refresh_from_db()
    assert (flaky.status, flaky.attempts) == ("succeeded", 2)
    assert list(Attempt.objects.filter(occurrence=flaky).order_by("number").values_list("status", flat=True)) == [
        "failed",
        "succeeded",
    ]


@pytest.mark.django_db
def test_a_job_that_times_out_in_a_group_rolls_back_only_its_own_work(clock, no_seed_definitions):
    scheduler = make_scheduler(clock)
    known_quick(scheduler, clock, "test.publish", "test.publish_then_sleep")
    before = trigger(make_definition("before", every=3600), clock, 2)
    [stuck] = trigger(
        make_definition("stuck", "test.publish_then_sleep", every=3600, kwargs={"seconds": 30}, timeout_seconds=1),
        clock,
    )
    after = trigger(make_definition("after", every=3600), clock, 2)
    scheduler.planner.refresh()
    with connection.cursor() as cursor:
        cursor.execute("SHOW statement_timeout")
        [default_timeout] = cursor.fetchone()

    assert scheduler.run_group(clock.advance(seconds=1)) == (5, False)

    stuck.refresh_from_db()
    assert (stuck.status, stuck.reason) == ("failed", "timed out after 1 s")
    assert not events_of([stuck]).exists()
    assert statuses(before + after) == ["succeeded"] * 4
    assert events_of(before + after).count() == 4
    with connection.cursor() as cursor:
        cursor.execute("SHOW statement_timeout")
        assert cursor.fetchone() == (default_timeout,)  # the job's own timeout did not outlive it


@pytest.mark.django_db
def test_a_statement_the_database_rejects_in_a_group_aborts_only_its_own_job(clock, no_seed_definitions):
    before, bad, after = run_between_quick_ones(clock, "test.bad_sql")

    bad.refresh_from_db()
    assert (bad.status, bad.reason) == ("failed", "DataError: division by zero")
    assert not events_of([bad]).exists()
    assert statuses(before + after) == ["succeeded"] * 4
    assert events_of(before + after).count() == 4


@pytest.mark.django_db
def test_a_job_that_returns_with_its_transaction_marked_for_rollback_in_a_group_has_failed(clock, no_seed_definitions):
    scheduler = make_scheduler(clock)
    known_quick(scheduler, clock, "test.publish", "test.swallow_database_error")
    [swallower] = trigger(make_definition("swallower", "test.swallow_database_error", every=3600), clock)
    after = trigger(make_definition("after", every=3600), clock, 2)
    scheduler.planner.refresh()

    assert scheduler.run_group(clock.advance(seconds=1)) == (3, False)

    swallower.refresh_from_db()
    assert (swallower.status, swallower.reason) == (
        "failed",
        "TransactionManagementError: the job returned with its transaction marked for rollback",
    )
    assert not events_of([swallower]).exists()
    assert statuses(after) == ["succeeded", "succeeded"]
    assert events_of(after).count() == 2


@pytest.mark.django_db
def test_an_error_of_a_jobs_first_statement_reaches_the_job_at_that_statement(clock, no_seed_definitions):
    # The run's SAVEPOINT is sent with the job's first statement (runner._QueuedSavepoint): the job
    # still gets that statement's error where it sent it, and handles it in its own atomic block.
    before, handler, after = run_between_quick_ones(clock, "test.first_statement_fails_in_atomic")

    assert statuses([*before, handler, *after]) == ["succeeded"] * 5
    assert events_of([*before, handler, *after]).count() == 5


@pytest.mark.django_db
def test_a_job_that_returns_with_its_transaction_aborted_in_a_group_has_failed(clock, no_seed_definitions):
    before, swallower, after = run_between_quick_ones(clock, "test.swallow_first_statement_error")

    swallower.refresh_from_db()
    assert (swallower.status, swallower.reason) == (
        "failed",
        "TransactionManagementError: the job returned with its transaction aborted by a database error",
    )
    assert statuses(before + after) == ["succeeded"] * 4
    assert events_of(before + after).count() == 4


@pytest.mark.django_db
def test_a_job_not_seen_to_be_quick_runs_alone_after_the_group(clock, no_seed_definitions):
    scheduler = make_scheduler(clock)
    known_quick(scheduler, clock, "test.publish")
    first = trigger(make_definition("first", every=3600), clock, 2)
    [slow] = trigger(make_definition("slow", "test.sleep", every=3600, kwargs={"seconds": 0}), clock)
    scheduler.planner.refresh()

    assert scheduler.run_group(clock.advance(seconds=1)) == (2, True)
    assert statuses(first) == ["succeeded", "succeeded"]
    slow.refresh_from_db()
    assert (slow.status, slow.attempts) == ("scheduled", 0)  # left as it was, for a claim of its own


@pytest.mark.django_db
def test_a_group_stops_after_its_runs_and_the_rest_waits_for_the_next(clock, no_seed_definitions):
    scheduler = make_scheduler(clock)
    known_quick(scheduler, clock, "test.publish")
    scheduler.runner.group_runs, scheduler.runner.group_lock = 4, 3
    occurrences = trigger(make_definition("many", every=3600), clock, 6)
    scheduler.planner.refresh()

    assert scheduler.run_group(clock.advance(seconds=1)) == (4, False)
    assert statuses(occurrences) == ["succeeded"] * 4 + ["scheduled"] * 2
    assert scheduler.run_group(clock.now) == (2, False)
    assert scheduler.run_group(clock.now) == (0, False)


@pytest.mark.django_db
def test_a_group_counts_its_threads_cpu_time_and_ends_once_open_ten_times_as_long(clock, no_seed_definitions):
    # Runs that wait 0.2 s each and use next to no CPU: the wall clock alone would end the group
    # after the first; the CPU time (0.1 s) never fills, and the group ends once open 1 s.
    scheduler = make_scheduler(clock)
    waits = make_definition("waits", "test.sleep", every=3600, kwargs={"seconds": 0.2})
    trigger(waits, clock)
    scheduler.planner.refresh()
    assert scheduler.run_ready(clock.now) == 1  # seen once, alone: 0.2 s
    scheduler.runner.group_seconds = 0.1  # a job whose runs average under 0.5 s joins a group
    occurrences = trigger(waits, clock, 8)

    ran, alone_next = scheduler.run_group(clock.advance(seconds=1))

    assert 2 <= ran <= 5 and not alone_next
    assert Counter(statuses(occurrences)) == {"succeeded": ran, "scheduled": 8 - ran}


@pytest.mark.slow
@pytest.mark.django_db(transaction=True)
def test_a_scheduler_killed_in_the_middle_of_a_group_reruns_only_what_had_not_committed(
    scheduler_processes, scheduler_env, no_seed_definitions, tmp_path
):
    marker = tmp_path / "holding"
    # A generous group time: on a loaded machine a quick job may take longer than the default.
    env = dict(scheduler_env, SCHEDULER_LEASE_SECONDS="3", SCHEDULER_GROUP_MILLISECONDS="1000")
    victim = scheduler_processes("--concurrency", "1", env=env, instance_id="victim")
    [done] = trigger(make_definition("done", "test.hold_once", every=3600))
    wait_for(lambda: Occurrence.objects.filter(id=done.id, status="succeeded").exists(), timeout=30)
    # The slot's claim runs alone and commits; the next three run as one group, the last holding it open.
    pending_task = make_definition("pending", "test.hold_once", every=3600)
    holder = make_definition("holder", "test.hold_once", every=3600, kwargs={"marker": str(marker), "seconds": 60})
    with transaction.atomic():
        [alone, *grouped] = trigger(pending_task, count=3) + trigger(holder)
    wait_for(marker.exists, timeout=30)
    assert statuses([alone, *grouped]) == ["succeeded", "scheduled", "scheduled", "scheduled"]
    victim.kill()

    scheduler_processes(env=env, instance_id="survivor")
    wait_for(lambda: statuses(grouped) == ["succeeded"] * 3, timeout=30)
    ran = Occurrence.objects.filter(id__in=[o.id for o in [done, alone, *grouped]]).order_by("id")
    assert list(ran.values_list("scheduler", "attempts")) == [("victim", 1)] * 2 + [("survivor", 1)] * 3
    assert Attempt.objects.filter(occurrence__in=[done, alone, *grouped]).count() == 5  # the lost group counted none
    assert Counter(events_of([done, alone, *grouped]).values_list("body__occurrence", flat=True)) == {
        o.id: 1 for o in [done, alone, *grouped]
    }
    assert not Occurrence.objects.filter(status="running").exists()


@pytest.mark.slow
@pytest.mark.django_db(transaction=True)
def test_two_instances_run_the_same_thousand_instants_each_once(
    scheduler_processes, scheduler_env, no_seed_definitions
):
    first = scheduler_processes(instance_id="first")
    second = scheduler_processes(instance_id="second")
    due = timezone.now().replace(microsecond=0) + timedelta(seconds=3)
    interval, _ = IntervalSchedule.objects.get_or_create(every=3600, period=IntervalSchedule.SECONDS)
    PeriodicTask.objects.bulk_create(
        PeriodicTask(name=f"due-{n}", task="test.publish", interval=interval, start_time=due) for n in range(1000)
    )
    PeriodicTasks.update_changed()
    try:
        wait_for(lambda: Occurrence.objects.filter(status="succeeded").count() == 1000, timeout=120, interval=0.5)
    except AssertionError as missed:
        counts = dict(Counter(Occurrence.objects.values_list("status", flat=True)))
        raise AssertionError(f"{missed}: {counts}\n{first.written()[-5000:]}\n{second.written()[-5000:]}") from None
    assert (first.terminate(), second.terminate()) == (0, 0), first.output() + second.output()

    planned = Counter(Occurrence.objects.values_list("task_id", "scheduled_for"))
    assert len(planned) == 1000 and set(planned.values()) == {1}
    assert set(Occurrence.objects.values_list("scheduled_for", flat=True)) == {due}
    ran = Counter(OutboxMessage.objects.values_list("body__occurrence", flat=True))
    assert len(ran) == 1000 and set(ran.values()) == {1}
    assert Attempt.objects.count() == 1000
    assert set(Occurrence.objects.values_list("scheduler", flat=True)) == {"first", "second"}
