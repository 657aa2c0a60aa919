from datetime import timedelta

import pytest
from django.db import connection

from bookworm_scheduler.kernel.db import bound_idle_transactions
from jobs.engine import observer, runner, store
from jobs.engine.runner import Runner
from jobs.models import Attempt, Occurrence, Priority
from outbox.models import OutboxMessage
from tests.jobs.helpers import make_definition, make_scheduler
from tests.outbox.helpers import SERIALIZATION_FAILURE, changed_since_read

pytestmark = pytest.mark.django_db


def trigger(task, clock, priority=Priority.NORMAL):
    return store.trigger(task, now=clock.now, priority=priority)


def events_of(occurrence):
    return OutboxMessage.objects.filter(body__occurrence=occurrence.id)


def test_a_successful_run_commits_its_event_and_its_attempt_together(clock, no_seed_definitions):
    occurrence = trigger(make_definition("publisher", every=60), clock)
    scheduler = make_scheduler(clock)
    scheduler.planner.refresh()
    assert scheduler.run_ready(clock.now) == 1
    occurrence.refresh_from_db()
    assert occurrence.status == "succeeded" and occurrence.attempts == 1 and occurrence.manual
    assert occurrence.scheduler == "test" and occurrence.finished_at == clock.now
    attempt = Attempt.objects.get(occurrence=occurrence)
    assert (attempt.number, attempt.status, attempt.error) == (1, "succeeded", "")
    event = events_of(occurrence).get()
    assert event.message_types[0] == "urn:message:BookWorm.Tests:SampleRanEvent"
    assert event.origin == f"occurrence:{occurrence.id}"


def test_a_job_that_raises_is_a_recorded_failure_and_its_event_rolls_back(clock, no_seed_definitions, caplog):
    occurrence = trigger(make_definition("failing", "test.fail", every=60), clock)
    scheduler = make_scheduler(clock)
    scheduler.planner.refresh()
    scheduler.run_ready(clock.now)
    [event] = [r for r in caplog.records if getattr(r, "action", None) == "occurrence_failed"]
    assert (event.job_name, event.occurrence, event.attempt) == ("failing", occurrence.id, 1)
    occurrence.refresh_from_db()
    assert occurrence.status == "failed"
    assert occurrence.reason == "RuntimeError: the sample job failed on purpose"
    attempt = Attempt.objects.get(occurrence=occurrence)
    assert attempt.status == "failed" and "Traceback" in attempt.traceback and "on purpose" in attempt.traceback
    assert not events_of(occurrence).exists()


def test_the_scheduler_goes_on_after_a_failure(clock, no_seed_definitions):
    failing = trigger(make_definition("failing", "test.fail", every=60), clock)
    working = trigger(make_definition("working", every=60), clock)
    scheduler = make_scheduler(clock)
    scheduler.planner.refresh()
    assert scheduler.run_ready(clock.now) == 2
    assert Occurrence.objects.get(id=failing.id).status == "failed"
    assert Occurrence.objects.get(id=working.id).status == "succeeded"


def test_a_failed_attempt_is_retried_after_its_interval_even_across_a_restart(clock, no_seed_definitions):
    task = make_definition(
        "flaky", "test.fail_until", every=3600, kwargs={"succeed_on": 3}, max_retries=3, retry_intervals=[60, 120]
    )
    occurrence = trigger(task, clock)
    first = make_scheduler(clock, instance_id="first")
    first.planner.refresh()
    first.run_ready(clock.now)
    occurrence.refresh_from_db()
    assert occurrence.status == "scheduled" and occurrence.attempts == 1
    assert occurrence.run_after == clock.now + timedelta(seconds=60)

    # A new process (the restart) finds the pending retry in the database.
    second = make_scheduler(clock, instance_id="second")
    second.planner.refresh()
    assert second.run_ready(clock.advance(seconds=30)) == 0
    assert second.run_ready(clock.advance(seconds=31)) == 1
    occurrence.refresh_from_db()
    assert occurrence.status == "scheduled" and occurrence.attempts == 2
    assert occurrence.run_after == clock.now + timedelta(seconds=120)
    second.run_ready(clock.advance(seconds=120))
    occurrence.refresh_from_db()
    assert occurrence.status == "succeeded" and occurrence.attempts == 3
    attempts = list(Attempt.objects.filter(occurrence=occurrence).order_by("number"))
    assert [(a.number, a.status, a.scheduler) for a in attempts] == [
        (1, "failed", "first"),
        (2, "failed", "second"),
        (3, "succeeded", "second"),
    ]
    assert events_of(occurrence).count() == 1


