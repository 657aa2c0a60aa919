"""A job's policy as a value: its defaults, what it refuses, and when a failed attempt is tried again."""

from datetime import UTC, datetime

import pytest

from jobs.engine.policy import MisfirePolicy, Policy, Priority

pytestmark = pytest.mark.unit

FAILED_AT = datetime(2026, 3, 1, 12, 0, tzinfo=UTC)


def test_the_default_policy_is_normal_priority_no_retry_no_timeout_and_run_once():
    policy = Policy()

    assert (policy.priority, policy.retries, policy.retry_intervals, policy.timeout, policy.misfire) == (
        Priority.NORMAL,
        0,
        (),
        None,
        MisfirePolicy.RUN_ONCE,
    )


def test_plain_values_become_the_enums_and_intervals_a_tuple():
    policy = Policy(priority=2, misfire="skip", retry_intervals=[10, 60])

    assert policy.priority is Priority.HIGH
    assert policy.misfire is MisfirePolicy.SKIP
    assert policy.retry_intervals == (10, 60)


@pytest.mark.parametrize(
    "keywords, message",
    [
        ({"retries": -1}, "retries and retry intervals must not be negative"),
        ({"retry_intervals": [5, -1]}, "retries and retry intervals must not be negative"),
        ({"timeout": 0}, "a timeout must be positive"),
        ({"priority": 7}, "7 is not a valid Priority"),
        ({"misfire": "never"}, "'never' is not a valid MisfirePolicy"),
    ],
)
def test_a_policy_that_cannot_be_kept_is_refused(keywords, message):
    with pytest.raises(ValueError) as raised:
        Policy(**keywords)

    assert str(raised.value) == message


def test_only_the_long_running_priority_is_long_running():
    assert [Policy(priority=priority).long_running for priority in Priority] == [False, False, False, True]


def test_the_priorities_are_named_on_the_command_line_in_lower_case():
    assert [priority.cli_name for priority in Priority] == ["low", "normal", "high", "long_running"]


def test_each_retry_waits_its_interval_and_the_last_interval_repeats():
    policy = Policy(retries=3, retry_intervals=[10, 60])

    assert [policy.retry_at(attempt, FAILED_AT) for attempt in (1, 2, 3)] == [
        datetime(2026, 3, 1, 12, 0, 10, tzinfo=UTC),
        datetime(2026, 3, 1, 12, 1, 0, tzinfo=UTC),
        datetime(2026, 3, 1, 12, 1, 0, tzinfo=UTC),
    ]


def test_no_retry_is_left_after_the_last_one():
    policy = Policy(retries=3, retry_intervals=[10, 60])

    assert policy.retry_at(4, FAILED_AT) is None


def test_a_policy_without_retries_never_retries():
    assert Policy().retry_at(1, FAILED_AT) is None


def test_a_retry_without_intervals_is_due_at_once():
    assert Policy(retries=2).retry_at(2, FAILED_AT) == datetime(2026, 3, 1, 12, 0, tzinfo=UTC)


def test_a_retry_interval_may_be_a_fraction_of_a_second():
    assert Policy(retries=1, retry_intervals=[0.5]).retry_at(1, FAILED_AT) == datetime(
        2026, 3, 1, 12, 0, 0, 500000, tzinfo=UTC
    )
