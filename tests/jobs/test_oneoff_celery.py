"""One-off runs through the celery executor: handed over, run by a real worker with their payload, results kept."""

from datetime import UTC, datetime, timedelta

import pytest

from jobs import FollowUp, schedule
from jobs.models import Occurrence
from outbox.models import OutboxMessage
from tests.jobs.helpers import wait_for

pytestmark = [pytest.mark.django_db(transaction=True), pytest.mark.slow]


def row(occurrence) -> Occurrence:
    return Occurrence.objects.get(id=occurrence.id)


def test_a_worker_runs_one_off_runs_with_their_payloads_however_late(
    scheduler_processes, celery_env, workers, no_seed_definitions
):
    workers()
    env = dict(celery_env, SCHEDULER_MISFIRE_GRACE_SECONDS="1")
    scheduler_processes(env=env, instance_id="hands-over")
    now = schedule("test.echo", payload={"order_id": 9})
    late = schedule("test.echo", at=datetime.now(UTC) - timedelta(hours=1), payload={"late": True})

    wait_for(lambda: {row(now).status, row(late).status} == {"succeeded"}, timeout=30)
    assert [row(o).result for o in (now, late)] == [
        {"payload": {"order_id": 9}, "attempt": 1, "parent": None},
        {"payload": {"late": True}, "attempt": 1, "parent": None},
    ]
    assert row(now).scheduler.startswith("celery@")
    assert sorted(OutboxMessage.objects.values_list("body__occurrence", flat=True)) == sorted([now.id, late.id])


def test_a_worker_fails_a_run_whose_result_is_not_json(scheduler_processes, celery_env, workers, no_seed_definitions):
    workers()
    scheduler_processes(env=celery_env, instance_id="hands-over")
    occurrence = schedule("test.not_json")
    wait_for(lambda: row(occurrence).status == "failed", timeout=30)
    assert row(occurrence).reason.startswith("ResultNotJson: the job's result is not JSON")
    assert not OutboxMessage.objects.exists()


def test_a_worker_creates_the_follow_ups_and_runs_them(scheduler_processes, celery_env, workers, no_seed_definitions):
    workers()
    scheduler_processes(env=celery_env, instance_id="hands-over")
    parent = schedule("test.echo", payload={"n": 1}, then=[FollowUp("test.echo", payload={"after": 1})])
    child = wait_for(lambda: Occurrence.objects.filter(parent=parent, status="succeeded").first(), timeout=30)
    assert child.result == {
        "payload": {"after": 1},
        "attempt": 1,
        "parent": {"id": parent.id, "status": "succeeded", "result": row(parent).result},
    }
    assert row(parent).result["payload"] == {"n": 1}


def test_a_workers_sessions_have_the_schedulers_bound_on_an_idle_transaction(
    scheduler_processes, celery_env, workers, no_seed_definitions
):
    workers()
    scheduler_processes(env=celery_env, instance_id="hands-over")
    occurrence = schedule("test.session_setting", payload={"name": "idle_in_transaction_session_timeout"})
    wait_for(lambda: row(occurrence).status == "succeeded", timeout=30)
    # Two thirds of the lease (SCHEDULER_LEASE_SECONDS=3 here), as a scheduler's own sessions (kernel.liveness).
    assert row(occurrence).result == {"idle_in_transaction_session_timeout": "2s"}