def test_retries_run_out_and_the_occurrence_fails(clock, no_seed_definitions):
    task = make_definition("hopeless", "test.fail", every=3600, max_retries=1)
    occurrence = trigger(task, clock)
    scheduler = make_scheduler(clock)
    scheduler.planner.refresh()
    scheduler.run_ready(clock.now)
    scheduler.run_ready(clock.now)
    occurrence.refresh_from_db()
    assert (occurrence.status, occurrence.attempts) == ("failed", 2)


def test_a_definition_naming_no_registered_job_fails_with_a_clear_error(clock, no_seed_definitions):
    unknown = trigger(make_definition("ghost", "no.such.job", every=60), clock)
    fine = trigger(make_definition("fine", every=60), clock)
    scheduler = make_scheduler(clock)
    scheduler.planner.refresh()
    scheduler.run_ready(clock.now)
    unknown.refresh_from_db()
    assert (unknown.status, unknown.reason) == ("failed", "no such job: no.such.job")
    assert Occurrence.objects.get(id=fine.id).status == "succeeded"
    assert OutboxMessage.objects.count() == 1


def test_a_job_past_its_timeout_is_a_failed_attempt(clock, no_seed_definitions):
    task = make_definition("slow", "test.sleep", every=3600, kwargs={"seconds": 30}, timeout_seconds=1)
    occurrence = trigger(task, clock)
    scheduler = make_scheduler(clock)
    scheduler.planner.refresh()
    scheduler.run_ready(clock.now)
    occurrence.refresh_from_db()
    assert (occurrence.status, occurrence.reason) == ("failed", "timed out after 1 s")
    assert not events_of(occurrence).exists()


def test_an_occurrence_of_a_disabled_definition_is_skipped(clock, no_seed_definitions):
    task = make_definition("paused", cron="* * * * *", planned_through=clock.now)
    scheduler = make_scheduler(clock)
    scheduler.planner.refresh()
    scheduler.planner.plan(clock.advance(minutes=1))
    task.enabled = False
    task.save()
    scheduler.planner.refresh()
    scheduler.run_ready(clock.now)
    occurrence = Occurrence.objects.get(task=task)
    assert occurrence.status == "skipped" and occurrence.reason == "skipped: the definition is disabled"
    assert occurrence.attempts == 0 and not Attempt.objects.exists()


def test_a_manual_run_of_a_disabled_definition_runs(clock, no_seed_definitions):
    task = make_definition("paused", every=60, enabled=False)
    occurrence = trigger(task, clock)
    scheduler = make_scheduler(clock)
    scheduler.planner.refresh()
    scheduler.run_ready(clock.now)
    occurrence.refresh_from_db()
    assert occurrence.status == "succeeded"


def test_a_result_is_not_recorded_when_the_claim_was_reaped_meanwhile(clock, no_seed_definitions):
    occurrence = trigger(make_definition("publisher", every=60), clock)
    scheduler = make_scheduler(clock)
    scheduler.planner.refresh()
    [claimed] = store.claim_ready(
        now=clock.now, session=scheduler.session, scheduler="test", lease=timedelta(seconds=1), long_running=False
    )
    # Another scheduler decides this one is dead and reaps the claim.
    reaper = make_scheduler(clock, instance_id="reaper")
    reaper.planner.refresh()
    assert reaper.reap(clock.advance(seconds=5)) == 1
    Runner(session=scheduler.session, clock=clock).run(claimed, scheduler.planner.definitions.get(claimed.task_id))
    occurrence.refresh_from_db()
    assert occurrence.status == "failed" and "presumed dead" in occurrence.reason
    assert not events_of(occurrence).exists()  # the late run's work rolled back


