from datetime import UTC, datetime, timedelta

import pytest
from django_celery_beat.models import ClockedSchedule, PeriodicTask

from jobs.engine import planning
from jobs.engine.planning import apply_misfire_policy
from jobs.models import MisfirePolicy, Occurrence, PlanningCursor, Priority
from tests.jobs.helpers import make_definition, make_scheduler

HOUR = timedelta(hours=1)
GRACE = timedelta(seconds=60)
# Three hourly instants that fell due while no scheduler ran, and the moment one came back.
LATE = [datetime(2026, 3, 1, hour, 0, tzinfo=UTC) for hour in (1, 2, 3)]
AFTER_DOWNTIME = datetime(2026, 3, 1, 3, 5, tzinfo=UTC)


def statuses(task):
    return [(o.scheduled_for, o.status) for o in Occurrence.objects.filter(task=task).order_by("scheduled_for")]


@pytest.mark.unit
def test_run_once_runs_only_the_latest_late_instant(clock):
    instants = [clock.now + HOUR * i for i in range(1, 4)]
    planned = apply_misfire_policy(
        instants, more_left=False, now=instants[-1] + timedelta(minutes=5), grace=GRACE, policy=MisfirePolicy.RUN_ONCE
    )
    assert [p.missed for p in planned] == [True, True, False]


@pytest.mark.unit
def test_run_once_runs_no_late_instant_when_one_is_on_time(clock):
    instants = [clock.now + HOUR * i for i in range(1, 4)]
    planned = apply_misfire_policy(
        instants, more_left=False, now=instants[-1] + timedelta(seconds=5), grace=GRACE, policy=MisfirePolicy.RUN_ONCE
    )
    assert [p.missed for p in planned] == [True, True, False]


@pytest.mark.unit
def test_run_once_defers_to_the_next_pass_when_instants_are_left(clock):
    instants = [clock.now + HOUR * i for i in range(1, 4)]
    planned = apply_misfire_policy(
        instants, more_left=True, now=instants[-1] + HOUR, grace=GRACE, policy=MisfirePolicy.RUN_ONCE
    )
    assert all(p.missed for p in planned)


@pytest.mark.unit
@pytest.mark.parametrize(
    "policy, missed",
    [
        (MisfirePolicy.SKIP, [True, True, True]),
        (MisfirePolicy.RUN_ONCE, [True, True, False]),
        (MisfirePolicy.RUN_ALL, [False, False, False]),
    ],
)
def test_the_misfire_policy_decides_which_late_instants_run(policy, missed):
    planned = apply_misfire_policy(LATE, more_left=False, now=AFTER_DOWNTIME, grace=GRACE, policy=policy)

    assert [(p.instant, p.missed) for p in planned] == list(zip(LATE, missed, strict=True))


@pytest.mark.unit
def test_an_instant_is_on_time_until_the_grace_period_has_passed():
    last = datetime(2026, 3, 1, 3, 0, tzinfo=UTC)

    def missed(now):
        return [
            p.missed
            for p in apply_misfire_policy(LATE, more_left=False, now=now, grace=GRACE, policy=MisfirePolicy.SKIP)
        ]

    assert missed(last + timedelta(seconds=60)) == [True, True, False]
    assert missed(last + timedelta(seconds=61)) == [True, True, True]


@pytest.mark.unit
def test_no_instant_is_nothing_planned():
    assert (
        apply_misfire_policy([], more_left=False, now=AFTER_DOWNTIME, grace=GRACE, policy=MisfirePolicy.RUN_ONCE) == []
    )


@pytest.mark.django_db
@pytest.mark.parametrize(
    "policy, expected",
    [
        (MisfirePolicy.RUN_ONCE, ["missed"] * 4 + ["scheduled"]),
        (MisfirePolicy.SKIP, ["missed"] * 5),
        (MisfirePolicy.RUN_ALL, ["scheduled"] * 5),
    ],
)
def test_after_downtime_the_misfire_policy_decides_what_runs(clock, no_seed_definitions, policy, expected):
    start = clock.now
    task = make_definition("hourly", cron="0 * * * *", planned_through=start, misfire_policy=policy)
    scheduler = make_scheduler(clock)
    scheduler.planner.refresh()
    scheduler.planner.plan(clock.set(start + 5 * HOUR + timedelta(minutes=10)))
    assert statuses(task) == [(start + HOUR * i, s) for i, s in enumerate(expected, 1)]
    missed = Occurrence.objects.filter(task=task, status="missed").first()
    if missed:
        assert "missed" in missed.reason and missed.finished_at == clock.now


