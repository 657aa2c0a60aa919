"""Helpers shared by the job tests."""

import contextlib
import json
import signal
import subprocess
import sys
import tempfile
import threading
import time
from datetime import UTC, datetime, timedelta

from django.conf import settings
from django.db import connection
from django_celery_beat.models import CrontabSchedule, IntervalSchedule, PeriodicTask

from bookworm_scheduler.kernel.listen import Listener
from jobs.engine.loop import Scheduler
from jobs.engine.store import NOTIFY_CHANNEL
from jobs.models import JobPolicy, PlanningCursor

UTC = UTC
MANAGE = [sys.executable, str(settings.BASE_DIR / "manage.py")]


def start_of_future_hour() -> datetime:
    return datetime.now(UTC).replace(minute=0, second=0, microsecond=0) + timedelta(days=1)


class FakeClock:
    """A clock the test moves by hand."""

    def __init__(self, now: datetime):
        self.now = now

    def __call__(self) -> datetime:
        return self.now

    def advance(self, **delta) -> datetime:
        self.now += timedelta(**delta)
        return self.now

    def set(self, now: datetime) -> datetime:
        self.now = now
        return now


def make_definition(
    name,
    job="test.publish",
    *,
    cron=None,
    tz="UTC",
    every=None,
    period=IntervalSchedule.SECONDS,
    start_time=None,
    planned_through=None,
    kwargs=None,
    enabled=True,
    **policy,
) -> PeriodicTask:
    """A definition with a crontab (cron="m h dom mon dow") or an interval (every=N).

    Its planning cursor starts where the database's triggers put it (now), or at planned_through.
    """
    schedule = {}
    if cron is not None:
        minute, hour, dom, month, dow = cron.split()
        schedule["crontab"], _ = CrontabSchedule.objects.get_or_create(
            minute=minute, hour=hour, day_of_month=dom, month_of_year=month, day_of_week=dow, timezone=tz
        )
    else:
        schedule["interval"], _ = IntervalSchedule.objects.get_or_create(every=every, period=period)
    task = PeriodicTask.objects.create(
        name=name,
        task=job,
        start_time=start_time,
        kwargs=json.dumps(kwargs or {}),
        enabled=enabled,
        **schedule,
    )
    if planned_through is not None:
        PlanningCursor.objects.filter(task=task).update(planned_through=planned_through)
    if policy:
        JobPolicy.objects.create(task=task, **policy)
    return task


def definition_form(**fields):
    """What the job page's add form posts: a cron definition with its run policy and no follow-ups."""
    data = {
        "name": "nightly",
        "task": "test.publish",
        "enabled": "on",
        "description": "",
        "cron": "30 2 * * *",
        "timezone": "Europe/Berlin",
        "interval": "",
        "clocked": "",
        "kwargs": "{}",
        "policy-TOTAL_FORMS": "1",
        "policy-INITIAL_FORMS": "0",
        "policy-0-priority": "2",
        "policy-0-misfire_policy": "run_once",
        "policy-0-max_retries": "1",
        "policy-0-retry_intervals": "[]",
        "follow_ups-TOTAL_FORMS": "0",
        "follow_ups-INITIAL_FORMS": "0",
    }
    data.update(fields)
    return data


def make_scheduler(clock, *, instance_id="test", concurrency=2, lease=60, grace=60) -> Scheduler:
    return Scheduler(
        instance_id=instance_id,
        concurrency=concurrency,
        lease=timedelta(seconds=lease),
        grace=timedelta(seconds=grace),
        clock=clock,
    )


class SchedulerProcess:
    """A real `manage.py runscheduler` subprocess.

    Its output goes to a temporary file, not a pipe: a pipe no one reads until the end fills up and
    stops the process at its next log line.
    """

    def __init__(self, env, *args, instance_id="proc"):
        self.log = tempfile.TemporaryFile(mode="w+")
        self.process = subprocess.Popen(
            [*MANAGE, "runscheduler", "--instance-id", instance_id, *args],
            env=env,
            stdout=self.log,
            stderr=subprocess.STDOUT,
            text=True,
        )

    def terminate(self, timeout=30) -> int:
        """SIGTERM, then its exit status; one that does not exit within timeout fails the test with its log."""
        self.process.send_signal(signal.SIGTERM)
        try:
            return self.process.wait(timeout)
        except subprocess.TimeoutExpired:
            self.kill()
            raise AssertionError(
                f"still running {timeout} s after SIGTERM; its log ends:\n{self.written()[-4000:]}"
            ) from None

    def kill(self) -> None:
        self.process.kill()
        self.process.wait(10)

    def output(self, timeout=10) -> str:
        """What the process wrote; after it ended (a process still running is killed after timeout)."""
        try:
            self.process.wait(timeout)
        except subprocess.TimeoutExpired:
            self.kill()
        return self.written()

    def written(self) -> str:
        """What the process has written so far."""
        self.log.seek(0)
        return self.log.read()


def wait_for(predicate, timeout=20.0, interval=0.1):
    """Poll predicate until it returns a truthy value; fail the test after timeout seconds."""
    deadline = time.monotonic() + timeout
    while time.monotonic() < deadline:
        value = predicate()
        if value:
            return value
        time.sleep(interval)
    raise AssertionError(f"condition not met within {timeout} s")


@contextlib.contextmanager
def woken_by_notify():
    """A started Listener on NOTIFY_CHANNEL; yields the event it sets, cleared once it listens."""
    woken = threading.Event()
    listener = Listener(NOTIFY_CHANNEL, lambda payload: woken.set())
    listener.start()
    try:
        wait_for(listener_ready, timeout=10)
        assert woken.wait(10)  # once listening: for what was notified before
        woken.clear()
        yield woken
    finally:
        listener.close()


def listener_ready(channel: str = NOTIFY_CHANNEL) -> bool:
    """Whether a Listener's connection is listening on channel (its LISTEN is the last query it sent)."""
    with connection.cursor() as cursor:
        cursor.execute(
            "SELECT count(*) FROM pg_stat_activity WHERE datname = current_database() AND query = %s",
            [f"LISTEN {channel}"],
        )
        return cursor.fetchone()[0] == 1
