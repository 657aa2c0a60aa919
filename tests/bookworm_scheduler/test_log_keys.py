"""The log events of a real scheduler and relay have the keys docs/logging.md promises, in JSON too."""

import json
import logging
import re
import uuid
from datetime import timedelta
from pathlib import Path

import pytest
from django.conf import settings
from django.db import transaction
from django.utils import timezone
from django_celery_beat.models import PeriodicTask
from pythonjsonlogger.json import JsonFormatter

from jobs.engine import store
from outbox.models import OutboxMessage
from outbox.publishing import publish
from tests.jobs import sample_jobs  # noqa: F401  (registers the sample jobs)
from tests.jobs.helpers import make_definition, make_scheduler
from tests.outbox.helpers import Rabbit, build_relay, make_event_type

DOC = Path(settings.BASE_DIR) / "docs" / "logging.md"


def documented_events() -> dict[str, tuple[str, set[str]]]:
    """{action: (level cell, keys every such event has)} from the tables of docs/logging.md.

    Keys are the back-quoted names of the keys cell, except those in parentheses (the cases
    in which they appear or are absent).
    """
    events = {}
    for line in DOC.read_text().splitlines():
        match = re.match(r"^\| `([a-z_]+)` \|([^|]+)\|[^|]+\|([^|]*)\|$", line)
        if match:
            action, level, keys = match.groups()
            keys = re.sub(r"\([^)]*\)", "", keys)
            events[action] = (level.strip(), set(re.findall(r"`([a-z_]+)`", keys)))
    return events


@pytest.fixture
def no_seed(db):
    PeriodicTask.objects.all().delete()


def run_a_scheduler(clock):
    """Start a scheduler; run a success, a retried failure that then fails for good, a skip and a reaped run; stop."""
    scheduler = make_scheduler(clock)
    scheduler.start(clock.now)
    PeriodicTask.objects.all().delete()  # the seed definitions start() created: their events would go out
    store.trigger(make_definition("fine", every=60), now=clock.now, priority=1)
    store.trigger(make_definition("failing", "test.fail", every=3600, max_retries=1), now=clock.now, priority=1)
    paused = make_definition("paused", cron="* * * * *", planned_through=clock.now)
    scheduler.planner.refresh()
    scheduler.planner.plan(clock.advance(minutes=1))
    paused.enabled = False
    paused.save()
    scheduler.planner.refresh()
    scheduler.run_ready(clock.now)
    scheduler.run_ready(clock.now)  # the failing job's retry

    reaped = store.trigger(make_definition("reaped", every=60), now=clock.now, priority=1)
    [claimed] = store.claim_ready(
        now=clock.now, session=scheduler.session, scheduler="test", lease=timedelta(seconds=1), long_running=False
    )
    assert claimed.id == reaped.id
    reaper = make_scheduler(clock, instance_id="reaper")
    reaper.planner.refresh()
    reaper.reap(clock.advance(seconds=5))
    scheduler.runner.run(claimed, None)
    scheduler.shutdown(timeout=1)


def run_a_relay():
    """Deliver one message, have one returned, one retried and one dead."""
    rabbit = Rabbit()
    routed, unbound = make_event_type(), make_event_type()
    rabbit.exchanges += [routed.exchange(), unbound.exchange()]
    rabbit.bind_queue(routed.exchange())
    relay = build_relay(max_attempts=2)
    with transaction.atomic():
        publish(routed())
        publish(unbound())
        # The broker refuses to declare exchanges named amq.*: a failed send, retried, then dead.
        refused = OutboxMessage.objects.create(
            exchange=f"amq.bookworm-test-{uuid.uuid4().hex[:8]}", message_types=[], body={"id": "x"}
        )
    relay.broker.connect()
    try:
        relay.deliver_batch(relay.clock())
        OutboxMessage.objects.filter(id=refused.id).update(available_at=timezone.now())
        relay.deliver_batch(relay.clock())
    finally:
        relay.broker.close()
        rabbit.close()


@pytest.mark.django_db(transaction=True)
def test_the_main_events_of_a_scheduler_and_a_relay_have_their_documented_keys(clock, no_seed, caplog):
    with caplog.at_level(logging.DEBUG, logger="jobs"), caplog.at_level(logging.DEBUG, logger="outbox"):
        run_a_scheduler(clock)
        run_a_relay()

    documented = documented_events()
    events = [record for record in caplog.records if hasattr(record, "action")]
    seen = {record.action for record in events}
    assert seen >= {
        "scheduler_started",
        "occurrence_succeeded",
        "retry_scheduled",
        "occurrence_failed",
        "occurrence_skipped",
        "lease_expired",
        "lease_lost",
        "scheduler_stopped",
        "outbox_delivered",
        "outbox_unroutable",
        "outbox_retry",
        "outbox_dead",
        "outbox_channel_closed",
    }
    assert seen <= set(documented), f"undocumented: {seen - set(documented)}"
    formatter = JsonFormatter(settings.LOGGING["formatters"]["json"]["fmt"])
    for record in events:
        level, keys = documented[record.action]
        assert record.levelname in level, (record.action, record.levelname)
        logged = json.loads(formatter.format(record))
        assert {"asctime", "levelname", "name", "message", "action"} <= set(logged)
        assert keys <= set(logged), (record.action, keys - set(logged))


@pytest.mark.django_db(transaction=True)
def test_the_run_events_name_the_job_occurrence_attempt_and_instance(clock, no_seed, caplog):
    occurrence = store.trigger(make_definition("failing", "test.fail", every=60), now=clock.now, priority=1)
    scheduler = make_scheduler(clock)
    scheduler.planner.refresh()
    scheduler.run_ready(clock.now)

    [event] = [record for record in caplog.records if getattr(record, "action", None) == "occurrence_failed"]
    logged = json.loads(JsonFormatter(settings.LOGGING["formatters"]["json"]["fmt"]).format(event))
    assert {key: logged[key] for key in ("job_name", "occurrence", "attempt", "instance", "status", "error")} == {
        "job_name": "failing",
        "occurrence": occurrence.id,
        "attempt": 1,
        "instance": "test",
        "status": "failed",
        "error": "RuntimeError: the sample job failed on purpose",
    }
    assert logged["levelname"] == "ERROR" and logged["duration_ms"] >= 0 and logged["retry_at"] is None


@pytest.mark.unit
def test_every_documented_event_is_logged_somewhere():
    sources = "\n".join(
        path.read_text()
        for folder in ("jobs", "outbox", "bookworm_scheduler")
        for path in (Path(settings.BASE_DIR) / folder).rglob("*.py")
    )
    for action in documented_events():
        assert f'"{action}"' in sources or action in ("outbox_requeued", "outbox_discarded"), action
