import threading

import pytest
from django.db import connection
from django_celery_beat.models import PeriodicTask, SolarSchedule

from jobs.definitions import Definition, create_missing_definitions, load_definitions
from jobs.models import JobPolicy, Priority
from jobs.schedules import InvalidSchedule

pytestmark = pytest.mark.django_db


def test_migrate_creates_the_seed_definitions():
    clean_up = PeriodicTask.objects.select_related("crontab", "policy").get(name="CleanUpSentEmailJob")
    resend = PeriodicTask.objects.select_related("crontab", "policy").get(name="ResendErrorEmailJob")
    assert (clean_up.crontab.minute, clean_up.crontab.hour, clean_up.crontab.day_of_month) == ("0", "0", "*")
    assert (resend.crontab.minute, resend.crontab.hour) == ("0", "*")
    assert clean_up.policy.priority == Priority.NORMAL and resend.policy.priority == Priority.HIGH
    assert clean_up.enabled and resend.enabled


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


def test_a_solar_schedule_is_refused_with_a_clear_reason():
    solar = SolarSchedule.objects.create(event="sunrise", latitude=52.5, longitude=13.4)
    task = PeriodicTask.objects.create(name="dawn", task="test.publish", solar=solar)
    with pytest.raises(InvalidSchedule, match="solar schedules are not supported"):
        Definition.from_task(task)
    definitions, invalid = load_definitions()
    assert task.id not in definitions and "solar" in invalid[task.id]
