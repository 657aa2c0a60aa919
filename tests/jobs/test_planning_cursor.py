"""The planning cursor: the project's own, kept by database triggers whatever path writes a definition."""

import logging
from datetime import timedelta

import pytest
from django.contrib.auth.models import User
from django.db import connection
from django.test import Client
from django_celery_beat.models import CrontabSchedule, PeriodicTask, PeriodicTasks

from bookworm_scheduler.kernel.clock import database_now
from jobs.engine.definitions import Cursor, Schedule
from jobs.models import DefinitionsVersion, JobPolicy, Occurrence, PlanningCursor
from tests.jobs.helpers import make_definition, make_scheduler

pytestmark = pytest.mark.django_db

HOUR = timedelta(hours=1)


def cursor_of(task) -> PlanningCursor:
    return PlanningCursor.objects.get(task_id=task.id)


def disable_with_save(task, enabled):
    task.enabled = enabled
    task.save()


def disable_with_update(task, enabled):
    PeriodicTask.objects.filter(id=task.id).update(enabled=enabled)
    PeriodicTasks.update_changed()


def disable_with_sql(task, enabled):
    with connection.cursor() as cursor:
        cursor.execute("UPDATE django_celery_beat_periodictask SET enabled = %s WHERE id = %s", [enabled, task.id])


def admin_action(action, task):
    user = User.objects.get_or_create(username="admin", defaults={"is_staff": True, "is_superuser": True})[0]
    client = Client()
    client.force_login(user)
    response = client.post(
        "/tickerq/django_celery_beat/periodictask/", {"action": action, "_selected_action": [task.id]}
    )
    assert response.status_code == 302


def disable_with_admin_action(task, enabled):
    admin_action("enable" if enabled else "disable", task)


def toggle_with_admin_action(task, enabled):
    admin_action("toggle", task)


def test_a_new_definition_plans_from_the_moment_it_was_created(no_seed_definitions):
    task = make_definition("fresh", cron="* * * * *")
    cursor = cursor_of(task)
    assert abs(cursor.planned_through - task.date_changed) < timedelta(seconds=5)
    assert (cursor.paused_at, cursor.resumed_at) == (None, None)


def test_a_definition_created_disabled_is_paused_from_its_creation(no_seed_definitions):
    cursor = cursor_of(make_definition("dormant", cron="* * * * *", enabled=False))
    assert cursor.paused_at is not None and cursor.resumed_at is None


@pytest.mark.parametrize(
    "flip",
    [disable_with_save, disable_with_update, disable_with_sql, disable_with_admin_action, toggle_with_admin_action],
    ids=["change form (save)", "queryset update", "plain SQL", "admin enable/disable actions", "admin toggle action"],
)
def test_disabling_pauses_and_enabling_resumes_whatever_the_path(no_seed_definitions, flip):
    task = make_definition("paused", cron="* * * * *")
    flip(task, False)
    paused = cursor_of(task)
    assert paused.paused_at is not None and paused.resumed_at is None
    flip(task, True)
    resumed = cursor_of(task)
    assert resumed.paused_at == paused.paused_at and resumed.resumed_at >= resumed.paused_at
    assert PeriodicTask.objects.get(id=task.id).enabled


def test_a_changed_crontab_plans_from_the_moment_of_the_change(no_seed_definitions):
    task = make_definition("every-minute", cron="* * * * *")
    PlanningCursor.objects.filter(task=task).update(planned_through="2000-01-01T00:00:00Z")
    crontab = CrontabSchedule.objects.get(id=task.crontab_id)
    crontab.minute = "*/5"
    crontab.save()
    assert cursor_of(task).planned_through.year > 2000


def test_a_changed_start_time_plans_from_the_moment_of_the_change(no_seed_definitions):
    task = make_definition("every-minute", cron="* * * * *")
    PlanningCursor.objects.filter(task=task).update(planned_through="2000-01-01T00:00:00Z")
    PeriodicTask.objects.filter(id=task.id).update(start_time="2000-01-01T00:00:00Z")
    assert cursor_of(task).planned_through.year > 2000


def this_hour():
    """The database's current hour, as the schedulers see it."""
    return database_now().replace(minute=0, second=0, microsecond=0)


def edit_crontab_with_save(task, minute):
    task.crontab = CrontabSchedule.objects.get_or_create(
        minute=minute, hour="*", day_of_month="*", month_of_year="*", day_of_week="*", timezone="UTC"
    )[0]
    task.save()


def edit_crontab_in_place(task, minute):
    crontab = CrontabSchedule.objects.get(id=task.crontab_id)
    crontab.minute = minute
    crontab.save()


@pytest.mark.parametrize("edit", [edit_crontab_with_save, edit_crontab_in_place], ids=["definition", "crontab row"])
def test_a_schedule_edited_with_save_first_plans_what_the_old_schedule_owes(no_seed_definitions, edit):
    hour = this_hour()
    task = make_definition("hourly", cron="0 * * * *", planned_through=hour - 3 * HOUR, misfire_policy="run_all")
    edit(task, "30")
    assert list(
        Occurrence.objects.filter(task=task).order_by("scheduled_for").values_list("scheduled_for", "status")
    ) == [
        (hour - 2 * HOUR, "scheduled"),
        (hour - HOUR, "scheduled"),
        (hour, "scheduled"),
    ]
    assert cursor_of(task).planned_through > hour


