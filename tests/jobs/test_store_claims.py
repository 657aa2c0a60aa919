"""The occurrence store's contract, made scheduled and claimed: what each operation promises, on both databases.

The tests not marked postgresql_only run against SQLite too (see test_store_records.py).
"""

import uuid
from dataclasses import replace
from datetime import UTC, datetime, timedelta

import pytest
from django.db import connection, transaction

from jobs.engine import oneoff_store, sql, store
from jobs.engine.store import LeaseLost
from jobs.models import Alert, Attempt, Occurrence, Priority
from tests.jobs.helpers import woken_by_notify
from tests.jobs.store_helpers import (
    LEASE,
    OTHER,
    SESSION,
    another_transaction,
    claim_ready,
    claimed,
    finished,
    postgresql_only,
    row,
    scheduled,
)

pytestmark = pytest.mark.django_db


# Made scheduled.


def test_trigger_makes_a_manual_occurrence_due_now(task, clock):
    occurrence = store.trigger(task, priority=Priority.HIGH, by="x" * 200, now=clock.now)
    stored = row(occurrence)
    assert (stored.status, stored.manual, stored.priority, stored.attempts) == ("scheduled", True, 2, 0)
    assert stored.scheduled_for == stored.run_after == clock.now
    assert stored.triggered_by == "x" * 150 and stored.job_name == "store-contract"


def test_trigger_claimed_is_running_for_its_session_in_the_same_insert(task, clock):
    occurrence = store.trigger_claimed(
        task, priority=Priority.NORMAL, by="beat", session=SESSION, scheduler="worker-1", lease=LEASE, now=clock.now
    )
    stored = row(occurrence)
    assert (stored.status, stored.attempts, stored.scheduler, stored.session) == ("running", 1, "worker-1", SESSION)
    assert stored.lease_expires_at == clock.now + timedelta(seconds=60)
    assert stored.started_at == stored.scheduled_for == clock.now and stored.manual


def test_a_one_off_insert_is_scheduled_and_a_held_key_gives_its_live_run(db, clock):
    run = oneoff_store.NewRun("test.echo", {"n": 1}, "k", Priority.HIGH, clock.now)
    ((first, new),) = oneoff_store.insert([run], by="a", now=clock.now)
    (again, again_new), (other, other_new) = oneoff_store.insert([run, replace(run, key="")], by="b", now=clock.now)
    assert (new, again_new, other_new, again.id, other.key) == (True, False, True, first.id, "")
    stored = row(first)
    assert (stored.status, stored.job, stored.task_id, stored.payload, stored.priority) == (
        "scheduled",
        "test.echo",
        None,
        {"n": 1},
        2,
    )
    assert (claim_ready(clock.now)[0].payload, Occurrence.objects.count()) == ({"n": 1}, 2)


# Claimed.


def test_next_ready_at_is_the_earliest_run_after_of_a_scheduled_one(task, clock):
    assert store.next_ready_at() is None
    claimed(task, clock.now - timedelta(minutes=10))
    finished(task, clock.now - timedelta(minutes=5), "succeeded")
    scheduled(task, clock.now + timedelta(minutes=3))
    scheduled(task, clock.now + timedelta(minutes=1))
    assert store.next_ready_at() == clock.now + timedelta(minutes=1)


def test_a_claim_moves_a_ready_occurrence_to_running_with_a_lease_and_counts_the_attempt(task, clock):
    occurrence = scheduled(task, clock.now - timedelta(seconds=5))
    [claim] = claim_ready(clock.now)
    assert claim.id == occurrence.id
    for got in (claim, row(occurrence)):
        assert (got.status, got.attempts, got.scheduler, got.session) == ("running", 1, "alpha", SESSION)
        assert got.lease_expires_at == clock.now + timedelta(seconds=60)
        assert got.started_at == clock.now
    assert not Attempt.objects.exists()


