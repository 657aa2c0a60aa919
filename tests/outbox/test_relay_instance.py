"""A relay's instance row: registered at start, beating while it runs, stopped at exit; lost when silent."""

import os
import signal
import socket
import uuid
from datetime import UTC, datetime, timedelta

import pytest
from django.urls import reverse

import bookworm_scheduler
from bookworm_scheduler.kernel.clock import database_now
from outbox.heartbeat import Heartbeat
from outbox.models import RelayInstance
from tests.jobs.helpers import FakeClock, wait_for
from tests.outbox.helpers import run_command

T0 = datetime(2026, 3, 1, 12, 0, tzinfo=UTC)


def other_relay(*, last_seen, state="running"):
    return RelayInstance.objects.create(
        session=uuid.uuid4(),
        instance_id="other",
        host="elsewhere",
        pid=1,
        version="1.0.0",
        started_at=last_seen - timedelta(hours=1),
        last_seen=last_seen,
        state=state,
    )


@pytest.fixture
def clock():
    return FakeClock(T0)


@pytest.fixture
def heartbeat(clock):
    return Heartbeat(clock, instance_id="relay-a")


@pytest.mark.django_db
def test_the_first_beat_registers_the_relay(heartbeat):
    heartbeat.beat()

    row = RelayInstance.objects.get()
    assert (row.session, row.instance_id, row.host, row.pid, row.version) == (
        heartbeat.session,
        "relay-a",
        socket.gethostname(),
        os.getpid(),
        bookworm_scheduler.__version__,
    )
    assert (row.state, row.started_at, row.last_seen, row.stopped_at) == ("running", T0, T0, None)


@pytest.mark.django_db
def test_it_renews_the_row_every_five_seconds_and_not_more_often(heartbeat, clock):
    heartbeat.beat()

    clock.advance(seconds=4.9)
    heartbeat.beat()
    assert RelayInstance.objects.get().last_seen == T0

    clock.advance(seconds=0.1)
    heartbeat.beat()
    assert RelayInstance.objects.get().last_seen == T0 + timedelta(seconds=5)


@pytest.mark.django_db
def test_a_relay_marked_lost_that_beats_again_is_running_again(heartbeat, clock):
    heartbeat.beat()
    RelayInstance.objects.update(state="lost", stopped_at=T0)

    clock.advance(seconds=5)
    heartbeat.beat()

    row = RelayInstance.objects.get()
    assert (row.state, row.stopped_at, row.last_seen) == ("running", None, T0 + timedelta(seconds=5))


@pytest.mark.django_db
def test_a_beat_marks_relays_silent_for_two_minutes_lost(heartbeat):
    silent = other_relay(last_seen=T0 - timedelta(seconds=121))
    quiet = other_relay(last_seen=T0 - timedelta(seconds=119))

    heartbeat.beat()

    silent.refresh_from_db()
    quiet.refresh_from_db()
    assert (silent.state, silent.stopped_at) == ("lost", T0 - timedelta(seconds=121))
    assert (quiet.state, quiet.stopped_at) == ("running", None)


@pytest.mark.django_db
def test_a_beat_deletes_the_rows_of_relays_gone_for_more_than_a_day(heartbeat):
    old_stopped = other_relay(last_seen=T0 - timedelta(days=1, seconds=1), state="stopped")
    old_lost = other_relay(last_seen=T0 - timedelta(days=2), state="lost")
    recent_stopped = other_relay(last_seen=T0 - timedelta(hours=23), state="stopped")

    heartbeat.beat()

    remaining = set(RelayInstance.objects.values_list("session", flat=True))
    assert remaining == {heartbeat.session, recent_stopped.session}
    assert old_stopped.session not in remaining and old_lost.session not in remaining


@pytest.mark.django_db
def test_retire_says_goodbye(heartbeat, clock):
    heartbeat.beat()
    clock.advance(seconds=2)

    heartbeat.retire()

    row = RelayInstance.objects.get()
    stop = T0 + timedelta(seconds=2)
    assert (row.state, row.stopped_at, row.last_seen) == ("stopped", stop, stop)


@pytest.mark.django_db(transaction=True)
def test_relay_outbox_once_registers_and_retires_its_row(subprocess_env):
    result = run_command(subprocess_env, "relay_outbox", "--once")

    assert result.returncode == 0, result.stderr
    row = RelayInstance.objects.get()
    assert (row.state, row.host) == ("stopped", socket.gethostname())
    assert row.stopped_at is not None


@pytest.mark.slow
@pytest.mark.django_db(transaction=True)
def test_a_running_relay_keeps_beating_passes_the_health_check_and_stops_on_sigterm(start_relay, client):
    process = start_relay()
    first = wait_for(lambda: RelayInstance.objects.filter(pid=process.pid, state="running").first(), timeout=30)

    # Renewed every 5 s (relay_liveness) plus a wait's slice (1 s), with time to spare.
    wait_for(lambda: RelayInstance.objects.get(pk=first.pk).last_seen > first.last_seen, timeout=15)
    assert client.get("/health/?format=json").json()["relays"] == "OK"

    process.send_signal(signal.SIGTERM)
    assert process.wait(timeout=30) == 0
    row = RelayInstance.objects.get(pk=first.pk)
    assert row.state == "stopped"
    assert database_now() - row.stopped_at < timedelta(seconds=30)


@pytest.mark.django_db
def test_the_admin_lists_relays_read_only(admin_client, heartbeat):
    heartbeat.beat()

    listing = admin_client.get(reverse("admin:outbox_relayinstance_changelist"))
    detail = admin_client.get(reverse("admin:outbox_relayinstance_change", args=[heartbeat.session]))

    assert listing.status_code == 200 and "relay-a" in listing.text
    assert detail.status_code == 200 and 'name="_save"' not in detail.text
    assert admin_client.get(reverse("admin:outbox_relayinstance_add")).status_code == 403
