"""Rows a group locked and did not run are handed on at once (GroupRunner.run_group, store.announce_ready)."""

import threading
from datetime import timedelta

import pytest
from django.db import transaction

from jobs.engine import store
from jobs.models import Attempt, Occurrence, Priority
from tests.jobs.helpers import make_definition, make_scheduler, wait_for


def statuses(occurrences):
    return [Occurrence.objects.get(id=o.id).status for o in occurrences]


def running(scheduler):
    """The scheduler's loop in a thread of its own; the thread."""
    loop = threading.Thread(target=scheduler.run, kwargs={"shutdown_timeout": 10})
    loop.start()
    return loop


def stopped(*loops):
    for scheduler, _ in loops:
        scheduler.stop()
    for _, loop in loops:
        loop.join(20)
        assert not loop.is_alive()


@pytest.mark.django_db(transaction=True)
def test_the_rows_after_a_slow_job_start_at_once_on_an_idle_scheduler_when_the_group_commits(
    no_seed_definitions, tmp_path
):
    marker = tmp_path / "holding"
    quick = make_definition("quick", "test.hold_once", every=3600)
    holder = make_definition("holder", "test.hold_once", every=3600, kwargs={"marker": str(marker), "seconds": 3})
    slow = make_definition("slow", "test.sleep", every=3600, kwargs={"seconds": 2})
    first = make_scheduler(None, instance_id="first", concurrency=1)
    first.runner.group_seconds = 10.0  # the holder's wait must not end the group: what matters is what follows it
    loops = [(first, running(first))]
    try:
        [seen] = [store.trigger(quick, priority=Priority.NORMAL)]  # run once alone: then it joins a group
        wait_for(lambda: statuses([seen]) == ["succeeded"], timeout=20)
        # The slot's claim runs alone; the group locks the rest, holds open on the holder, runs one
        # more quick run, stops before the slow job and commits; this slot then runs the slow job.
        with transaction.atomic():
            claim = store.trigger(quick, priority=Priority.NORMAL)
            grouped = [store.trigger(holder, priority=Priority.NORMAL), store.trigger(quick, priority=Priority.NORMAL)]
            alone = store.trigger(slow, priority=Priority.NORMAL)
            after = [store.trigger(quick, priority=Priority.NORMAL) for _ in range(2)]
        wait_for(marker.exists, timeout=20)
        second = make_scheduler(None, instance_id="second", concurrency=2)
        loops.append((second, running(second)))  # idle: the rows after the slow job are locked

        wait_for(lambda: statuses(after) == ["succeeded"] * 2, timeout=30)
        assert statuses([claim, *grouped]) == ["succeeded"] * 3
        assert Occurrence.objects.get(id=alone.id).status in ("running", "succeeded")
    finally:
        stopped(*loops)

    # The group's commit came after its last run finished: the rows after the slow job started
    # within 100 ms of it, not at the next wake-up of either scheduler.
    committed_after = Attempt.objects.get(occurrence_id=grouped[-1].id).finished_at
    for occurrence in after:
        started = Attempt.objects.get(occurrence_id=occurrence.id).started_at
        assert started - committed_after <= timedelta(seconds=0.1), (occurrence.id, started - committed_after)
    assert Occurrence.objects.get(id=alone.id).status == "succeeded"
    assert Attempt.objects.filter(occurrence__in=[claim, *grouped, alone, *after]).count() == 6