@pytest.mark.django_db
def test_an_instant_within_the_grace_period_runs_on_time(clock, no_seed_definitions):
    task = make_definition("hourly", cron="0 * * * *", planned_through=clock.now)
    scheduler = make_scheduler(clock)
    scheduler.planner.refresh()
    scheduler.planner.plan(clock.advance(hours=1, seconds=30))
    assert statuses(task) == [(clock.now - timedelta(seconds=30), "scheduled")]


@pytest.mark.django_db
def test_a_burst_is_planned_a_batch_per_pass_the_highest_priority_first(clock, no_seed_definitions, monkeypatch):
    monkeypatch.setattr(planning, "PLAN_BATCH", 2)
    tasks = {
        name: make_definition(name, cron="0 * * * *", planned_through=clock.now, priority=priority)
        for name, priority in [("low", Priority.LOW), ("high", Priority.HIGH), ("normal", Priority.NORMAL)]
    }
    scheduler = make_scheduler(clock)
    scheduler.planner.refresh()
    clock.advance(hours=1)

    assert scheduler.planner.plan(clock.now) == 2
    assert set(Occurrence.objects.values_list("task__name", flat=True)) == {"high", "normal"}
    assert scheduler.planner.due(clock.now)  # the third is planned at the next pass
    assert scheduler.planner.plan(clock.now) == 1
    assert [len(statuses(task)) for task in tasks.values()] == [1, 1, 1]
    assert not scheduler.planner.due(clock.now)


@pytest.mark.django_db
def test_planning_twice_inserts_each_instant_once(clock, no_seed_definitions):
    task = make_definition("every-minute", cron="* * * * *", planned_through=clock.now)
    first, second = make_scheduler(clock), make_scheduler(clock)
    for scheduler in (first, second):
        scheduler.planner.refresh()
    clock.advance(minutes=3)
    first.planner.plan(clock.now)
    # The second scheduler's cache is stale; the cursor and the unique constraint keep it honest.
    PlanningCursor.objects.filter(task=task).update(planned_through=clock.now - timedelta(minutes=3))
    second.planner.plan(clock.now)
    assert len(statuses(task)) == 3


@pytest.mark.django_db
def test_a_one_off_definition_runs_once_and_is_disabled(clock, no_seed_definitions):
    task = make_definition("once", every=10, start_time=clock.now + timedelta(seconds=5))
    PeriodicTask.objects.filter(id=task.id).update(one_off=True)
    scheduler = make_scheduler(clock)
    scheduler.planner.refresh()
    scheduler.planner.plan(clock.advance(seconds=30))
    task.refresh_from_db()
    assert len(statuses(task)) == 1 and not task.enabled


@pytest.mark.django_db
def test_an_interval_definition_fires_on_its_grid(clock, no_seed_definitions):
    anchor = clock.now + timedelta(seconds=3)
    task = make_definition("every-10s", every=10, start_time=anchor)
    PlanningCursor.objects.filter(task=task).update(planned_through=clock.now)
    scheduler = make_scheduler(clock)
    scheduler.planner.refresh()
    assert scheduler.planner.next_due[task.id] == anchor
    scheduler.planner.plan(clock.advance(seconds=35))
    assert [s for s, _ in statuses(task)] == [anchor + timedelta(seconds=10 * i) for i in range(4)]


@pytest.mark.django_db
def test_a_clocked_one_off_definition_runs_once_at_its_time(clock, no_seed_definitions):
    at = clock.now + timedelta(seconds=30)
    task = PeriodicTask.objects.create(
        name="once", task="test.publish", clocked=ClockedSchedule.objects.create(clocked_time=at), one_off=True
    )
    scheduler = make_scheduler(clock)
    scheduler.planner.refresh()
    assert scheduler.planner.next_due[task.id] == at
    scheduler.planner.plan(clock.advance(seconds=31))
    scheduler.run_ready(clock.now)
    task.refresh_from_db()
    assert list(Occurrence.objects.values_list("scheduled_for", "status")) == [(at, "succeeded")]
    assert not task.enabled
