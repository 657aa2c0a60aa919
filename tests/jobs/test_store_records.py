"""The occurrence store's contract, ended and deleted: what each operation promises, on both databases.

Every test here runs against PostgreSQL; those not marked postgresql_only run against SQLite too, in
a subprocess that test_the_contract_holds_on_sqlite_too (below) starts, for both files. The
postgresql_only ones test what SQLite has no form of: lock_ready and record_group (arrays, FOR
UPDATE SKIP LOCKED: the grouped runs are PostgreSQL's alone, Scheduler._groups), the row locks that
concurrent schedulers skip, the advisory lock prune takes (dialect.try_advisory_lock: always True on
SQLite) and NOTIFY.
"""

import os
import re
import subprocess
import sys
import uuid
from datetime import timedelta
from pathlib import Path

import pytest
from django.conf import settings

from bookworm_scheduler.kernel.dialect import advisory_lock
from jobs.engine import store
from jobs.engine.store import CancelRequested, LeaseLost
from jobs.models import Alert, Attempt, Occurrence, SchedulerInstance
from tests.conftest import ALLOW_SQLITE
from tests.jobs.store_helpers import (
    LEASE,
    OTHER,
    SESSION,
    another_transaction,
    claimed,
    finished,
    postgresql_only,
    row,
    scheduled,
)

pytestmark = pytest.mark.django_db


# Ended.


def test_record_attempt_success_is_succeeded_with_one_attempt_row(task, clock):
    occurrence = claimed(task, clock.now)
    end = clock.now + timedelta(seconds=2)
    store.record_attempt(occurrence, session=SESSION, started_at=clock.now, now=end)
    assert (occurrence.status, occurrence.finished_at, occurrence.lease_expires_at) == ("succeeded", end, None)
    stored = row(occurrence)
    assert (stored.status, stored.attempts, stored.reason, stored.lease_expires_at) == ("succeeded", 1, "", None)
    assert stored.finished_at == end
    attempt = Attempt.objects.get()
    assert (attempt.occurrence_id, attempt.number, attempt.status, attempt.scheduler) == (
        occurrence.id,
        1,
        "succeeded",
        "alpha",
    )
    assert (attempt.started_at, attempt.finished_at, attempt.duration) == (clock.now, end, timedelta(seconds=2))
    assert (attempt.error, attempt.traceback) == ("", "")


def test_record_attempt_failure_with_retry_at_is_scheduled_again_for_then(task, clock, settings):
    settings.ALERT_EMAILS = ["ops@example.com"]
    occurrence = claimed(task, clock.now)
    end = clock.now + timedelta(seconds=1)
    retry_at = clock.now + timedelta(seconds=30)
    store.record_attempt(
        occurrence, session=SESSION, started_at=clock.now, now=end, error="E", traceback="T", retry_at=retry_at
    )
    stored = row(occurrence)
    assert (stored.status, stored.attempts, stored.reason, stored.run_after) == ("scheduled", 1, "E", retry_at)
    assert (stored.finished_at, stored.lease_expires_at) == (None, None)
    attempt = Attempt.objects.get()
    assert (attempt.number, attempt.status, attempt.error, attempt.traceback) == (1, "failed", "E", "T")
    assert not Alert.objects.exists()


def test_a_retry_is_never_scheduled_before_the_occurrences_due_instant(task, clock):
    occurrence = claimed(task, clock.now)
    store.record_attempt(
        occurrence,
        session=SESSION,
        started_at=clock.now,
        now=clock.now,
        error="E",
        retry_at=clock.now - timedelta(seconds=10),
    )
    assert (row(occurrence).status, row(occurrence).run_after) == ("scheduled", clock.now)


def test_record_attempt_failure_without_retry_at_has_failed_and_writes_its_alert(task, clock, settings):
    settings.ALERT_EMAILS, settings.ALERT_WEBHOOK_URL = ["ops@example.com"], ""
    occurrence = claimed(task, clock.now)
    end = clock.now + timedelta(seconds=1)
    store.record_attempt(occurrence, session=SESSION, started_at=clock.now, now=end, error="E", traceback="T")
    stored = row(occurrence)
    assert (stored.status, stored.attempts, stored.reason, stored.finished_at) == ("failed", 1, "E", end)
    assert list(Attempt.objects.values_list("number", "status", "error")) == [(1, "failed", "E")]
    alert = Alert.objects.get()
    assert (alert.kind, alert.occurrence_id, alert.error, alert.email_status) == (
        "job_failed",
        occurrence.id,
        "E",
        "pending",
    )