def test_an_occurrence_not_yet_due_is_not_claimed(task, clock):
    later = scheduled(task, clock.now + timedelta(microseconds=1))
    assert claim_ready(clock.now) == []
    assert (row(later).status, row(later).attempts) == ("scheduled", 0)
    due = scheduled(task, clock.now)  # run_after == now: due
    assert [o.id for o in claim_ready(clock.now)] == [due.id]


def test_claims_take_the_highest_priority_first_then_the_oldest(task, clock):
    low_oldest = scheduled(task, clock.now - timedelta(minutes=9), priority=Priority.LOW)
    normal_old = scheduled(task, clock.now - timedelta(minutes=8))
    normal_new = scheduled(task, clock.now - timedelta(minutes=1))
    high_newest = scheduled(task, clock.now, priority=Priority.HIGH)
    claims = claim_ready(clock.now, limit=3)
    assert [o.id for o in claims] == [high_newest.id, normal_old.id, normal_new.id]
    assert row(low_oldest).status == "scheduled"


def test_long_running_occurrences_are_claimed_only_by_a_long_running_claim(task, clock):
    long = scheduled(task, clock.now - timedelta(minutes=2), priority=Priority.LONG_RUNNING)
    ordinary = scheduled(task, clock.now - timedelta(minutes=1), priority=Priority.LOW)
    assert [o.id for o in claim_ready(clock.now)] == [ordinary.id]
    assert [o.id for o in claim_ready(clock.now, long_running=True)] == [long.id]


def test_only_scheduled_occurrences_are_claimed(task, clock):
    running = claimed(task, clock.now - timedelta(minutes=3), session=OTHER)
    for n, status in enumerate(Occurrence.FINISHED):
        finished(task, clock.now - timedelta(minutes=10 + n), status)
    assert claim_ready(clock.now) == []
    assert row(running).session == OTHER and row(running).attempts == 1


def test_a_retry_claimed_counts_its_second_attempt(task, clock):
    occurrence = claimed(task, clock.now - timedelta(minutes=1))
    store.record_attempt(
        occurrence, session=SESSION, started_at=occurrence.started_at, now=clock.now, error="E", retry_at=clock.now
    )
    [retry] = claim_ready(clock.now)
    assert (retry.id, retry.status, retry.attempts) == (occurrence.id, "running", 2)


def test_claim_one_claims_a_ready_occurrence(task, clock):
    occurrence = scheduled(task, clock.now)
    claim = store.claim_one(occurrence.id, now=clock.now, session=SESSION, scheduler="alpha", lease=LEASE)
    assert (claim.status, claim.attempts, claim.session, claim.scheduler) == ("running", 1, SESSION, "alpha")
    assert claim.lease_expires_at == clock.now + timedelta(seconds=60)


@pytest.mark.parametrize("state", ["not due", "running", "succeeded", "skipped"])
def test_claim_one_of_an_occurrence_that_is_not_ready_is_none(task, clock, state):
    if state == "not due":
        occurrence = scheduled(task, clock.now + timedelta(seconds=1))
    elif state == "running":
        occurrence = claimed(task, clock.now, session=OTHER)
    else:
        occurrence = finished(task, clock.now, state)
    before = row(occurrence)
    assert store.claim_one(occurrence.id, now=clock.now, session=SESSION, scheduler="beta", lease=LEASE) is None
    after = row(occurrence)
    assert (after.status, after.attempts, after.session) == (before.status, before.attempts, before.session)


@postgresql_only
@pytest.mark.django_db(transaction=True)
def test_a_claim_skips_the_rows_another_transaction_holds(task, clock):
    first = scheduled(task, clock.now - timedelta(minutes=3))
    second = scheduled(task, clock.now - timedelta(minutes=2))
    third = scheduled(task, clock.now - timedelta(minutes=1))
    with another_transaction(lambda: store.lock_ready(now=clock.now, limit=1)) as locked:
        assert [o.id for o in locked] == [first.id]
        assert [o.id for o in claim_ready(clock.now)] == [second.id, third.id]
    assert row(first).status == "scheduled"


# Locked for a group (PostgreSQL only).


