"""Liveness: a scheduler's, all of it from the lease; a relay's."""

from datetime import UTC, datetime, timedelta

import pytest

from bookworm_scheduler.kernel.liveness import Liveness, relay_liveness, scheduler_liveness

pytestmark = pytest.mark.unit


def test_a_lease_of_30_s_is_renewed_every_10_s_stale_after_20_s_and_lost_after_30_s():
    liveness = Liveness.of_lease(timedelta(seconds=30))

    assert (liveness.renew_every, liveness.stale_after, liveness.lost_after) == (
        timedelta(seconds=10),
        timedelta(seconds=20),
        timedelta(seconds=30),
    )


def test_silence_is_stale_only_past_two_renewals():
    liveness, now = Liveness.of_lease(timedelta(seconds=30)), datetime(2026, 12, 7, 12, 0, tzinfo=UTC)

    assert not liveness.is_stale(now - timedelta(seconds=20), now)
    assert liveness.is_stale(now - timedelta(seconds=21), now)


def test_the_schedulers_liveness_is_read_from_the_lease_setting(settings):
    settings.SCHEDULER_LEASE_SECONDS = 12

    assert scheduler_liveness() == Liveness.of_lease(timedelta(seconds=12))


def test_a_relay_beats_every_5_s_is_stale_after_the_health_age_and_lost_after_2_minutes(settings):
    settings.HEALTH_HEARTBEAT_MAX_AGE_SECONDS = 45

    assert relay_liveness() == Liveness(
        renew_every=timedelta(seconds=5),
        stale_after=timedelta(seconds=45),
        lost_after=timedelta(minutes=2),
        idle_in_transaction=timedelta(minutes=2),
    )


def test_a_schedulers_transaction_may_sit_idle_two_renewals_so_its_locks_free_before_its_lease_runs_out():
    assert Liveness.of_lease(timedelta(seconds=30)).idle_in_transaction == timedelta(seconds=20)


def test_a_relays_transaction_may_sit_idle_as_long_as_its_batch_waits_for_the_broker_if_longer_than_2_minutes(
    settings,
):
    settings.OUTBOX_CONFIRM_TIMEOUT_SECONDS, settings.OUTBOX_BLOCKED_TIMEOUT_SECONDS = 90.0, 60

    assert relay_liveness().idle_in_transaction == timedelta(seconds=155)
