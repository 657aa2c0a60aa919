"""Leases (jobs.engine.leases): this process's heartbeat, the renewal of its claims, and the reaping of dead ones.

A lease of 60 s: renewed every 20 s, and a claim or an instance silent for the whole 60 s is dead.
"""

import dataclasses
import logging
import os
import socket
import uuid
from datetime import timedelta

import pytest
from django.db import DatabaseError

from jobs.engine import store
from jobs.engine.definitions import load_definition
from jobs.engine.leases import Leases
from jobs.engine.policy import Policy
from jobs.models import Attempt, Occurrence, SchedulerInstance
from tests.jobs.helpers import make_definition

pytestmark = pytest.mark.django_db

SESSION = uuid.UUID("00000000-0000-4000-8000-0000000000a1")
DEAD = uuid.UUID("00000000-0000-4000-8000-0000000000d1")
LEASE = timedelta(seconds=60)


@pytest.fixture
def leases():
    return Leases(session=SESSION, scheduler="alpha", lease=LEASE)


def claimed(task, at, *, session=SESSION, scheduler="alpha", attempts=1) -> Occurrence:
    """A claim made at `at` (its lease until at + 60 s), at attempt `attempts`."""
    return Occurrence.objects.create(
        task=task,
        job_name=task.name if task else "deleted-job",
        scheduled_for=at,
        run_after=at,
        status=Occurrence.Status.RUNNING,
        attempts=attempts,
        scheduler=scheduler,
        session=session,
        lease_expires_at=at + LEASE,
        started_at=at,
    )


def row(occurrence) -> Occurrence:
    return Occurrence.objects.get(id=occurrence.id)


def instance(session) -> SchedulerInstance:
    return SchedulerInstance.objects.get(session=session)


def test_register_writes_this_process_running_row(leases, clock):
    leases.register(clock.now)
    row = instance(SESSION)
    assert (row.instance_id, row.state, row.stopped_at) == ("alpha", "running", None)
    assert row.started_at == row.last_seen == clock.now
    assert (row.host, row.pid) == (socket.gethostname(), os.getpid())


def test_renewal_is_due_every_third_of_the_lease(leases, clock):
    assert leases.due(clock.now) and leases.next_renewal_at() is None  # never renewed: due at once
    leases.register(clock.now)
    assert leases.next_renewal_at() == clock.now + timedelta(seconds=20)
    assert not leases.due(clock.now + timedelta(seconds=19))
    assert leases.due(clock.now + timedelta(seconds=20))
    assert not leases.due(clock.now + timedelta(seconds=14), early=timedelta(seconds=5))
    assert leases.due(clock.now + timedelta(seconds=15), early=timedelta(seconds=5))


def test_renew_beats_the_instance_and_extends_only_this_sessions_leases(leases, clock):
    task = make_definition("leased", every=3600)
    leases.register(clock.now)
    SchedulerInstance.objects.mark_lost(clock.now + timedelta(seconds=61), silence=LEASE)
    assert instance(SESSION).state == "lost"
    mine = claimed(task, clock.now)
    not_listed = claimed(task, clock.now - timedelta(seconds=1))
    theirs = claimed(task, clock.now - timedelta(seconds=2), session=DEAD, scheduler="bravo")

    later = clock.now + timedelta(seconds=20)
    leases.renew(later, [mine.id, theirs.id])
    beat = instance(SESSION)
    assert (beat.state, beat.last_seen, beat.stopped_at) == ("running", later, None)  # only slow, not dead
    assert row(mine).lease_expires_at == later + timedelta(seconds=60)
    assert row(not_listed).lease_expires_at == clock.now - timedelta(seconds=1) + timedelta(seconds=60)
    assert row(theirs).lease_expires_at == clock.now - timedelta(seconds=2) + timedelta(seconds=60)
    assert leases.next_renewal_at() == later + timedelta(seconds=20)
    assert not leases.due(later + timedelta(seconds=19))


def test_reap_records_an_expired_claim_as_failed_and_retries_it_per_its_policy(leases, clock, caplog):
    task = make_definition("retried", every=3600, max_retries=2, retry_intervals=[30])
    at = clock.now - timedelta(seconds=61)
    expired = claimed(task, at, session=DEAD, scheduler="bravo")
    alive = claimed(task, clock.now - timedelta(seconds=30), session=SESSION)
    with caplog.at_level(logging.WARNING, logger="jobs.engine.observer"):
        assert leases.reap(clock.now, {}) == 1

    error = (
        f"lease expired at {(at + LEASE).isoformat()}: scheduler bravo (session {DEAD}) "
        "stopped renewing it and is presumed dead"
    )
    stored = row(expired)
    assert (stored.status, stored.attempts, stored.reason, stored.lease_expires_at) == ("scheduled", 1, error, None)
    assert stored.run_after == clock.now + timedelta(seconds=30)
    attempt = Attempt.objects.get()
    assert (attempt.occurrence_id, attempt.number, attempt.status, attempt.scheduler, attempt.error) == (
        expired.id,
        1,
        "failed",
        "bravo",
        error,
    )
    assert (attempt.started_at, attempt.finished_at) == (at, clock.now)
    assert (row(alive).status, row(alive).session) == ("running", SESSION)
    [event] = [r for r in caplog.records if getattr(r, "action", None) == "lease_expired"]
    assert (event.occurrence, event.status, event.levelno) == (expired.id, "scheduled", logging.WARNING)


