"""Follow-ups of one-off runs: created in the transaction that records their parent's end, so each runs once."""

from datetime import timedelta

import pytest
from django.db import transaction

from jobs import FollowUp, schedule
from jobs.engine import store
from jobs.engine.loop import Scheduler
from jobs.models import Attempt, Occurrence
from tests.jobs.helpers import make_scheduler, wait_for
from tests.jobs.store_helpers import SESSION, claim_ready

pytestmark = pytest.mark.django_db

EVERY_WHEN = [
    FollowUp("test.echo", when="succeeded", payload={"when": "succeeded"}),
    FollowUp("test.echo", when="failed", payload={"when": "failed"}),
    FollowUp("test.echo", when="cancelled", payload={"when": "cancelled"}),
    FollowUp("test.echo", when="finished", payload={"when": "finished"}),
]


def row(occurrence) -> Occurrence:
    return Occurrence.objects.get(id=occurrence.id)


def children(parent) -> list[Occurrence]:
    return list(Occurrence.objects.filter(parent=parent).order_by("id"))


def scheduler_of(clock):
    scheduler = make_scheduler(clock)
    scheduler.planner.refresh()
    return scheduler


def test_a_success_creates_the_succeeded_and_finished_follow_ups_which_see_their_parent(clock, no_seed_definitions):
    parent = schedule("test.echo", payload={"order_id": 3}, then=EVERY_WHEN, by="orders")
    scheduler = scheduler_of(clock)
    assert scheduler.run_ready(clock.now, limit=1) == 1  # the parent alone
    made = children(parent)
    assert [(c.job, c.payload, c.status, c.key, c.triggered_by) for c in made] == [
        ("test.echo", {"when": "succeeded"}, "scheduled", "", "orders"),
        ("test.echo", {"when": "finished"}, "scheduled", "", "orders"),
    ]
    assert made[0].run_after == row(parent).finished_at
    assert scheduler.run_ready(clock.now) == 2
    parent_seen = {"id": parent.id, "status": "succeeded", "result": row(parent).result}
    assert [row(c).result for c in made] == [
        {"payload": {"when": "succeeded"}, "attempt": 1, "parent": parent_seen},
        {"payload": {"when": "finished"}, "attempt": 1, "parent": parent_seen},
    ]
    assert Occurrence.objects.count() == 3  # follow-ups create none of their own


def test_a_failure_for_good_creates_the_failed_ones_and_a_retry_none(clock, no_seed_definitions):
    retried = schedule("test.retried", payload={"succeed_on": 2}, then=[FollowUp("test.echo", when="failed")])
    failing = schedule("test.not_json", then=EVERY_WHEN)
    assert scheduler_of(clock).run_ready(clock.now, limit=3) == 3  # failing once, retried twice
    assert row(retried).status == "succeeded" and children(retried) == []
    assert row(failing).status == "failed"
    assert [c.payload for c in children(failing)] == [{"when": "failed"}, {"when": "finished"}]


def test_a_cancel_creates_the_cancelled_ones_with_it(clock, no_seed_definitions):
    parent = schedule("test.echo", then=EVERY_WHEN)
    assert store.cancel(parent, by="alice", now=clock.now) == "cancelled"
    assert [(c.payload, c.run_after) for c in children(parent)] == [
        ({"when": "cancelled"}, clock.now),
        ({"when": "finished"}, clock.now),
    ]
    assert store.cancel(parent, by="alice", now=clock.now) == ""  # no second end, no second follow-up
    assert len(children(parent)) == 2


def test_a_running_runs_cancel_creates_the_cancelled_ones_when_it_is_recorded(clock, no_seed_definitions):
    parent = schedule("test.echo", then=EVERY_WHEN)
    (claimed,) = claim_ready(clock.now)
    assert store.cancel(parent, by="alice", now=clock.now) == "requested"
    assert children(parent) == []
    store.record_cancel(claimed, session=SESSION, started_at=clock.now, now=clock.now)
    assert row(parent).status == "skipped"
    assert [c.payload for c in children(parent)] == [{"when": "cancelled"}, {"when": "finished"}]


def test_an_expiry_creates_the_finished_ones(clock, no_seed_definitions):
    parent = schedule("test.echo", expires=timedelta(minutes=5), then=EVERY_WHEN)
    assert scheduler_of(clock).run_ready(clock.now, limit=1) == 1
    assert row(parent).status == "expired"
    assert [c.payload for c in children(parent)] == [{"when": "finished"}]


def test_a_parents_end_that_rolls_back_leaves_no_follow_up(clock, no_seed_definitions):
    parent = schedule("test.echo", then=EVERY_WHEN)
    (claimed,) = claim_ready(clock.now)
    with pytest.raises(RuntimeError), transaction.atomic():
        store.record_attempt(claimed, session=SESSION, started_at=clock.now, now=clock.now, result=1)
        assert len(children(parent)) == 2
        raise RuntimeError("the run's commit failed")
    assert (row(parent).status, children(parent)) == ("running", [])
    store.record_attempt(claimed, session=SESSION, started_at=clock.now, now=clock.now, result=1)
    assert len(children(parent)) == 2


def test_runs_of_a_group_create_their_follow_ups_in_the_groups_transaction(clock, no_seed_definitions):
    scheduler = Scheduler(
        instance_id="test",
        concurrency=2,
        lease=timedelta(seconds=60),
        grace=timedelta(seconds=60),
        clock=clock,
        group_seconds=1.0,
    )
    scheduler.planner.refresh()
    schedule("test.echo")
    scheduler.run_ready(clock.now)  # seen once alone: then quick enough for a group
    parents = [
        schedule("test.echo", payload={"n": n}, then=[FollowUp("test.echo", payload={"after": n})]) for n in (1, 2)
    ]
    assert scheduler.run_group(clock.now) == (2, False)
    assert [[c.payload for c in children(p)] for p in parents] == [[{"after": 1}], [{"after": 2}]]


@pytest.mark.slow
@pytest.mark.django_db(transaction=True)
def test_a_follow_up_whose_scheduler_is_killed_runs_once_on_another(scheduler_processes, scheduler_env):
    env = dict(scheduler_env, SCHEDULER_LEASE_SECONDS="3")
    victim = scheduler_processes(env=env, instance_id="victim")
    parent = schedule("test.echo", then=[FollowUp("test.nap", payload={"seconds": 60})])
    (child,) = wait_for(lambda: list(Occurrence.objects.filter(parent=parent, status="running")), timeout=30)
    assert row(parent).status == "succeeded"
    victim.kill()  # SIGKILL: its claim of the follow-up is left to expire
    scheduler_processes(env=env, instance_id="survivor")
    wait_for(lambda: row(child).status == "succeeded", timeout=30)
    assert (row(child).attempts, row(child).scheduler, row(child).result) == (
        2,
        "survivor",
        {"parent_status": "succeeded"},
    )
    assert list(Attempt.objects.filter(occurrence=child).order_by("number").values_list("status", flat=True)) == [
        "failed",
        "succeeded",
    ]
    assert Occurrence.objects.filter(parent=parent).count() == 1