def test_a_failure_is_not_recorded_either_when_the_claim_was_reaped(clock, no_seed_definitions):
    occurrence = trigger(make_definition("failing", "test.fail", every=60), clock)
    scheduler = make_scheduler(clock)
    scheduler.planner.refresh()
    [claimed] = store.claim_ready(
        now=clock.now, session=scheduler.session, scheduler="test", lease=timedelta(seconds=1), long_running=False
    )
    reaper = make_scheduler(clock, instance_id="reaper")
    reaper.reap(clock.advance(seconds=5))
    Runner(session=scheduler.session, clock=clock).run(claimed, None)
    assert Attempt.objects.filter(occurrence=occurrence).count() == 1  # the reaper's, not a second one


def test_a_jobs_except_exception_cannot_swallow_its_timeout(clock, no_seed_definitions):
    task = make_definition("stubborn", "test.swallow", every=3600, kwargs={"seconds": 30}, timeout_seconds=1)
    occurrence = trigger(task, clock)
    scheduler = make_scheduler(clock)
    scheduler.planner.refresh()
    scheduler.run_ready(clock.now)
    occurrence.refresh_from_db()
    assert (occurrence.status, occurrence.reason) == ("failed", "timed out after 1 s")


@pytest.mark.parametrize("raised, error", [("exit", "SystemExit: 3"), ("interrupt", "KeyboardInterrupt")])
def test_system_exit_and_keyboard_interrupt_from_a_job_are_recorded_failures(clock, no_seed_definitions, raised, error):
    exiting = trigger(make_definition("exiting", "test.exit", every=60, kwargs={"raise": raised}), clock)
    after = trigger(make_definition("after", every=60), clock)
    scheduler = make_scheduler(clock)
    scheduler.planner.refresh()
    assert scheduler.run_ready(clock.now) == 2  # this thread lived on and ran the next one
    exiting.refresh_from_db()
    assert (exiting.status, exiting.reason) == ("failed", error)
    assert Occurrence.objects.get(id=after.id).status == "succeeded"


@pytest.mark.django_db(transaction=True)
def test_a_connection_lost_before_the_commit_is_not_the_jobs_failure(clock, no_seed_definitions, caplog):
    occurrence = trigger(make_definition("unlucky", "test.lose_connection", every=3600, max_retries=0), clock)
    scheduler = make_scheduler(clock)
    scheduler.planner.refresh()
    # The first run loses its connection before the commit and is released; the second succeeds.
    assert scheduler.run_ready(clock.now) == 2
    occurrence.refresh_from_db()
    assert (occurrence.status, occurrence.attempts) == ("succeeded", 1)
    assert list(Attempt.objects.values_list("number", "status")) == [(1, "succeeded")]
    assert events_of(occurrence).count() == 1  # the first run's event rolled back with it
    actions = [getattr(r, "action", None) for r in caplog.records]
    assert "run_interrupted" in actions and "occurrence_released" in actions and "occurrence_failed" not in actions


@pytest.mark.django_db(transaction=True)
@pytest.mark.parametrize("fail, status", [(False, "succeeded"), (True, "failed")])
def test_a_job_that_manages_its_own_transactions_keeps_what_it_committed(clock, no_seed_definitions, fail, status):
    task = make_definition("own", "test.own_transactions", every=3600, kwargs={"fail": fail})
    occurrence = trigger(task, clock)
    scheduler = make_scheduler(clock)
    scheduler.planner.refresh()
    scheduler.run_ready(clock.now)
    occurrence.refresh_from_db()
    assert occurrence.status == status
    assert events_of(occurrence).count() == 1
    assert list(Attempt.objects.values_list("number", "status")) == [(1, status)]


# Faults that are not the job's: settled at once, not left running for the reaper.


def fail_once(monkeypatch, target, name, error):
    """Make target.name raise error the first time it is called, then work as before."""
    original = getattr(target, name)
    calls = []

    def failing_once(*args, **kwargs):
        calls.append(args)
        if len(calls) == 1:
            raise error
        return original(*args, **kwargs)

    monkeypatch.setattr(target, name, failing_once)
    return calls