@postgresql_only
def test_lock_ready_returns_the_ready_ordinary_occurrences_in_claim_order_unchanged(task, clock):
    low = scheduled(task, clock.now - timedelta(minutes=5), priority=Priority.LOW)
    normal = scheduled(task, clock.now - timedelta(minutes=4))
    high = scheduled(task, clock.now - timedelta(minutes=3), priority=Priority.HIGH)
    scheduled(task, clock.now - timedelta(minutes=2), priority=Priority.LONG_RUNNING)
    scheduled(task, clock.now + timedelta(minutes=1))
    with transaction.atomic():
        first = store.lock_ready(now=clock.now, limit=2)
        assert [o.id for o in first] == [high.id, normal.id]
        more = store.lock_ready(now=clock.now, limit=5, besides=[o.id for o in first])
        assert [o.id for o in more] == [low.id]
        assert store.lock_ready(now=clock.now, limit=5, besides=[high.id, normal.id, low.id]) == []
    assert {(o.status, o.attempts) for o in Occurrence.objects.all()} == {("scheduled", 0)}


@postgresql_only
def test_claim_locked_claims_in_memory_only(task, clock):
    scheduled(task, clock.now)
    with transaction.atomic():
        [occurrence] = store.lock_ready(now=clock.now, limit=1)
        store.claim_locked(occurrence, session=SESSION, scheduler="alpha", now=clock.now)
        assert (occurrence.status, occurrence.attempts, occurrence.session) == ("running", 1, SESSION)
        assert occurrence.started_at == clock.now and occurrence.scheduler == "alpha"
        stored = row(occurrence)
        assert (stored.status, stored.attempts, stored.session, stored.started_at) == ("scheduled", 0, None, None)


@postgresql_only
def test_record_group_writes_each_outcome_and_its_attempt(task, clock, settings):
    settings.ALERT_EMAILS, settings.ALERT_WEBHOOK_URL = ["ops@example.com"], ""
    due = clock.now - timedelta(minutes=1)
    ok, retried, failed = (scheduled(task, due - timedelta(seconds=n)) for n in (3, 2, 1))
    end = clock.now + timedelta(seconds=2)
    with transaction.atomic():
        locked = store.lock_ready(now=clock.now, limit=3)
        assert [o.id for o in locked] == [ok.id, retried.id, failed.id]
        for occurrence in locked:
            store.claim_locked(occurrence, session=SESSION, scheduler="alpha", now=clock.now)
        first, second, third = locked
        store.record_group(
            [
                (first, clock.now, end, "", "", None),
                (second, clock.now, end, "E2", "T2", end + timedelta(seconds=30)),
                (third, clock.now, end, "E3", "T3", None),
            ],
            session=SESSION,
            scheduler="alpha",
        )
    assert third.status == "failed" and third.lease_expires_at is None  # the instances as the rows now are
    got = {o.id: o for o in Occurrence.objects.all()}
    assert [(got[o.id].status, got[o.id].attempts, got[o.id].session, got[o.id].scheduler) for o in locked] == [
        ("succeeded", 1, SESSION, "alpha"),
        ("scheduled", 1, SESSION, "alpha"),
        ("failed", 1, SESSION, "alpha"),
    ]
    assert got[ok.id].finished_at == got[failed.id].finished_at == end and got[retried.id].finished_at is None
    assert got[retried.id].run_after == end + timedelta(seconds=30)
    assert [got[o.id].reason for o in locked] == ["", "E2", "E3"]
    attempts = Attempt.objects.order_by("occurrence_id")
    assert [(a.occurrence_id, a.number, a.status, a.scheduler, a.error, a.traceback) for a in attempts] == [
        (ok.id, 1, "succeeded", "alpha", "", ""),
        (retried.id, 1, "failed", "alpha", "E2", "T2"),
        (failed.id, 1, "failed", "alpha", "E3", "T3"),
    ]
    assert {(a.started_at, a.finished_at, a.duration) for a in attempts} == {(clock.now, end, timedelta(seconds=2))}
    assert list(Alert.objects.values_list("occurrence_id", "kind")) == [(failed.id, "job_failed")]