def test_reap_fails_for_good_a_claim_with_no_retry_left(leases, clock):
    task = make_definition("exhausted", every=3600, max_retries=2)
    expired = claimed(task, clock.now - timedelta(minutes=5), session=DEAD, attempts=3)
    assert leases.reap(clock.now, {}) == 1
    stored = row(expired)
    assert (stored.status, stored.attempts, stored.finished_at) == ("failed", 3, clock.now)
    assert list(Attempt.objects.values_list("number", "status")) == [(3, "failed")]


def test_reap_follows_the_definition_the_scheduler_has_loaded(leases, clock):
    task = make_definition("no-retries-in-the-table", every=3600)
    expired = claimed(task, clock.now - timedelta(minutes=5), session=DEAD)
    loaded = dataclasses.replace(load_definition(task.id), policy=Policy(retries=1, retry_intervals=(10,)))
    assert leases.reap(clock.now, {task.id: loaded}) == 1
    assert (row(expired).status, row(expired).run_after) == ("scheduled", clock.now + timedelta(seconds=10))


def test_reap_fails_for_good_an_expired_claim_of_a_deleted_definition(leases, clock):
    expired = claimed(None, clock.now - timedelta(minutes=5), session=DEAD)
    assert leases.reap(clock.now, {}) == 1
    assert (row(expired).status, row(expired).attempts) == ("failed", 1)


def test_reap_leaves_a_claim_until_its_lease_has_expired(leases, clock):
    task = make_definition("just-in-time", every=3600)
    claim = claimed(task, clock.now - timedelta(seconds=60))  # lease until now
    assert leases.reap(clock.now, {}) == 0
    assert row(claim).status == "running"
    assert leases.reap(clock.now + timedelta(microseconds=1), {}) == 1
    assert row(claim).status == "failed"


def test_reap_marks_the_instances_silent_for_a_whole_lease_lost(leases, clock, caplog):
    SchedulerInstance.objects.register(DEAD, "bravo", clock.now - timedelta(seconds=61))
    edge = uuid.UUID("00000000-0000-4000-8000-0000000000e1")
    SchedulerInstance.objects.register(edge, "charlie", clock.now - timedelta(seconds=60))
    leases.register(clock.now - timedelta(seconds=10))
    with caplog.at_level(logging.WARNING, logger="jobs.engine.leases"):
        assert leases.reap(clock.now, {}) == 0
    dead = instance(DEAD)
    assert (dead.state, dead.stopped_at) == ("lost", clock.now - timedelta(seconds=61))
    assert (instance(edge).state, instance(SESSION).state) == ("running", "running")
    [event] = [r for r in caplog.records if getattr(r, "action", None) == "instances_lost"]
    assert event.count == 1


def test_a_reaped_claim_is_no_longer_its_schedulers(leases, clock):
    """The dead scheduler was only slow: its late record finds the claim gone and writes nothing."""
    task = make_definition("slow", every=3600)
    at = clock.now - timedelta(minutes=5)
    expired = claimed(task, at, session=DEAD, scheduler="bravo")
    assert leases.reap(clock.now, {}) == 1
    with pytest.raises(store.LeaseLost):
        store.record_attempt(expired, session=DEAD, started_at=at, now=clock.now + timedelta(seconds=1))
    assert Attempt.objects.count() == 1 and row(expired).status == "failed"


def test_retire_says_this_instance_stopped_on_purpose(leases, clock):
    leases.register(clock.now)
    leases.retire(clock.now + timedelta(seconds=5))
    row = instance(SESSION)
    assert (row.state, row.stopped_at, row.last_seen) == (
        "stopped",
        clock.now + timedelta(seconds=5),
        clock.now + timedelta(seconds=5),
    )


def test_retire_never_raises_for_a_database_error(leases, clock, monkeypatch):
    leases.register(clock.now)

    def unreachable(session, now):
        raise DatabaseError("the database went away")

    monkeypatch.setattr(SchedulerInstance.objects, "retire", unreachable)
    leases.retire(clock.now)  # the row simply stops beating, and is marked lost
    assert instance(SESSION).state == "running"