def test_a_failure_writes_no_alert_while_no_channel_is_configured(task, clock, settings):
    settings.ALERT_EMAILS, settings.ALERT_WEBHOOK_URL = [], ""
    occurrence = claimed(task, clock.now)
    store.record_attempt(occurrence, session=SESSION, started_at=clock.now, now=clock.now, error="E")
    assert row(occurrence).status == "failed"
    assert not Alert.objects.exists()


def test_an_attempts_start_is_at_most_its_end(task, clock):
    occurrence = claimed(task, clock.now)
    store.record_attempt(occurrence, session=SESSION, started_at=clock.now + timedelta(seconds=5), now=clock.now)
    attempt = Attempt.objects.get()
    assert (attempt.started_at, attempt.finished_at, attempt.duration) == (clock.now, clock.now, timedelta(0))


@pytest.mark.parametrize("who", ["another session", "an earlier attempt", "after a take-over"])
def test_a_record_without_the_claim_raises_lease_lost_and_writes_nothing(task, clock, who, settings):
    settings.ALERT_EMAILS = ["ops@example.com"]
    occurrence = claimed(task, clock.now)
    session = SESSION
    if who == "another session":
        session = OTHER
    elif who == "an earlier attempt":
        occurrence.attempts = 0
    else:
        store.take_over(
            occurrence.id, handed_by=SESSION, attempt=1, session=OTHER, worker="w", lease=LEASE, now=clock.now
        )
    before = row(occurrence)
    with pytest.raises(LeaseLost):
        store.record_attempt(occurrence, session=session, started_at=clock.now, now=clock.now, error="E")
    after = row(occurrence)
    assert (after.status, after.attempts, after.session, after.lease_expires_at) == (
        "running",
        1,
        before.session,
        before.lease_expires_at,
    )
    assert not Attempt.objects.exists() and not Alert.objects.exists()


def test_release_goes_back_to_scheduled_without_counting_the_attempt(task, clock):
    occurrence = claimed(task, clock.now)
    store.release(occurrence, session=SESSION, reason="connection lost")
    assert (occurrence.status, occurrence.attempts) == ("scheduled", 0)
    stored = row(occurrence)
    assert (stored.status, stored.attempts, stored.reason, stored.lease_expires_at) == (
        "scheduled",
        0,
        "connection lost",
        None,
    )
    assert not Attempt.objects.exists()
    again = store.claim_one(occurrence.id, now=clock.now, session=OTHER, scheduler="beta", lease=LEASE)
    assert (again.attempts, again.session) == (1, OTHER)


@pytest.mark.parametrize("end, status", [(store.miss, "missed"), (store.skip, "skipped"), (store.expire, "expired")])
def test_miss_skip_and_expire_finish_without_counting_an_attempt(task, clock, end, status):
    occurrence = claimed(task, clock.now)
    later = clock.now + timedelta(seconds=1)
    end(occurrence, session=SESSION, now=later, reason="why")
    stored = row(occurrence)
    assert (stored.status, stored.attempts, stored.reason, stored.finished_at, stored.lease_expires_at) == (
        status,
        0,
        "why",
        later,
        None,
    )
    assert not Attempt.objects.exists()


@pytest.mark.parametrize("name", ["release", "miss", "skip"])
def test_release_miss_and_skip_without_the_claim_raise_lease_lost(task, clock, name):
    occurrence = claimed(task, clock.now)
    kwargs = {"reason": "why"} if name == "release" else {"reason": "why", "now": clock.now}
    with pytest.raises(LeaseLost):
        getattr(store, name)(occurrence, session=OTHER, **kwargs)
    stored = row(occurrence)
    assert (stored.status, stored.attempts, stored.session) == ("running", 1, SESSION)


def test_cancel_skips_a_scheduled_occurrence(task, clock):
    occurrence = scheduled(task, clock.now + timedelta(minutes=5))
    assert store.cancel(occurrence, by="alice", now=clock.now) == "cancelled"
    stored = row(occurrence)
    assert (stored.status, stored.reason, stored.finished_at, stored.attempts) == (
        "skipped",
        "cancelled by alice",
        clock.now,
        0,
    )


def test_cancel_of_a_running_occurrence_records_the_request_once(task, clock):
    occurrence = claimed(task, clock.now)
    assert store.cancel(occurrence, by="alice", now=clock.now) == "requested"
    assert not store.cancel(occurrence, by="bob", now=clock.now + timedelta(seconds=1))
    stored = row(occurrence)
    assert (stored.status, stored.cancel_requested_by, stored.cancel_requested_at) == ("running", "alice", clock.now)
    assert store.cancel_requested(occurrence.id) is True


