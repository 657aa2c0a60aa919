"""The reconnect backoff: about 1 s at first, doubling up to 30 s."""

from bookworm_scheduler.backoff import Backoff


def test_the_delay_doubles_from_one_second_up_to_thirty():
    backoff = Backoff()

    assert [backoff.next() for _ in range(7)] == [1, 2, 4, 8, 16, 30, 30]


def test_a_success_starts_the_delays_over():
    backoff = Backoff()
    backoff.next()
    backoff.next()

    backoff.reset()

    assert backoff.next() == 1
