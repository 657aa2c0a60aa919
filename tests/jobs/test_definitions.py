import dataclasses
import threading
from datetime import UTC, datetime, timedelta

import pytest
from django.db import connection
from django_celery_beat.models import ClockedSchedule, CrontabSchedule, IntervalSchedule, PeriodicTask, SolarSchedule

from jobs.engine.definitions import (
    Cursor,
    Definition,
    Schedule,
    create_missing_definitions,
    describe_schedule,
    kwargs_of,
    load_definitions,
    schedule_zone,
)
from jobs.engine.policy import Policy
from jobs.engine.schedules import InvalidSchedule, next_instants
from jobs.models import JobPolicy, Priority

T0 = datetime(2026, 3, 1, 0, 0, tzinfo=UTC)
HOURLY = Schedule(kind="crontab", expression="0 * * * *", zone="UTC")


@pytest.mark.django_db
def test_migrate_creates_the_seed_definitions():
    clean_up = PeriodicTask.objects.select_related("crontab", "policy").get(name="CleanUpSentEmailJob")
    resend = PeriodicTask.objects.select_related("crontab", "policy").get(name="ResendErrorEmailJob")
    assert (clean_up.crontab.minute, clean_up.crontab.hour, clean_up.crontab.day_of_month) == ("0", "0", "*")
    assert (resend.crontab.minute, resend.crontab.hour) == ("0", "*")
    assert clean_up.policy.priority == Priority.NORMAL and resend.policy.priority == Priority.HIGH
    assert clean_up.enabled and resend.enabled


@pytest.mark.django_db
def test_an_existing_definition_is_never_overwritten():
    task = PeriodicTask.objects.get(name="ResendErrorEmailJob")
    task.crontab.minute = "15"
    task.crontab.save()
    task.enabled = False
    task.save()
    JobPolicy.objects.filter(task=task).update(priority=Priority.LOW)
    assert create_missing_definitions() == []
    task.refresh_from_db()
    assert task.crontab.minute == "15" and not task.enabled and task.policy.priority == Priority.LOW


@pytest.mark.django_db
def test_a_deleted_seed_definition_comes_back():
    PeriodicTask.objects.filter(name="CleanUpSentEmailJob").delete()
    assert create_missing_definitions() == ["CleanUpSentEmailJob"]


@pytest.mark.django_db(transaction=True)
def test_schedulers_starting_together_create_each_definition_once_without_error():
    PeriodicTask.objects.filter(name__in=["CleanUpSentEmailJob", "ResendErrorEmailJob"]).delete()
    start, errors, created = threading.Barrier(4), [], []

    def scheduler_start():
        try:
            start.wait(10)
            created.extend(create_missing_definitions())
        except Exception as error:  # the deadlock this guards against, or anything else
            errors.append(error)
        finally:
            connection.close()

    threads = [threading.Thread(target=scheduler_start) for _ in range(4)]
    for thread in threads:
        thread.start()
    for thread in threads:
        thread.join(30)
    assert errors == []
    assert sorted(created) == ["CleanUpSentEmailJob", "ResendErrorEmailJob"]
    assert PeriodicTask.objects.filter(name__in=created).count() == 2


@pytest.mark.django_db
def test_a_solar_schedule_is_refused_with_a_clear_reason():
    solar = SolarSchedule.objects.create(event="sunrise", latitude=52.5, longitude=13.4)
    task = PeriodicTask.objects.create(name="dawn", task="test.publish", solar=solar)
    with pytest.raises(InvalidSchedule, match="solar schedules are not supported"):
        Definition.from_task(task)
    definitions, invalid = load_definitions()
    assert task.id not in definitions and "solar" in invalid[task.id]


# A definition's values, read from unsaved rows: its schedule, its cursor, its expiry, its kwargs.


@pytest.mark.unit
def test_a_crontab_definition_fires_on_its_five_fields_in_its_zone():
    crontab = CrontabSchedule(
        id=1, minute="30", hour="2", day_of_month="*", month_of_year="*", day_of_week="1-5", timezone="Europe/Berlin"
    )
    task = PeriodicTask(name="weekdays", task="test.publish", crontab=crontab)

    schedule = Schedule.of(task)

    assert (describe_schedule(task), schedule_zone(task)) == ("30 2 * * 1-5", "Europe/Berlin")
    assert (schedule.kind, schedule.expression, schedule.zone) == ("crontab", "30 2 * * 1-5", "Europe/Berlin")
    # From Friday noon: Monday and Tuesday at 02:30 CEST.
    assert next_instants(schedule.instants_after(datetime(2026, 3, 27, 12, 0, tzinfo=UTC)), 2) == [
        datetime(2026, 3, 30, 0, 30, tzinfo=UTC),
        datetime(2026, 3, 31, 0, 30, tzinfo=UTC),
    ]


@pytest.mark.unit
def test_an_interval_definition_fires_on_a_grid_anchored_at_its_start_time():
    interval = IntervalSchedule(id=1, every=10, period=IntervalSchedule.MINUTES)
    task = PeriodicTask(
        name="every-10-min", task="test.publish", interval=interval, start_time=T0 + timedelta(seconds=7)
    )

    schedule = Schedule.of(task)

    assert (describe_schedule(task), schedule_zone(task)) == ("every 10 minutes", "UTC")
    assert (schedule.kind, schedule.interval) == ("interval", timedelta(minutes=10))
    assert next_instants(schedule.instants_after(datetime(2026, 2, 1, tzinfo=UTC)), 2) == [
        datetime(2026, 3, 1, 0, 0, 7, tzinfo=UTC),
        datetime(2026, 3, 1, 0, 10, 7, tzinfo=UTC),
    ]
    assert next_instants(schedule.instants_after(datetime(2026, 3, 1, 5, 3, tzinfo=UTC)), 1) == [
        datetime(2026, 3, 1, 5, 10, 7, tzinfo=UTC)
    ]