@pytest.mark.parametrize("state", ["succeeded", "failed"])
def test_cancel_of_a_finished_occurrence_does_nothing(task, clock, state):
    occurrence = finished(task, clock.now, state)
    assert store.cancel(occurrence, by="alice", now=clock.now) == ""
    assert (row(occurrence).status, row(occurrence).reason, row(occurrence).cancel_requested_by) == (state, "", "")


@pytest.mark.parametrize("error", ["", "it failed"])
def test_a_record_after_a_cancel_request_raises_cancel_requested_and_writes_nothing(task, clock, error):
    occurrence = claimed(task, clock.now)
    store.cancel(occurrence, by="alice", now=clock.now)
    with pytest.raises(CancelRequested):
        store.record_attempt(
            occurrence, session=SESSION, started_at=clock.now, now=clock.now, error=error, retry_at=clock.now
        )
    assert (row(occurrence).status, Attempt.objects.count()) == ("running", 0)


def test_record_cancel_skips_the_claim_for_good_with_a_failed_attempt(task, clock):
    occurrence = claimed(task, clock.now)
    store.cancel(occurrence, by="alice", now=clock.now)
    store.record_cancel(occurrence, session=SESSION, started_at=clock.now, now=clock.now + timedelta(seconds=3))
    stored = row(occurrence)
    assert (stored.status, stored.reason, stored.attempts, stored.lease_expires_at) == (
        "skipped",
        "cancelled by alice while running",
        1,
        None,
    )
    (attempt,) = Attempt.objects.all()
    assert (attempt.status, attempt.error, attempt.duration) == (
        "failed",
        "cancelled by alice while running",
        timedelta(seconds=3),
    )
    assert occurrence.status == "skipped"


def test_record_cancel_without_a_request_or_the_claim_raises_lease_lost(task, clock):
    occurrence = claimed(task, clock.now)
    with pytest.raises(LeaseLost):
        store.record_cancel(occurrence, session=SESSION, started_at=clock.now, now=clock.now)
    store.cancel(occurrence, by="alice", now=clock.now)
    with pytest.raises(LeaseLost):
        store.record_cancel(occurrence, session=OTHER, started_at=clock.now, now=clock.now)
    assert (row(occurrence).status, Attempt.objects.count()) == ("running", 0)


def test_record_attempt_keeps_the_jobs_result_when_it_succeeds(task, clock):
    failing, succeeding = claimed(task, clock.now), claimed(task, clock.now + timedelta(seconds=1))
    store.record_attempt(failing, session=SESSION, started_at=clock.now, now=clock.now, error="E", result={"x": 1})
    store.record_attempt(succeeding, session=SESSION, started_at=clock.now, now=clock.now, result={"sent": [1, 2]})
    assert (row(failing).result, row(succeeding).result, succeeding.result) == (
        None,
        {"sent": [1, 2]},
        {"sent": [1, 2]},
    )


# Deleted.


def test_prune_deletes_only_finished_occurrences_older_than_the_cutoff_with_their_attempts(task, clock):
    old = clock.now - timedelta(days=8)
    doomed = claimed(task, old)
    store.record_attempt(doomed, session=SESSION, started_at=old, now=old)
    missed = finished(task, old - timedelta(minutes=1), "missed")
    recent = claimed(task, clock.now - timedelta(days=6))
    store.record_attempt(recent, session=SESSION, started_at=recent.started_at, now=recent.started_at)
    waiting = scheduled(task, old - timedelta(minutes=2))
    running = claimed(task, old - timedelta(minutes=3))
    assert store.prune(clock.now, keep=timedelta(days=7), batch=10, batches=3) == (2, False)
    assert set(Occurrence.objects.values_list("id", flat=True)) == {recent.id, waiting.id, running.id}
    assert list(Attempt.objects.values_list("occurrence_id", flat=True)) == [recent.id]
    assert not Occurrence.objects.filter(id=missed.id).exists()


def test_prune_deletes_at_most_batches_of_batch_and_says_whether_more_are_left(task, clock):
    for n in range(5):
        finished(task, clock.now - timedelta(days=30, minutes=n), "succeeded")
    assert store.prune(clock.now, keep=timedelta(days=7), batch=2, batches=2) == (4, True)
    assert store.prune(clock.now, keep=timedelta(days=7), batch=2, batches=2) == (1, False)
    assert not Occurrence.objects.exists()


