"""runscheduler as a real subprocess: end to end, kill -9, SIGTERM."""

import json
import os
import subprocess
from collections import Counter
from datetime import timedelta

import pytest
from django.db import connection
from django.db.models import F
from django.utils import timezone
from django_celery_beat.models import PeriodicTask

from bookworm_scheduler.kernel.clock import database_now
from jobs.engine import store
from jobs.models import Attempt, Occurrence, PlanningCursor, Priority, SchedulerInstance
from outbox.models import OutboxMessage
from tests.jobs.helpers import MANAGE, make_definition, wait_for

pytestmark = [pytest.mark.django_db(transaction=True), pytest.mark.slow]


def test_two_scheduler_processes_run_every_instant_once(scheduler_processes, no_seed_definitions):
    start = timezone.now().replace(microsecond=0) + timedelta(seconds=2)
    task = make_definition("every-second", every=1, start_time=start)
    first = scheduler_processes(instance_id="first")
    second = scheduler_processes(instance_id="second")
    wait_for(lambda: Occurrence.objects.filter(task=task, status="succeeded").count() >= 8, timeout=30)
    codes = first.terminate(), second.terminate()
    assert codes == (0, 0), first.output() + second.output()

    instants = sorted(Occurrence.objects.filter(task=task).values_list("scheduled_for", flat=True))
    assert len(instants) == len(set(instants))
    assert instants == [instants[0] + timedelta(seconds=k) for k in range(len(instants))], "a gap in the grid"
    assert instants[0] == start
    assert set(Occurrence.objects.filter(task=task).values_list("status", flat=True)) == {"succeeded"}
    ran = Counter(OutboxMessage.objects.values_list("body__occurrence", flat=True))
    assert len(ran) == len(instants) and max(ran.values()) == 1


def test_a_killed_instance_is_noticed_and_its_run_retried(scheduler_processes, scheduler_env, no_seed_definitions):
    env = dict(scheduler_env, SCHEDULER_LEASE_SECONDS="3")
    task = make_definition(
        "long-sleeper", "test.sleep", every=3600, kwargs={"seconds": 60, "on_attempt": 1}, max_retries=1
    )
    victim = scheduler_processes(env=env, instance_id="victim")
    occurrence = store.trigger(task, now=timezone.now(), priority=Priority.NORMAL)
    wait_for(lambda: Occurrence.objects.filter(id=occurrence.id, status="running").exists())
    victim.kill()
    killed_at = timezone.now()

    scheduler_processes(env=env, instance_id="survivor")
    wait_for(lambda: Occurrence.objects.filter(id=occurrence.id, status="succeeded").exists(), timeout=30)
    occurrence.refresh_from_db()
    assert (occurrence.attempts, occurrence.scheduler) == (2, "survivor")
    lost, retried = Attempt.objects.filter(occurrence=occurrence).order_by("number")
    assert lost.status == "failed" and "victim" in lost.error and "presumed dead" in lost.error
    assert lost.finished_at - killed_at < timedelta(seconds=10)  # lease 3 s, renewed every 1 s
    assert retried.status == "succeeded" and retried.scheduler == "survivor"
    assert OutboxMessage.objects.filter(body__occurrence=occurrence.id).count() == 1


def test_sigterm_lets_the_running_job_finish_and_exits_0(scheduler_processes, no_seed_definitions):
    task = make_definition("short-sleeper", "test.sleep", every=3600, kwargs={"seconds": 2})
    process = scheduler_processes(instance_id="graceful")
    occurrence = store.trigger(task, now=timezone.now(), priority=Priority.NORMAL)
    wait_for(lambda: Occurrence.objects.filter(id=occurrence.id, status="running").exists())
    assert process.terminate() == 0
    occurrence.refresh_from_db()
    assert occurrence.status == "succeeded"


