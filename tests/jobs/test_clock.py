"""The database's clock decides, whatever the host's says: schedulers whose clock is 5 minutes off.

A scheduler's wall clock is shifted with libfaketime; its monotonic clock stays true
(FAKETIME_DONT_FAKE_MONOTONIC), as DatabaseClock and the scheduler's waits rely on it. With
that setting libfaketime 0.9.10 breaks time.sleep() (EINVAL, wolfcw/libfaketime#426), so the
shifted schedulers here never run a job that sleeps.
"""

import glob
import json
import signal
import subprocess
import sys
from collections import Counter
from datetime import timedelta

import pytest

from bookworm_scheduler.kernel.clock import database_now
from jobs.engine import store
from jobs.models import Attempt, Occurrence, Priority, SchedulerInstance
from outbox.models import OutboxMessage
from tests.jobs.helpers import make_definition, wait_for

pytestmark = [pytest.mark.django_db(transaction=True), pytest.mark.slow]

LIBFAKETIME = ("/usr/lib/*/faketime/libfaketime.so.1", "/usr/lib/faketime/libfaketime.so.1")

# Prints how far this process's wall clock is ahead of the database's, in seconds.
CLOCK_PROBE = """
import os, time, psycopg
with psycopg.connect(os.environ["DATABASE_URL"]) as connection:
    (database,) = connection.execute("SELECT extract(epoch FROM clock_timestamp())").fetchone()
print(time.time() - float(database))
"""


def shifted_clock(env: dict, minutes: int) -> dict:
    """env for a process whose wall clock is `minutes` off the database's (checked, not assumed)."""
    found = sorted(path for pattern in LIBFAKETIME for path in glob.glob(pattern))
    if not found:
        pytest.fail(f"libfaketime not found at {' or '.join(LIBFAKETIME)}: install Debian's faketime package")
    shifted = dict(env, LD_PRELOAD=found[0], FAKETIME=f"{minutes:+d}m", FAKETIME_DONT_FAKE_MONOTONIC="1")
    probe = subprocess.run([sys.executable, "-c", CLOCK_PROBE], env=shifted, capture_output=True, text=True, timeout=30)
    assert probe.returncode == 0, f"a process under libfaketime cannot reach PostgreSQL: {probe.stderr}"
    assert abs(float(probe.stdout) - minutes * 60) < 5, f"libfaketime did not shift the clock: {probe.stdout}"
    return shifted


def started(instance_id: str) -> SchedulerInstance:
    """Wait until the scheduler process has registered (its first pass), return its instance row."""
    return wait_for(lambda: SchedulerInstance.objects.filter(instance_id=instance_id, state="running").first())


def actions(output: str) -> list[str]:
    """The `action` of each structured log event (LOG_FORMAT=json) in a process's output."""
    events = [json.loads(line) for line in output.splitlines() if line.startswith("{")]
    return [event["action"] for event in events if "action" in event]


@pytest.fixture
def env(scheduler_env):
    return dict(scheduler_env, LOG_FORMAT="json")


def test_a_scheduler_five_minutes_fast_runs_each_instant_once_and_none_early(
    scheduler_processes, env, no_seed_definitions
):
    fast = scheduler_processes(env=shifted_clock(env, +5), instance_id="fast")
    instance = started("fast")
    assert abs(instance.last_seen - database_now()) < timedelta(seconds=3), "not stamped with the database's time"
    start = database_now().replace(microsecond=0) + timedelta(seconds=2)
    task = make_definition("every-second", every=1, start_time=start)

    wait_for(lambda: Occurrence.objects.filter(task=task, status="succeeded").count() >= 5, timeout=20)
    ahead = Occurrence.objects.filter(task=task, scheduled_for__gt=database_now() + timedelta(seconds=2))
    assert list(ahead) == [], "planned ahead of the database's clock"
    assert fast.terminate() == 0
    output = fast.output()
    assert "Traceback" not in output, output

    occurrences = list(Occurrence.objects.filter(task=task).order_by("scheduled_for"))
    instants = [occurrence.scheduled_for for occurrence in occurrences]
    assert instants == [start + timedelta(seconds=k) for k in range(len(instants))], "not the grid from start_time"
    early = [o for o in occurrences if o.started_at is None or o.started_at < o.scheduled_for]
    assert early == [], "run before the database's clock reached its instant"
    assert {(o.status, o.attempts, o.scheduler) for o in occurrences} == {("succeeded", 1, "fast")}
    assert Attempt.objects.filter(occurrence__task=task).count() == len(occurrences)
    ran = Counter(OutboxMessage.objects.values_list("body__occurrence", flat=True))
    assert sorted(ran) == sorted(o.id for o in occurrences) and set(ran.values()) == {1}