@pytest.mark.unit
def test_a_clocked_definition_fires_once_at_its_time():
    task = PeriodicTask(
        name="once", task="test.publish", clocked=ClockedSchedule(id=1, clocked_time=T0 + timedelta(hours=12))
    )

    schedule = Schedule.of(task)

    assert describe_schedule(task) == "at 2026-03-01T12:00:00+00:00"
    assert list(schedule.instants_after(T0)) == [datetime(2026, 3, 1, 12, 0, tzinfo=UTC)]
    assert list(schedule.instants_after(T0 + timedelta(hours=12))) == []


@pytest.mark.unit
@pytest.mark.parametrize(
    "schedule, reason",
    [
        ({}, "the definition has no schedule"),
        (
            {"solar": SolarSchedule(id=1, event="sunrise", latitude=52.5, longitude=13.4)},
            "solar schedules are not supported; use a crontab in the place's time zone",
        ),
        ({"interval": IntervalSchedule(id=1, every=0, period=IntervalSchedule.SECONDS)}, "interval must be positive"),
    ],
    ids=["none", "solar", "zero interval"],
)
def test_a_schedule_that_cannot_be_planned_is_refused_with_its_reason(schedule, reason):
    with pytest.raises(InvalidSchedule) as raised:
        Schedule.of(PeriodicTask(name="unplannable", task="test.publish", **schedule))

    assert str(raised.value) == reason


@pytest.mark.unit
def test_no_instant_fires_before_the_start_time_and_one_at_it_does():
    on_the_hour = dataclasses.replace(HOURLY, start_time=T0 + timedelta(hours=5))
    past_the_hour = dataclasses.replace(HOURLY, start_time=T0 + timedelta(hours=5, minutes=1))

    assert next_instants(on_the_hour.instants_after(T0), 1) == [datetime(2026, 3, 1, 5, 0, tzinfo=UTC)]
    assert next_instants(past_the_hour.instants_after(T0), 1) == [datetime(2026, 3, 1, 6, 0, tzinfo=UTC)]


@pytest.mark.unit
def test_planning_up_to_the_resume_forgets_the_pause():
    paused = Cursor(T0, paused_at=T0 + timedelta(hours=2, minutes=30), resumed_at=T0 + timedelta(hours=26))

    assert paused.moved_to(T0 + timedelta(hours=2)) == Cursor(
        T0 + timedelta(hours=2), paused_at=T0 + timedelta(hours=2, minutes=30), resumed_at=T0 + timedelta(hours=26)
    )
    assert paused.moved_to(T0 + timedelta(hours=26)) == Cursor(T0 + timedelta(hours=26))


@pytest.mark.unit
def test_a_cursor_planned_past_its_resume_goes_on_from_where_it_planned():
    cursor = Cursor(
        T0 + timedelta(hours=30), paused_at=T0 + timedelta(hours=2, minutes=30), resumed_at=T0 + timedelta(hours=26)
    )

    assert next_instants(cursor.unplanned(HOURLY), 2) == [
        datetime(2026, 3, 2, 7, 0, tzinfo=UTC),
        datetime(2026, 3, 2, 8, 0, tzinfo=UTC),
    ]


def definition(**changes) -> Definition:
    values = dict(
        id=1,
        name="hourly",
        job="test.publish",
        enabled=True,
        one_off=False,
        schedule=HOURLY,
        expires=None,
        expire_seconds=None,
        policy=Policy(),
        kwargs={},
        cursor=Cursor(T0),
    )
    return Definition(**{**values, **changes})


@pytest.mark.unit
def test_the_next_instant_is_the_first_one_its_cursor_has_not_planned():
    assert definition().next_instant() == datetime(2026, 3, 1, 1, 0, tzinfo=UTC)
    assert definition().next_instant(Cursor(T0 + timedelta(hours=5))) == datetime(2026, 3, 1, 6, 0, tzinfo=UTC)
    assert definition(schedule=None).next_instant() is None
    assert definition(cursor=None).next_instant() is None


@pytest.mark.unit
def test_a_run_expires_once_its_expire_seconds_or_the_definitions_expiry_have_passed():
    within_a_minute, until_tomorrow = definition(expire_seconds=60), definition(expires=T0 + timedelta(days=1))

    assert [within_a_minute.expired(T0, T0 + timedelta(seconds=s)) for s in (60, 61)] == [False, True]
    assert [until_tomorrow.expired(T0, T0 + timedelta(days=1, seconds=s)) for s in (0, 1)] == [False, True]
    assert definition().expired(T0, T0 + timedelta(days=365)) is False


@pytest.mark.unit
@pytest.mark.parametrize(
    "kwargs, passed",
    [('{"batch": 100}', {"batch": 100}), ("", {}), (None, {}), ("[1, 2]", {}), ("not json", {})],
    ids=["object", "empty", "null", "list", "not json"],
)
def test_a_job_is_given_its_definitions_kwargs_when_they_are_a_json_object_else_none(kwargs, passed):
    assert kwargs_of(PeriodicTask(name="with-kwargs", task="test.publish", kwargs=kwargs)) == passed
