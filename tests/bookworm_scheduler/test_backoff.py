"""Backoff: a cap doubling from 1 s to 30 s by default, each delay between half the cap and the cap; its named
uses; the doubling of a stored retry."""

import random
from datetime import timedelta

import pytest

from bookworm_scheduler.kernel import backoff as backoffs
from bookworm_scheduler.kernel.backoff import Backoff, doubling

pytestmark = pytest.mark.unit


class Lowest:
    """A source of randomness that always draws the lower bound."""

    def uniform(self, a, b):
        return a


class Highest:
    """A source of randomness that always draws the upper bound."""

    def uniform(self, a, b):
        return b


def test_a_seeded_random_gives_repeatable_delays():
    backoff = Backoff(rng=random.Random(7))

    assert [round(backoff.next(), 3) for _ in range(7)] == [0.662, 1.151, 3.302, 4.29, 12.287, 20.485, 15.87]


def test_the_delays_lie_between_half_a_cap_and_a_cap_that_doubles_from_one_second_up_to_thirty():
    lowest, highest = Backoff(rng=Lowest()), Backoff(rng=Highest())

    assert [lowest.next() for _ in range(7)] == [0.5, 1, 2, 4, 8, 15, 15]
    assert [highest.next() for _ in range(7)] == [1, 2, 4, 8, 16, 30, 30]


def test_every_delay_drawn_stays_within_its_bounds():
    bounds = [(0.5, 1), (1, 2), (2, 4), (4, 8), (8, 16), (15, 30), (15, 30)]
    for seed in range(200):
        backoff = Backoff(rng=random.Random(seed))
        for low, high in bounds:
            assert low <= backoff.next() <= high


def test_first_and_ceiling_set_the_range_of_the_caps():
    backoff = Backoff(first=0.5, ceiling=5, rng=Highest())

    assert [backoff.next() for _ in range(6)] == [0.5, 1, 2, 4, 5, 5]


def test_a_success_starts_the_delays_over():
    backoff = Backoff(rng=Highest())
    backoff.next()
    backoff.next()

    backoff.reset()

    assert backoff.next() == 1


@pytest.mark.parametrize(
    "use, caps",
    [
        (backoffs.after_outage, [0.5, 1.0, 2.0, 4.0, 5.0, 5.0]),
        (backoffs.recording, [0.2, 0.4, 0.8, 1.6, 3.2, 5.0]),
        (backoffs.conflict, [0.05, 0.1, 0.2, 0.4, 0.8, 1.0]),
        (backoffs.handover, [1.0, 2.0, 4.0, 8.0, 16.0, 30.0]),
    ],
)
def test_each_named_use_has_its_own_caps(use, caps):
    backoff = use()
    backoff.rng = Highest()

    assert [backoff.next() for _ in caps] == caps


def test_a_stored_retry_waits_first_then_doubling_up_to_the_ceiling():
    first, ceiling = timedelta(seconds=30), timedelta(hours=1)

    assert [doubling(first, attempts, ceiling).total_seconds() for attempts in range(1, 9)] == [
        30,
        60,
        120,
        240,
        480,
        960,
        1920,
        3600,
    ]