def test_a_definition_changed_in_the_admin_is_seen_without_a_restart(
    scheduler_processes, scheduler_env, no_seed_definitions
):
    task = make_definition("later", every=3600, start_time=timezone.now() + timedelta(hours=1))
    process = scheduler_processes(env=dict(scheduler_env, SCHEDULER_LEASE_SECONDS="3"), instance_id="watcher")
    # A heartbeat after its start: it has loaded the definition with the old schedule.
    wait_for(lambda: SchedulerInstance.objects.filter(instance_id="watcher", last_seen__gt=F("started_at")).exists())
    task.start_time = timezone.now().replace(microsecond=0) + timedelta(seconds=2)
    task.interval.every, task.interval.period = 1, "seconds"
    task.save()
    wait_for(lambda: Occurrence.objects.filter(task=task, status="succeeded").exists(), timeout=10)
    assert process.terminate() == 0


def test_run_once_runs_what_is_due_and_exits(scheduler_env, no_seed_definitions):
    task = make_definition("manual", every=3600)
    occurrence = store.trigger(task, now=timezone.now(), priority=Priority.NORMAL)
    result = subprocess.run([*MANAGE, "runscheduler", "--once"], env=scheduler_env, capture_output=True, timeout=60)
    assert result.returncode == 0, result.stderr
    occurrence.refresh_from_db()
    assert occurrence.status == "succeeded"


def restart_postgresql():
    version = sorted(os.listdir("/etc/postgresql"))[0]
    subprocess.run(
        ["pg_ctlcluster", "--skip-systemctl-redirect", version, "main", "restart", "--", "-m", "fast"],
        check=True,
        timeout=120,
    )


def test_a_postgresql_restart_is_survived(scheduler_processes, no_seed_definitions):
    start = timezone.now().replace(microsecond=0) + timedelta(seconds=2)
    task = make_definition("every-second", every=1, start_time=start)
    process = scheduler_processes(instance_id="survivor")
    wait_for(lambda: Occurrence.objects.filter(task=task, status="succeeded").count() >= 2)
    restart_postgresql()
    connection.close()
    restarted = timezone.now()
    wait_for(
        lambda: Occurrence.objects.filter(task=task, status="succeeded", scheduled_for__gt=restarted).count() >= 3,
        timeout=60,
    )
    assert process.terminate() == 0
    output = process.output()
    assert "Traceback" not in output
    instants = sorted(Occurrence.objects.filter(task=task).values_list("scheduled_for", flat=True))
    assert instants == [start + timedelta(seconds=k) for k in range(len(instants))], "an instant was lost"


def test_the_embedded_sqlite_default_runs_a_job(tmp_path, scheduler_env):
    env = dict(scheduler_env, DATABASE_URL=f"sqlite:///{tmp_path / 'db.sqlite3'}")

    def manage(*args):
        result = subprocess.run([*MANAGE, *args], env=env, capture_output=True, text=True, timeout=120)
        assert result.returncode == 0, result.stderr
        return result.stdout

    manage("migrate", "--noinput")
    manage("jobs", "trigger", "ResendErrorEmailJob")
    manage("runscheduler", "--once")
    [run] = json.loads(manage("jobs", "history", "--json"))
    assert (run["job"], run["status"], run["manual"]) == ("ResendErrorEmailJob", "succeeded", True)
    assert json.loads(manage("outbox", "status", "--json"))["pending"] == 1