def test_prune_keeps_the_alerts_of_the_occurrences_it_deletes(task, clock, settings):
    settings.ALERT_EMAILS = ["ops@example.com"]
    old = clock.now - timedelta(days=8)
    occurrence = claimed(task, old)
    store.record_attempt(occurrence, session=SESSION, started_at=old, now=old, error="E")
    assert store.prune(clock.now, keep=timedelta(days=7), batch=10, batches=1) == (1, False)
    assert list(Alert.objects.values_list("occurrence_id", "job_name", "error")) == [(None, "store-contract", "E")]


def test_prune_unlinks_the_follow_ups_of_the_occurrences_it_deletes(task, clock):
    old = clock.now - timedelta(days=8)
    parent = finished(task, old, "succeeded")
    child = scheduled(task, old + timedelta(seconds=1), status="succeeded", finished_at=clock.now, parent=parent)
    assert store.prune(clock.now, keep=timedelta(days=7), batch=10, batches=1) == (1, False)
    assert (row(child).parent_id, Occurrence.objects.filter(id=parent.id).exists()) == (None, False)


def test_prune_deletes_the_rows_of_instances_stopped_over_a_day_ago(db, clock):
    ago = clock.now - timedelta(days=2)
    for session, state in [(SESSION, "stopped"), (OTHER, "lost")]:
        SchedulerInstance.objects.register(session, f"old-{state}", ago)
        SchedulerInstance.objects.filter(session=session).update(state=state)
    running = uuid.UUID("00000000-0000-4000-8000-00000000000c")
    SchedulerInstance.objects.register(running, "silent-but-running", ago)
    recent = uuid.UUID("00000000-0000-4000-8000-00000000000d")
    SchedulerInstance.objects.register(recent, "recently-stopped", clock.now)
    SchedulerInstance.objects.retire(recent, clock.now - timedelta(hours=1))
    assert store.prune(clock.now, keep=timedelta(days=7), batch=10, batches=1) == (0, False)
    assert set(SchedulerInstance.objects.values_list("session", flat=True)) == {running, recent}


@postgresql_only
def test_prune_skips_while_another_scheduler_prunes(task, clock):
    finished(task, clock.now - timedelta(days=30), "succeeded")
    with another_transaction(lambda: advisory_lock("jobs.prune_history")):
        assert store.prune(clock.now, keep=timedelta(days=7), batch=10, batches=1) == (0, False)
    assert store.prune(clock.now, keep=timedelta(days=7), batch=10, batches=1) == (1, False)


@postgresql_only
@pytest.mark.django_db(transaction=True)
def test_prune_leaves_the_rows_another_transaction_holds_for_the_next_batch(task, clock):
    held = finished(task, clock.now - timedelta(days=30), "succeeded")
    free = finished(task, clock.now - timedelta(days=29), "succeeded")

    def lock():
        return list(Occurrence.objects.select_for_update().filter(id=held.id))

    with another_transaction(lock):
        assert store.prune(clock.now, keep=timedelta(days=7), batch=10, batches=1) == (1, False)
        assert list(Occurrence.objects.values_list("id", flat=True)) == [held.id]
    assert not Occurrence.objects.filter(id=free.id).exists()


# The same contract on SQLite.

# What the run on SQLite must report: every test of both files not marked postgresql_only passed.
CONTRACT_FILES = [__file__, str(Path(__file__).with_name("test_store_claims.py"))]
SQLITE_SUMMARY = {"passed": 53, "deselected": 12}


@pytest.mark.slow
@postgresql_only
def test_the_contract_holds_on_sqlite_too(tmp_path):
    env = dict(
        os.environ,
        DATABASE_URL=f"sqlite:///{tmp_path / 'db.sqlite3'}",
        TEST_DATABASE_NAME=str(tmp_path / "test.sqlite3"),
        DEBUG="1",
        **{ALLOW_SQLITE: "1"},
    )
    env.pop("PYTEST_ADDOPTS", None)  # this run's options (-m, say) are not the SQLite run's
    result = subprocess.run(
        [sys.executable, "-m", "pytest", "-q", "-p", "no:cacheprovider", "-m", "not postgresql_only", *CONTRACT_FILES],
        cwd=settings.BASE_DIR,
        env=env,
        capture_output=True,
        text=True,
        timeout=600,
    )
    output = result.stdout + result.stderr
    assert result.returncode == 0, output[-6000:]
    summary = result.stdout.strip().splitlines()[-1]
    assert {kind: int(count) for count, kind in re.findall(r"(\d+) (\w+)", summary)} == SQLITE_SUMMARY, summary