@postgresql_only
def test_record_group_raises_lease_lost_when_a_locked_row_moved_and_its_transaction_writes_nothing(task, clock):
    a = scheduled(task, clock.now - timedelta(seconds=2))
    b = scheduled(task, clock.now - timedelta(seconds=1))
    with pytest.raises(LeaseLost), transaction.atomic():
        locked = store.lock_ready(now=clock.now, limit=2)
        for occurrence in locked:
            store.claim_locked(occurrence, session=SESSION, scheduler="alpha", now=clock.now)
        assert store.cancel(b, by="alice", now=clock.now)  # the row moves (in this transaction: the lock is its)
        store.record_group(
            [(o, clock.now, clock.now, "", "", None) for o in locked], session=SESSION, scheduler="alpha"
        )
    assert [(row(o).status, row(o).attempts) for o in (a, b)] == [("scheduled", 0), ("scheduled", 0)]
    assert not Attempt.objects.exists()


# Taken over by a Celery worker.


def test_take_over_moves_the_claim_once(task, clock):
    occurrence = claimed(task, clock.now)
    later = clock.now + timedelta(seconds=3)
    taken = store.take_over(
        occurrence.id, handed_by=SESSION, attempt=1, session=OTHER, worker="worker-1", lease=LEASE, now=later
    )
    assert (taken.status, taken.session, taken.scheduler, taken.attempts) == ("running", OTHER, "worker-1", 1)
    assert taken.lease_expires_at == later + timedelta(seconds=60) and taken.started_at == later
    again = store.take_over(
        occurrence.id, handed_by=SESSION, attempt=1, session=uuid.uuid4(), worker="worker-2", lease=LEASE, now=later
    )
    assert again is None
    assert (row(occurrence).session, row(occurrence).scheduler) == (OTHER, "worker-1")


@pytest.mark.parametrize("handed_by, attempt", [(OTHER, 1), (SESSION, 2)])
def test_take_over_from_another_session_or_attempt_is_none(task, clock, handed_by, attempt):
    occurrence = claimed(task, clock.now)
    taken = store.take_over(
        occurrence.id,
        handed_by=handed_by,
        attempt=attempt,
        session=uuid.uuid4(),
        worker="w",
        lease=LEASE,
        now=clock.now,
    )
    assert taken is None
    assert (row(occurrence).session, row(occurrence).scheduler) == (SESSION, "alpha")


@postgresql_only
@pytest.mark.django_db(transaction=True)
def test_take_over_wakes_the_schedulers(task, clock):
    occurrence = claimed(task, clock.now)
    with woken_by_notify() as woken:
        store.take_over(
            occurrence.id, handed_by=SESSION, attempt=1, session=OTHER, worker="w", lease=LEASE, now=clock.now
        )
        assert woken.wait(10)


# Kept alive.


def test_renew_leases_extends_only_this_sessions_running_ones(task, clock):
    mine = claimed(task, clock.now - timedelta(minutes=3))
    theirs = claimed(task, clock.now - timedelta(minutes=2), session=OTHER)
    done = claimed(task, clock.now - timedelta(minutes=1))
    store.record_attempt(done, session=SESSION, started_at=done.started_at, now=clock.now)
    later = clock.now + timedelta(seconds=20)
    assert store.renew_leases([mine.id, theirs.id, done.id], session=SESSION, now=later, lease=LEASE) == 1
    assert row(mine).lease_expires_at == later + timedelta(seconds=60)
    assert row(theirs).lease_expires_at == clock.now - timedelta(minutes=2) + timedelta(seconds=60)
    assert row(done).lease_expires_at is None
    assert store.renew_leases([], session=SESSION, now=later, lease=LEASE) == 0