def test_no_more_than_concurrency_jobs_run_at_once_and_long_running_ones_run_beside_within_their_own_bound(
    scheduler_processes, scheduler_env, no_seed_definitions
):
    sleeper = make_definition("sleeper", "test.sleep", every=3600, kwargs={"seconds": 1.5})
    long_one = make_definition(
        "long-sleeper", "test.sleep", every=3600, kwargs={"seconds": 3}, priority=Priority.LONG_RUNNING
    )
    now = timezone.now()
    for _ in range(5):
        store.trigger(sleeper, now=now, priority=Priority.NORMAL)
    for _ in range(2):
        store.trigger(long_one, now=now, priority=Priority.LONG_RUNNING)
    env = dict(scheduler_env, SCHEDULER_LONG_RUNNING_CONCURRENCY="1")
    process = scheduler_processes("--concurrency", "2", env=env, instance_id="bounded")
    peak = {"normal": 0, "long": 0}

    def sample_until_all_succeeded():
        running = Occurrence.objects.filter(status="running")
        peak["normal"] = max(peak["normal"], running.exclude(priority=Priority.LONG_RUNNING).count())
        peak["long"] = max(peak["long"], running.filter(priority=Priority.LONG_RUNNING).count())
        return not Occurrence.objects.exclude(status="succeeded").exists()

    wait_for(sample_until_all_succeeded, timeout=30, interval=0.05)
    assert process.terminate() == 0
    assert set(Occurrence.objects.values_list("status", flat=True)) == {"succeeded"}
    assert peak == {"normal": 2, "long": 1}


def test_run_once_renews_the_leases_of_what_it_runs(scheduler_env, no_seed_definitions):
    env = dict(scheduler_env, SCHEDULER_LEASE_SECONDS="3")
    task = make_definition("slow", "test.sleep", every=3600, kwargs={"seconds": 5})
    occurrence = store.trigger(task, priority=Priority.NORMAL)
    process = subprocess.Popen(
        [*MANAGE, "runscheduler", "--once"], env=env, stdout=subprocess.PIPE, stderr=subprocess.STDOUT
    )
    try:
        first = wait_for(lambda: Occurrence.objects.filter(id=occurrence.id, status="running").first())
        wait_for(lambda: Occurrence.objects.get(id=occurrence.id).lease_expires_at > first.lease_expires_at)
        assert process.wait(60) == 0
    finally:
        process.kill()
    occurrence.refresh_from_db()
    assert (occurrence.status, occurrence.attempts) == ("succeeded", 1)


def test_a_postgresql_restart_during_a_run_is_not_the_jobs_failure(scheduler_processes, no_seed_definitions):
    task = make_definition("sleeper", "test.sleep", every=3600, kwargs={"seconds": 3, "on_attempt": 1})
    process = scheduler_processes(instance_id="survivor")
    occurrence = store.trigger(task, priority=Priority.NORMAL)
    wait_for(lambda: Occurrence.objects.filter(id=occurrence.id, status="running").exists())
    restart_postgresql()
    connection.close()
    wait_for(lambda: Occurrence.objects.filter(id=occurrence.id, status="succeeded").exists(), timeout=60)
    assert process.terminate() == 0
    assert list(Attempt.objects.filter(occurrence=occurrence).values_list("number", "status")) == [(1, "succeeded")]
    assert OutboxMessage.objects.filter(body__occurrence=occurrence.id).count() == 1


def test_a_one_second_job_enabled_again_runs_none_of_the_instants_it_skipped(scheduler_processes, no_seed_definitions):
    start = timezone.now().replace(microsecond=0) + timedelta(seconds=2)
    task = make_definition("every-second", every=1, start_time=start)
    process = scheduler_processes(instance_id="watcher")
    wait_for(lambda: Occurrence.objects.filter(task=task, status="succeeded").count() >= 2)
    task.refresh_from_db()
    task.enabled = False
    task.save()
    paused_at = PlanningCursor.objects.get(task=task).paused_at
    wait_for(lambda: database_now() > paused_at + timedelta(seconds=4), timeout=10)
    PeriodicTask.objects.filter(id=task.id).update(enabled=True)
    resumed_at = PlanningCursor.objects.get(task=task).resumed_at
    wait_for(
        lambda: Occurrence.objects.filter(task=task, scheduled_for__gt=resumed_at, status="succeeded").count() >= 2
    )
    assert process.terminate() == 0
    in_pause = Occurrence.objects.filter(task=task, scheduled_for__gt=paused_at, scheduled_for__lte=resumed_at)
    assert list(in_pause.values_list("scheduled_for", "status")) == []
    assert not Occurrence.objects.filter(task=task).exclude(status="succeeded").exists()