def test_a_scheduler_five_minutes_slow_runs_each_instant_on_time(scheduler_processes, env, no_seed_definitions):
    # By its own clock none of these instants falls due for 5 minutes.
    slow = scheduler_processes(env=shifted_clock(env, -5), instance_id="slow")
    instance = started("slow")
    assert abs(instance.last_seen - database_now()) < timedelta(seconds=3), "not stamped with the database's time"
    start = database_now().replace(microsecond=0) + timedelta(seconds=2)
    task = make_definition("every-second", every=1, start_time=start)

    wait_for(lambda: Occurrence.objects.filter(task=task, status="succeeded").count() >= 5, timeout=15)
    assert slow.terminate() == 0
    output = slow.output()
    assert "Traceback" not in output, output

    occurrences = list(Occurrence.objects.filter(task=task).order_by("scheduled_for"))
    instants = [occurrence.scheduled_for for occurrence in occurrences]
    assert instants == [start + timedelta(seconds=k) for k in range(len(instants))], "not the grid from start_time"
    assert {(o.status, o.attempts) for o in occurrences} == {("succeeded", 1)}
    lags = [o.started_at - o.scheduled_for for o in occurrences]
    assert all(timedelta(0) <= lag < timedelta(seconds=2) for lag in lags), lags


def test_a_fast_scheduler_does_not_steal_a_live_claim(scheduler_processes, env, no_seed_definitions):
    env = dict(env, SCHEDULER_LEASE_SECONDS="3")
    task = make_definition("sleeper", "test.sleep", every=3600, kwargs={"seconds": 6})
    normal = scheduler_processes(env=env, instance_id="normal")
    fast = scheduler_processes(env=shifted_clock(env, +5), instance_id="fast")
    started("normal")
    started("fast")
    # The fast one is frozen while the normal one claims the run, so that the run is the normal one's.
    fast.process.send_signal(signal.SIGSTOP)
    try:
        occurrence = store.trigger(task, priority=Priority.NORMAL)
        wait_for(lambda: Occurrence.objects.filter(id=occurrence.id, status="running", scheduler="normal").exists())
    finally:
        fast.process.send_signal(signal.SIGCONT)

    # By the fast scheduler's own clock the 3-second lease expired minutes ago. Once a second it
    # renews its heartbeat, then reaps: let it finish a reaping pass while the job runs.
    two_seconds_on = database_now() + timedelta(seconds=2)
    wait_for(lambda: SchedulerInstance.objects.filter(instance_id="fast", last_seen__gte=two_seconds_on).exists())
    still_claimed = Occurrence.objects.filter(id=occurrence.id, status="running", scheduler="normal")
    assert still_claimed.exists(), "the job ended before the fast scheduler looked: the test proved nothing"

    wait_for(lambda: Occurrence.objects.filter(id=occurrence.id, status__in=Occurrence.FINISHED).exists(), timeout=15)
    assert (fast.terminate(), normal.terminate()) == (0, 0)
    occurrence.refresh_from_db()
    assert (occurrence.status, occurrence.attempts, occurrence.scheduler) == ("succeeded", 1, "normal")
    attempts = list(Attempt.objects.filter(occurrence=occurrence).values_list("number", "status", "scheduler", "error"))
    assert attempts == [(1, "succeeded", "normal", "")]
    assert "lease_expired" not in actions(fast.output())
    assert OutboxMessage.objects.filter(body__occurrence=occurrence.id).count() == 1


def test_a_slow_scheduler_reaps_a_dead_claim_on_time(scheduler_processes, env, no_seed_definitions):
    env = dict(env, SCHEDULER_LEASE_SECONDS="3")
    task = make_definition(
        "long-sleeper", "test.sleep", every=3600, kwargs={"seconds": 60, "on_attempt": 1}, max_retries=1
    )
    victim = scheduler_processes(env=env, instance_id="victim")
    started("victim")
    occurrence = store.trigger(task, priority=Priority.NORMAL)
    wait_for(lambda: Occurrence.objects.filter(id=occurrence.id, status="running", scheduler="victim").exists())
    # By the slow scheduler's own clock the lease expires 5 minutes after the database's.
    slow = scheduler_processes(env=shifted_clock(env, -5), instance_id="slow")
    started("slow")

    victim.kill()
    killed_at = database_now()
    lost = wait_for(lambda: Attempt.objects.filter(occurrence=occurrence, number=1).first(), timeout=15)
    assert (lost.status, lost.scheduler) == ("failed", "victim")
    assert "presumed dead" in lost.error
    assert timedelta(0) < lost.finished_at - killed_at < timedelta(seconds=6)  # lease 3 s, renewed every second

    # The retry (attempt 2 does not sleep) runs on the slow scheduler at once.
    wait_for(lambda: Occurrence.objects.filter(id=occurrence.id, status="succeeded").exists(), timeout=10)
    assert SchedulerInstance.objects.get(instance_id="victim").state == "lost"
    assert slow.terminate() == 0
    occurrence.refresh_from_db()
    assert (occurrence.attempts, occurrence.scheduler) == (2, "slow")
    retried = Attempt.objects.get(occurrence=occurrence, number=2)
    assert (retried.status, retried.scheduler) == ("succeeded", "slow")
    assert retried.started_at - lost.finished_at < timedelta(seconds=2)
    assert {"lease_expired", "instances_lost"} <= set(actions(slow.output()))