def actions(caplog):
    return [getattr(record, "action", None) for record in caplog.records]


@pytest.mark.parametrize(
    "policy, status, retry_at",
    [
        ({"max_retries": 1, "retry_intervals": [30]}, "scheduled", timedelta(seconds=30)),
        ({"max_retries": 0}, "failed", None),
    ],
)
def test_a_record_that_raises_records_the_attempt_with_its_error_and_applies_the_policy_at_once(
    clock, no_seed_definitions, monkeypatch, caplog, policy, status, retry_at
):
    occurrence = trigger(make_definition("failing", "test.fail", every=3600, **policy), clock)
    fail_once(monkeypatch, store, "record_attempt", RuntimeError("a bug in recording\nsecond line"))
    scheduler = make_scheduler(clock)
    scheduler.planner.refresh()

    assert scheduler.run_ready(clock.now, limit=1) == 1

    occurrence.refresh_from_db()
    assert (occurrence.status, occurrence.attempts, occurrence.lease_expires_at) == (status, 1, None)
    assert occurrence.reason == "RuntimeError: a bug in recording"
    if retry_at is not None:
        assert occurrence.run_after == clock.now + retry_at
    attempt = Attempt.objects.get(occurrence=occurrence)
    assert (attempt.number, attempt.status, attempt.error) == (1, "failed", "RuntimeError: a bug in recording")
    assert "a bug in recording" in attempt.traceback and "the sample job failed on purpose" in attempt.traceback
    [fault] = [record for record in caplog.records if getattr(record, "action", None) == "run_error"]
    assert (fault.levelname, fault.job_name, fault.occurrence, fault.attempt) == ("ERROR", "failing", occurrence.id, 1)
    assert (fault.instance, fault.error) == ("test", "RuntimeError: a bug in recording")
    assert fault.exc_info[0] is RuntimeError
    assert "worker_error" not in actions(caplog) and "lease_expired" not in actions(caplog)
    assert scheduler.reap(clock.advance(seconds=61)) == 0  # nothing was left for the reaper


def test_a_bug_of_the_runner_before_the_job_runs_is_its_attempts_failure_and_the_retry_runs_on_time(
    clock, no_seed_definitions, monkeypatch, caplog
):
    task = make_definition("unlucky", every=3600, max_retries=1, retry_intervals=[30])
    occurrence = trigger(task, clock)
    fail_once(monkeypatch, runner, "job_context", KeyError("kwargs"))
    scheduler = make_scheduler(clock)
    scheduler.planner.refresh()

    assert scheduler.run_ready(clock.now) == 1
    occurrence.refresh_from_db()
    assert (occurrence.status, occurrence.attempts, occurrence.reason) == ("scheduled", 1, "KeyError: 'kwargs'")
    assert scheduler.run_ready(clock.advance(seconds=29)) == 0
    assert scheduler.run_ready(clock.advance(seconds=1)) == 1

    occurrence.refresh_from_db()
    assert (occurrence.status, occurrence.attempts) == ("succeeded", 2)
    assert list(Attempt.objects.order_by("number").values_list("number", "status", "error")) == [
        (1, "failed", "KeyError: 'kwargs'"),
        (2, "succeeded", ""),
    ]
    assert events_of(occurrence).count() == 1
    assert actions(caplog).count("run_error") == 1 and "worker_error" not in actions(caplog)


@pytest.mark.django_db(transaction=True)  # the scheduler closes its connection after such a fault
def test_a_fault_after_the_outcome_was_recorded_is_raised_and_the_outcome_stands(
    clock, no_seed_definitions, monkeypatch, caplog
):
    occurrence = trigger(make_definition("publisher", every=60), clock)
    scheduler = make_scheduler(clock)
    scheduler.planner.refresh()
    log = observer.event

    def failing_after_success(occurrence, action, *args, **kwargs):
        if action == "occurrence_succeeded":
            raise RuntimeError("a bug in logging")
        return log(occurrence, action, *args, **kwargs)

    monkeypatch.setattr(observer, "event", failing_after_success)

    scheduler.run_ready(clock.now)

    occurrence.refresh_from_db()
    assert (occurrence.status, occurrence.attempts) == ("succeeded", 1)
    assert list(Attempt.objects.values_list("number", "status")) == [(1, "succeeded")]
    [fault] = [record for record in caplog.records if getattr(record, "action", None) == "worker_error"]
    assert fault.exc_info[0] is RuntimeError and fault.occurrence == occurrence.id


