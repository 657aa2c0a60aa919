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
        renew_every=timedelta(seconds=5), stale_after=timedelta(seconds=45), lost_after=timedelta(minutes=2)
    )
