"""The celery executor and the misfire policy: instants that could not be handed over in time.

While RabbitMQ is down (or no worker takes anything over), claims are given back and instants
wait; handed over later than SCHEDULER_MISFIRE_GRACE_SECONDS after they fell due, they are
judged by their job's misfire policy, as planning judges the instants no scheduler was up for.
"""

import subprocess
import uuid
from datetime import timedelta

import pytest

from bookworm_scheduler.kernel.clock import database_now
from jobs.engine import store
from jobs.engine.definitions import load_definition
from jobs.handover.executor import CeleryExecutor
from jobs.models import Attempt, Occurrence, Priority
from tests.jobs.celery_helpers import claim_ready, messages_in
from tests.jobs.helpers import make_definition, wait_for

pytestmark = [pytest.mark.django_db(transaction=True), pytest.mark.slow]


@pytest.fixture
def executor(celery_queue):
    return CeleryExecutor(
        session=uuid.uuid4(),
        definition_of=load_definition,
        queue=celery_queue,
        max_in_flight=100,
        hard_limit_margin=1,
        grace=timedelta(seconds=60),
    )


def planned(task, *, ago: timedelta) -> Occurrence:
    """A scheduled instant of task, as planning inserted it when it fell due (ago)."""
    instant = database_now() - ago
    return Occurrence.objects.create(
        task=task, job_name=task.name, scheduled_for=instant, run_after=instant, priority=Priority.NORMAL
    )


def hand_over_ready(executor) -> None:
    """Claim what is ready, oldest first, and hand it over, as a scheduler's dispatch pass does."""
    executor.submit_all(claim_ready(executor, limit=100), long_running=False)


def status_of(occurrence) -> str:
    return Occurrence.objects.values_list("status", flat=True).get(id=occurrence.id)


def test_under_skip_an_instant_handed_over_past_the_grace_is_missed_and_never_sent(
    executor, celery_queue, no_seed_definitions
):
    task = make_definition("skipped-when-late", "test.publish", every=3600, misfire_policy="skip")
    late = planned(task, ago=timedelta(minutes=5))
    hand_over_ready(executor)

    late.refresh_from_db()
    assert (late.status, late.attempts) == ("missed", 0)
    assert late.reason.startswith("missed: not handed over to Celery until")
    assert late.reason.endswith("misfire policy skip)")
    assert Attempt.objects.count() == 0
    assert messages_in(celery_queue) == 0


def test_under_skip_an_instant_within_the_grace_is_handed_over(executor, workers, no_seed_definitions):
    task = make_definition("on-time", "test.publish", every=3600, misfire_policy="skip")
    workers()
    on_time = planned(task, ago=timedelta(seconds=10))
    hand_over_ready(executor)

    wait_for(lambda: status_of(on_time) == "succeeded", timeout=30)


def test_under_run_once_only_the_latest_late_instant_runs(executor, workers, no_seed_definitions):
    task = make_definition("latest-only", "test.publish", every=3600, misfire_policy="run_once")
    workers()
    older = planned(task, ago=timedelta(minutes=5))
    latest = planned(task, ago=timedelta(minutes=4))
    hand_over_ready(executor)

    wait_for(lambda: status_of(latest) == "succeeded", timeout=30)
    assert status_of(older) == "missed"


def test_under_run_all_every_late_instant_runs(executor, workers, no_seed_definitions):
    task = make_definition("all-of-them", "test.publish", every=3600, misfire_policy="run_all")
    workers()
    older = planned(task, ago=timedelta(minutes=5))
    latest = planned(task, ago=timedelta(minutes=4))
    hand_over_ready(executor)

    wait_for(lambda: status_of(older) == status_of(latest) == "succeeded", timeout=30)


def test_a_manual_run_is_handed_over_however_late(executor, workers, no_seed_definitions):
    task = make_definition("asked-for", "test.publish", every=3600, misfire_policy="skip")
    workers()
    asked = store.trigger(task, priority=Priority.NORMAL, now=database_now() - timedelta(minutes=5))
    hand_over_ready(executor)

    wait_for(lambda: status_of(asked) == "succeeded", timeout=30)


def rabbitmqctl(*args: str) -> None:
    subprocess.run(["rabbitmqctl", "-q", *args], check=True, capture_output=True, timeout=120)


def test_instants_due_while_rabbitmq_is_down_past_the_grace_are_recorded_missed(
    scheduler_processes, celery_env, workers, no_seed_definitions
):
    task = make_definition("every-second", "test.publish", every=1, misfire_policy="skip")
    workers()
    scheduler_processes(env=dict(celery_env, SCHEDULER_MISFIRE_GRACE_SECONDS="1"), instance_id="hands-over")
    wait_for(lambda: Occurrence.objects.filter(task=task, status="succeeded").exists(), timeout=30)

    try:
        rabbitmqctl("stop_app")
        # Bounds the broker's outage from within: down after stop_app returns, up no earlier than start_app is run.
        down_at = database_now()
        # Down until a hand-over failed, and instants fell due for 5 s (past the 1 s grace).
        wait_for(lambda: Occurrence.objects.filter(reason__startswith="released: the broker").exists(), timeout=30)
        wait_for(lambda: Occurrence.objects.filter(scheduled_for__gte=down_at + timedelta(seconds=5)).exists())
    finally:
        up_from = database_now()
        rabbitmqctl("start_app")
        rabbitmqctl("await_startup", "--timeout", "120")
    restarted_at = database_now()

    # Each instant due while it was down is then recorded: missed if it was late past the grace.
    during = Occurrence.objects.filter(task=task, scheduled_for__gt=down_at, scheduled_for__lt=restarted_at)
    wait_for(lambda: not during.filter(status__in=["scheduled", "running"]).exists(), timeout=60)
    # Due more than the grace (and a second's margin) before the broker could take anything again.
    too_late = during.filter(scheduled_for__lt=up_from - timedelta(seconds=2))
    assert too_late.count() >= 3
    assert set(too_late.values_list("status", flat=True)) == {"missed"}
    assert all(reason.startswith("missed: not handed over") for reason in too_late.values_list("reason", flat=True))
    # Planning went on in time meanwhile: the failing hand-overs did not hold the scheduler up.
    assert all(
        created - scheduled < timedelta(seconds=1)
        for created, scheduled in during.values_list("created_at", "scheduled_for")
    )
    # And handing over resumes.
    wait_for(lambda: Occurrence.objects.filter(task=task, status="succeeded", scheduled_for__gt=restarted_at).exists())