def test_a_disabled_definition_edited_owes_only_what_fell_before_its_pause(no_seed_definitions):
    hour = this_hour()
    task = make_definition("hourly", cron="0 * * * *", misfire_policy="skip")
    disable_with_save(task, False)
    PlanningCursor.objects.filter(task=task).update(
        planned_through=hour - 3 * HOUR, paused_at=hour - 2 * HOUR + timedelta(minutes=30)
    )
    edit_crontab_with_save(task, "30")
    assert list(Occurrence.objects.filter(task=task).values_list("scheduled_for", "status")) == [
        (hour - 2 * HOUR, "missed")
    ]
    assert Occurrence.objects.get(task=task).reason.startswith("missed: no scheduler ran from its due time until ")


def test_a_schedule_edited_with_a_queryset_update_restarts_without_catching_up(no_seed_definitions):
    hour = this_hour()
    task = make_definition("hourly", cron="0 * * * *", planned_through=hour - 3 * HOUR)
    crontab = CrontabSchedule.objects.get_or_create(
        minute="30", hour="*", day_of_month="*", month_of_year="*", day_of_week="*", timezone="UTC"
    )[0]
    PeriodicTask.objects.filter(id=task.id).update(crontab=crontab)
    assert Occurrence.objects.filter(task=task).count() == 0
    assert cursor_of(task).planned_through > hour


def test_saving_a_definition_without_a_schedule_change_plans_nothing(no_seed_definitions):
    task = make_definition("hourly", cron="0 * * * *", planned_through=this_hour() - 3 * HOUR)
    task.description = "renamed"
    task.save()
    assert Occurrence.objects.filter(task=task).count() == 0


def test_the_cursor_goes_with_its_definition(no_seed_definitions):
    task = make_definition("short-lived", cron="* * * * *")
    with connection.cursor() as cursor:
        cursor.execute("DELETE FROM django_celery_beat_periodictask WHERE id = %s", [task.id])
    assert not PlanningCursor.objects.filter(task_id=task.id).exists()


def test_no_instant_in_the_pause_is_ever_planned(clock):
    schedule = Schedule(kind="crontab", expression="0 * * * *", zone="UTC")
    start = clock.now
    cursor = Cursor(
        planned_through=start, paused_at=start + 2 * HOUR + timedelta(minutes=30), resumed_at=start + 26 * HOUR
    )
    unplanned = cursor.unplanned(schedule)
    instants = [next(unplanned) for _ in range(4)]
    assert instants == [start + HOUR, start + 2 * HOUR, start + 27 * HOUR, start + 28 * HOUR]


def test_an_hourly_job_enabled_after_a_day_records_no_missed_rows(clock, no_seed_definitions, caplog):
    task = make_definition("hourly", cron="0 * * * *")
    start = clock.now
    # As the triggers leave it after a disable at start + 10 min and an enable a day later.
    PlanningCursor.objects.filter(task=task).update(
        planned_through=start, paused_at=start + timedelta(minutes=10), resumed_at=start + timedelta(days=1, minutes=10)
    )
    scheduler = make_scheduler(clock)
    scheduler.planner.refresh()
    scheduler.planner.plan(clock.set(start + timedelta(days=1, minutes=20)))
    assert list(Occurrence.objects.filter(task=task).values_list("status", flat=True)) == []
    assert not [r for r in caplog.records if getattr(r, "action", None) == "occurrences_missed"]
    scheduler.planner.plan(clock.set(start + timedelta(days=1, hours=1)))
    assert list(Occurrence.objects.filter(task=task).values_list("scheduled_for", "status")) == [
        (start + timedelta(days=1, hours=1), "scheduled")
    ]
    assert PlanningCursor.objects.filter(task=task, paused_at=None, resumed_at=None).exists()


def test_downtime_of_every_scheduler_is_still_the_misfire_policys(clock, no_seed_definitions):
    task = make_definition("hourly", cron="0 * * * *", planned_through=clock.now, misfire_policy="skip")
    scheduler = make_scheduler(clock)
    scheduler.planner.refresh()
    scheduler.planner.plan(clock.advance(hours=3, minutes=5))
    assert list(Occurrence.objects.filter(task=task).values_list("status", flat=True)) == ["missed"] * 3


@pytest.mark.parametrize(
    "write",
    [
        lambda task: JobPolicy.objects.filter(task=task).update(priority=2),
        lambda task: connection.cursor().execute(
            "UPDATE jobs_jobpolicy SET priority = 2 WHERE task_id = %s", [task.id]
        ),
    ],
    ids=["queryset update", "plain SQL"],
)
def test_a_policy_edit_by_any_path_reaches_a_running_scheduler(clock, no_seed_definitions, write):
    task = make_definition("edited", cron="* * * * *", priority=1)
    scheduler = make_scheduler(clock)
    scheduler.planner.refresh()
    before = DefinitionsVersion.current()
    assert scheduler.planner.refresh() is False
    write(task)
    assert DefinitionsVersion.current() > before
    assert scheduler.planner.refresh() is True
    assert scheduler.planner.definitions[task.id].policy.priority == 2


def test_the_missed_count_logged_is_of_the_rows_the_database_took(clock, no_seed_definitions, caplog):
    task = make_definition("hourly", cron="0 * * * *", planned_through=clock.now, misfire_policy="skip")
    first, second = make_scheduler(clock), make_scheduler(clock)
    first.planner.refresh()
    second.planner.refresh()
    first.planner.plan(clock.advance(hours=3, minutes=5))
    PlanningCursor.objects.filter(task=task).update(planned_through=clock.now - timedelta(hours=3, minutes=5))
    caplog.set_level(logging.WARNING)
    second.planner.plan(clock.now)  # plans the same three instants again: the database takes none
    logged = [r.count for r in caplog.records if getattr(r, "action", None) == "occurrences_missed"]
    assert logged == [3]
    assert Occurrence.objects.filter(task=task).count() == 3