def test_expired_leases_finds_only_running_ones_whose_lease_expired(task, clock):
    expired = claimed(task, clock.now - timedelta(seconds=61))  # lease until now - 1 s
    claimed(task, clock.now - timedelta(seconds=60))  # lease until now: not expired yet
    scheduled(task, clock.now - timedelta(minutes=5))
    finished(task, clock.now - timedelta(minutes=6), "failed")
    with transaction.atomic():
        assert [o.id for o in store.expired_leases(clock.now)] == [expired.id]


def test_expired_leases_returns_at_most_limit(task, clock):
    for n in range(3):
        claimed(task, clock.now - timedelta(minutes=5 + n))
    with transaction.atomic():
        assert len(store.expired_leases(clock.now, limit=2)) == 2


@postgresql_only
@pytest.mark.django_db(transaction=True)
def test_expired_leases_skips_the_ones_another_reaper_holds(task, clock):
    first = claimed(task, clock.now - timedelta(minutes=5))
    second = claimed(task, clock.now - timedelta(minutes=4))
    with another_transaction(lambda: store.expired_leases(clock.now, limit=1)) as held:
        with transaction.atomic():
            mine = store.expired_leases(clock.now)
    assert {o.id for o in held} | {o.id for o in mine} == {first.id, second.id}
    assert len(held) == len(mine) == 1


def test_still_claimed_is_this_sessions_claim_at_this_attempt(task, clock):
    occurrence = claimed(task, clock.now)
    assert store.still_claimed(occurrence, SESSION)
    assert not store.still_claimed(occurrence, OTHER)
    store.take_over(occurrence.id, handed_by=SESSION, attempt=1, session=OTHER, worker="w", lease=LEASE, now=clock.now)
    assert not store.still_claimed(occurrence, SESSION)
    assert store.still_claimed(occurrence, OTHER)
    store.record_attempt(occurrence, session=OTHER, started_at=clock.now, now=clock.now, error="E", retry_at=clock.now)
    store.claim_one(occurrence.id, now=clock.now, session=OTHER, scheduler="w", lease=LEASE)
    assert not store.still_claimed(occurrence, OTHER)  # the instance says attempt 1; the row is at attempt 2


def test_attempt_recorded_says_whether_this_attempts_record_committed(task, clock):
    occurrence = claimed(task, clock.now)
    assert not store.attempt_recorded(occurrence)
    store.record_attempt(occurrence, session=SESSION, started_at=clock.now, now=clock.now + timedelta(seconds=1))
    assert store.attempt_recorded(occurrence)
    assert store.attempt_recorded(occurrence, started_at=clock.now)
    assert not store.attempt_recorded(occurrence, started_at=clock.now - timedelta(seconds=1))


@postgresql_only
@pytest.mark.parametrize(("long_running", "index"), [(False, "occ_ready"), (True, "occ_ready_long")])
def test_the_claims_generic_plan_reads_its_partial_index(long_running, index):
    # The scheduler prepares the claim; after five executions PostgreSQL may keep one generic plan for
    # any parameters. A partial index serves that plan only if its condition is in the statement's text.
    statement, _, _ = sql.claim(connection.alias, long_running)
    now = datetime(2030, 3, 1, 12, 0, tzinfo=UTC)
    params = ["running", "alpha", str(uuid.uuid4()), now + timedelta(minutes=1), now, now, 2]
    numbered = statement
    for n in range(1, len(params) + 1):
        numbered = numbered.replace("%s", f"${n}", 1)
    with transaction.atomic(), connection.cursor() as cursor:
        cursor.execute("SET LOCAL plan_cache_mode = force_generic_plan")
        cursor.execute("SET LOCAL enable_seqscan = off")  # an empty table: the index must be the only way
        cursor.execute(f"PREPARE generic_claim AS {numbered}")
        cursor.execute(f"EXPLAIN EXECUTE generic_claim({', '.join(['%s'] * len(params))})", params)
        plan = "\n".join(row[0] for row in cursor.fetchall())
        cursor.execute("DEALLOCATE generic_claim")
        transaction.set_rollback(True)
    assert f"Index Scan using {index} on jobs_occurrence" in plan, plan
