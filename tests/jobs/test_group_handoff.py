"""Rows a group locked and did not run are handed on: at once when it commits (GroupRunner.run_group,
store.announce_ready), and within a bound when its process stops inside it (kernel.db.bound_idle_transactions)."""

import json
import signal
import threading
from collections import Counter
from datetime import UTC, datetime, timedelta

import pytest
from django.db import connection, transaction

from bookworm_scheduler.kernel.db import bound_idle_transactions
from jobs.engine import store
from jobs.models import Attempt, Occurrence, Priority
from outbox.models import OutboxMessage
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


@pytest.mark.slow
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


def trigger(task, count=1):
    return [store.trigger(task, priority=Priority.NORMAL) for _ in range(count)]


def actions(process) -> list[str]:
    """The log actions a process wrote so far (LOG_FORMAT=json)."""
    lines = [line for line in process.written().splitlines() if line.startswith("{")]
    return [json.loads(line).get("action") for line in lines]


@pytest.mark.django_db(transaction=True)
def test_a_group_whose_transaction_the_database_cut_is_logged_rolled_back_and_the_scheduler_goes_on(
    clock, no_seed_definitions, tmp_path, caplog
):
    marker = tmp_path / "holding"
    scheduler = make_scheduler(clock)
    quick = make_definition("quick", "test.hold_once", every=3600)
    holder = make_definition("holder", "test.hold_once", every=3600, kwargs={"marker": str(marker), "seconds": 1})
    store.trigger(quick, now=clock.now, priority=Priority.NORMAL)
    scheduler.planner.refresh()
    assert scheduler.run_ready(clock.now) == 1  # seen quick: it joins a group
    scheduler.runner.group_seconds = 10.0
    grouped = [store.trigger(task, now=clock.now, priority=Priority.NORMAL) for task in (holder, quick)]
    options = dict(connection.settings_dict["OPTIONS"])
    try:
        bound_idle_transactions(timedelta(milliseconds=300))  # the holder waits 1 s in the group
        scheduler.runner.idle_bound = 0.3  # as runscheduler has both from the lease
        assert scheduler.run_group(clock.advance(seconds=1)) == (0, False)
    finally:
        connection.settings_dict["OPTIONS"] = options
        connection.close()

    # Cut while the holder ran (none of the group's runs had finished), at its first statement since.
    assert [(r.levelname, r.runs) for r in caplog.records if getattr(r, "action", "") == "transaction_cut"] == [
        ("ERROR", 0)
    ]
    assert statuses(grouped) == ["scheduled", "scheduled"]
    assert not Attempt.objects.filter(occurrence__in=grouped).exists()
    assert not OutboxMessage.objects.filter(body__occurrence__in=[o.id for o in grouped]).exists()
    # It goes on: the next group runs them (the holder waits only the first time).
    assert scheduler.run_group(clock.now) == (2, False)
    assert statuses(grouped) == ["succeeded", "succeeded"]


@pytest.mark.slow
@pytest.mark.django_db(transaction=True)
def test_a_scheduler_stopped_inside_a_group_loses_its_rows_to_another_within_the_bound_and_recovers(
    scheduler_processes, scheduler_env, no_seed_definitions, tmp_path
):
    marker = tmp_path / "holding"
    # A lease of 6 s: its transactions are cut after 4 s idle (two renewals), renewals every 2 s.
    env = dict(scheduler_env, SCHEDULER_LEASE_SECONDS="6", SCHEDULER_GROUP_MILLISECONDS="1000", LOG_FORMAT="json")
    victim = scheduler_processes("--concurrency", "1", env=env, instance_id="victim")
    quick = make_definition("quick", "test.hold_once", every=3600)
    [seen] = trigger(quick)
    wait_for(lambda: statuses([seen]) == ["succeeded"], timeout=30)
    # The slot's claim runs alone and commits; the next three run as one group, held open by the holder.
    holder = make_definition("holder", "test.hold_once", every=3600, kwargs={"marker": str(marker), "seconds": 3})
    with transaction.atomic():
        [alone, *grouped] = trigger(quick) + trigger(holder) + trigger(quick, 2)
    wait_for(marker.exists, timeout=30, interval=0.01)
    victim.process.send_signal(signal.SIGSTOP)
    try:
        held_since = datetime.fromtimestamp(marker.stat().st_mtime, UTC)  # about the group's last statement
        survivor = scheduler_processes(env=env, instance_id="survivor")
        wait_for(lambda: statuses(grouped) == ["succeeded"] * 3, timeout=30)
    finally:
        victim.process.send_signal(signal.SIGCONT)

    ran = Occurrence.objects.filter(id__in=[o.id for o in grouped])
    assert set(ran.values_list("scheduler", flat=True)) == {"survivor"}
    # Free once idle for the bound (4 s), claimed at the survivor's next wake-up (a renewal, every 2 s;
    # nothing announces a cut), with a second to spare for a loaded machine: not the whole pause.
    assert max(ran.values_list("started_at", flat=True)) - held_since < timedelta(seconds=7)
    wait_for(lambda: "transaction_cut" in actions(victim), timeout=30)
    survivor.terminate()
    [later] = trigger(quick)  # the victim carries on
    wait_for(lambda: statuses([later]) == ["succeeded"], timeout=30)
    assert Occurrence.objects.get(id=later.id).scheduler == "victim"
    assert victim.terminate() == 0, victim.written()[-4000:]

    everything = [seen, alone, *grouped, later]
    assert Counter(Attempt.objects.filter(occurrence__in=everything).values_list("occurrence", flat=True)) == {
        o.id: 1 for o in everything
    }
    assert Counter(
        OutboxMessage.objects.filter(body__occurrence__in=[o.id for o in everything]).values_list(
            "body__occurrence", flat=True
        )
    ) == {o.id: 1 for o in everything}
    assert Counter(actions(victim))["transaction_cut"] == 1