@pytest.mark.django_db(transaction=True)
def test_a_record_that_loses_a_conflict_is_released_uncounted_and_claimed_again_at_once(
    clock, no_seed_definitions, caplog
):
    occurrence = trigger(make_definition("contended", "test.conflict_at_record", every=3600, max_retries=0), clock)
    scheduler = make_scheduler(clock)
    scheduler.planner.refresh()

    # The first run's record fails with a real serialization failure; the second run succeeds.
    assert scheduler.run_ready(clock.now) == 2

    occurrence.refresh_from_db()
    assert (occurrence.status, occurrence.attempts) == ("succeeded", 1)
    assert list(Attempt.objects.values_list("number", "status")) == [(1, "succeeded")]
    assert events_of(occurrence).count() == 1  # the first run's event rolled back with its record
    [conflict] = [record for record in caplog.records if getattr(record, "action", None) == "database_conflict"]
    assert (conflict.levelname, conflict.occurrence, conflict.attempt) == ("WARNING", occurrence.id, 1)
    assert conflict.error == SERIALIZATION_FAILURE
    seen = actions(caplog)
    assert "occurrence_released" in seen and "occurrence_failed" not in seen and "run_error" not in seen


@pytest.mark.django_db(transaction=True)
def test_a_record_of_its_own_that_loses_a_conflict_is_written_again_after_a_short_delay(
    clock, no_seed_definitions, monkeypatch, caplog
):
    occurrence = trigger(make_definition("own", "test.own_transactions", every=3600), clock)
    record = store.record_attempt
    tries = []

    def record_after_a_concurrent_update(occurrence, **kwargs):
        tries.append(kwargs)
        if len(tries) == 1:
            changed_since_read(connection, "jobs_occurrence", occurrence.id)
        return record(occurrence, **kwargs)

    monkeypatch.setattr(store, "record_attempt", record_after_a_concurrent_update)
    scheduler = make_scheduler(clock)
    scheduler.planner.refresh()

    assert scheduler.run_ready(clock.now) == 1

    assert len(tries) == 2
    occurrence.refresh_from_db()
    assert (occurrence.status, occurrence.attempts) == ("succeeded", 1)
    assert list(Attempt.objects.values_list("number", "status")) == [(1, "succeeded")]
    [conflict] = [record for record in caplog.records if getattr(record, "action", None) == "database_conflict"]
    assert conflict.error == SERIALIZATION_FAILURE
    assert conflict.levelname == "WARNING" and 0.025 <= conflict.retry_in <= 0.05


@pytest.mark.django_db(transaction=True)
def test_an_atomic_job_that_holds_its_transaction_idle_past_the_bound_has_failed_and_is_not_run_again(
    clock, no_seed_definitions
):
    occurrence = trigger(make_definition("idler", "test.idle_in_transaction", every=60, kwargs={"seconds": 1}), clock)
    scheduler = make_scheduler(clock)
    scheduler.planner.refresh()
    options = dict(connection.settings_dict["OPTIONS"])
    try:
        bound_idle_transactions(timedelta(milliseconds=200))
        assert scheduler.run_ready(clock.now) == 1
        assert scheduler.run_ready(clock.now) == 0  # not given back to be run again
    finally:
        connection.settings_dict["OPTIONS"] = options
        connection.close()

    occurrence.refresh_from_db()
    assert (occurrence.status, occurrence.attempts) == ("failed", 1)
    assert occurrence.reason == (
        "its transaction sat idle too long and the database ended it: IdleInTransactionSessionTimeout "
        "(SQLSTATE 25P03): terminating connection due to idle-in-transaction timeout"
    )
