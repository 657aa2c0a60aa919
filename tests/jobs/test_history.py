"""History stays bounded: old finished occurrences, their attempts and old instance rows are pruned."""

import json
import subprocess
from datetime import timedelta

import pytest
from django.utils import timezone

from jobs.engine import store
from jobs.models import Attempt, Occurrence, SchedulerInstance
from tests.jobs.helpers import MANAGE, make_definition, make_scheduler

pytestmark = pytest.mark.django_db


def occurrence(task, status, finished_days_ago, now, minute=0):
    finished = now - timedelta(days=finished_days_ago, minutes=minute)
    row = Occurrence.objects.create(
        task=task,
        job_name=task.name,
        scheduled_for=finished,
        run_after=finished,
        status=status,
        attempts=1,
        finished_at=finished if status != "scheduled" else None,
    )
    if status != "scheduled":
        Attempt.objects.create(
            occurrence=row,
            number=1,
            status="succeeded" if status == "succeeded" else "failed",
            scheduler="test",
            started_at=finished,
            finished_at=finished,
            duration=timedelta(0),
        )
    return row


def instance(name, state, last_seen):
    return SchedulerInstance.objects.create(
        instance_id=name, host="h", pid=1, version="1", started_at=last_seen, last_seen=last_seen, state=state
    )


@pytest.fixture
def history(clock, no_seed_definitions):
    task = make_definition("busy", every=60)
    now = clock.now
    old = [
        occurrence(task, s, 31, now, minute) for minute, s in enumerate(("succeeded", "failed", "missed", "skipped"))
    ]
    recent = [occurrence(task, "succeeded", 29, now), occurrence(task, "scheduled", 40, now)]
    instance("gone", "stopped", now - timedelta(days=2))
    instance("lost-long-ago", "lost", now - timedelta(days=2))
    instance("alive", "running", now - timedelta(days=2))
    instance("stopped-today", "stopped", now - timedelta(hours=1))
    return old, recent


def test_old_finished_occurrences_go_with_their_attempts_and_the_rest_stays(clock, history):
    old, recent = history
    deleted, more = store.prune(clock.now, keep=timedelta(days=30), batch=3, batches=10)
    assert (deleted, more) == (4, False)
    assert sorted(Occurrence.objects.values_list("id", flat=True)) == sorted(o.id for o in recent)
    assert Attempt.objects.count() == 1
    assert sorted(SchedulerInstance.objects.values_list("instance_id", flat=True)) == ["alive", "stopped-today"]


def test_a_backlog_is_pruned_in_bounded_batches(clock, history):
    assert store.prune(clock.now, keep=timedelta(days=30), batch=1, batches=3) == (3, True)
    assert store.prune(clock.now, keep=timedelta(days=30), batch=1, batches=3) == (1, False)


def test_the_scheduler_prunes_history_itself(clock, history):
    scheduler = make_scheduler(clock)
    scheduler.prune(clock.now)
    assert Occurrence.objects.count() == 2


@pytest.mark.django_db(transaction=True)
def test_jobs_prune_deletes_and_its_dry_run_only_counts(subprocess_env, no_seed_definitions):
    task = make_definition("busy", every=60)
    now = timezone.now()
    for days in (40, 35, 1):
        occurrence(task, "succeeded", days, now)

    def prune(*args):
        result = subprocess.run(
            [*MANAGE, "jobs", "prune", *args], env=subprocess_env, capture_output=True, text=True, timeout=60
        )
        assert result.returncode == 0, result.stderr
        return result.stdout

    assert prune("--dry-run").startswith("would delete 2 occurrences finished before ")
    assert Occurrence.objects.count() == 3
    assert prune().startswith("deleted 2 occurrences finished before ")
    assert json.dumps(list(Occurrence.objects.values_list("job_name", flat=True))) == '["busy"]'
