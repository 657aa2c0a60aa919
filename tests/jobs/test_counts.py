"""The overview's counts (jobs/web/counts.py): finished runs and deliveries per hour, per day and in total.

The pages that show them: test_dashboard.py.
"""

from collections import Counter
from datetime import UTC, datetime, timedelta
from zoneinfo import ZoneInfo

import pytest

from jobs.models import Occurrence
from jobs.web import counts
from outbox.models import OutboxMessage

pytestmark = pytest.mark.django_db

NOW = datetime(2026, 3, 1, 12, 30, tzinfo=UTC)


@pytest.fixture(autouse=True)
def nothing_held():
    """Nothing counted by another test (rolled back, its rows are gone but its counts would stay)."""
    counts.reset()
    yield
    counts.reset()


def occurrence(job_name, status, finished_at, reason=""):
    return Occurrence.objects.create(
        job_name=job_name,
        scheduled_for=finished_at - timedelta(seconds=5),
        run_after=finished_at - timedelta(seconds=5),
        status=status,
        finished_at=finished_at,
        reason=reason,
        attempts=1,
    )


def message(status, created_at, delivered_at=None):
    return OutboxMessage.objects.create(
        message_types=["urn:message:BookWorm.Contracts:Test"],
        exchange="BookWorm.Contracts:Test",
        body={},
        status=status,
        created_at=created_at,
        delivered_at=delivered_at,
    )


def at(hour, minute=0, second=0, day=1):
    return datetime(2026, 3, day, hour, minute, second, tzinfo=UTC)


def feb(day, hour, minute=0, second=0):
    return datetime(2026, 2, day, hour, minute, second, tzinfo=UTC)


def week_of_runs():
    """Finished occurrences around the edges of the last 24 hours and of the last 7 days (UTC) before NOW."""
    occurrence("a", "succeeded", at(12, 5))
    occurrence("a", "succeeded", at(0, 0))  # today's first instant
    occurrence("a", "failed", at(11, 59, 59))
    occurrence("a", "missed", feb(28, 13, 0))  # 23.5 hours ago
    occurrence("a", "skipped", feb(28, 12, 29))  # 24 hours and a minute ago
    occurrence("a", "failed", feb(25, 10, 0))
    occurrence("a", "succeeded", feb(23, 0, 0))  # the first instant of the first day
    occurrence("a", "failed", feb(22, 23, 59, 59))  # the day before the first day
    occurrence("a", "succeeded", at(12, 31))  # after now
    Occurrence.objects.create(job_name="a", scheduled_for=at(12, 0), run_after=at(12, 0), status="scheduled")


# Per hour.


def test_runs_per_hour_split_succeeded_and_failed_by_the_hour_they_finished():
    occurrence("a", "succeeded", at(12, 5))
    occurrence("a", "succeeded", at(12, 10))
    occurrence("a", "failed", at(11, 59, 59))
    occurrence("a", "succeeded", at(11, 0))
    occurrence("a", "succeeded", datetime(2026, 2, 28, 13, 0, tzinfo=UTC))  # the first hour shown
    occurrence("a", "succeeded", datetime(2026, 2, 28, 12, 59, 59, tzinfo=UTC))  # before the first hour shown
    occurrence("a", "skipped", at(12, 20))
    occurrence("a", "succeeded", at(12, 31))  # after now

    runs = counts.runs_per_hour(NOW)

    assert runs["hours"][0] == datetime(2026, 2, 28, 13, 0, tzinfo=UTC) and runs["hours"][-1] == at(12, 0)
    assert runs["series"]["succeeded"] == [1] + [0] * 21 + [1, 2]
    assert runs["series"]["failed"] == [0] * 22 + [1, 0]


def test_settled_minutes_are_counted_once_and_the_last_minutes_on_every_call():
    occurrence("a", "succeeded", at(11, 0))
    assert counts.runs_per_hour(NOW)["series"]["succeeded"][-2:] == [1, 0]

    occurrence("late", "succeeded", at(11, 30))  # stamped 1 hour before it committed: never counted
    occurrence("b", "succeeded", at(12, 27))  # within the last minutes, read again on every call
    later = NOW + timedelta(seconds=5)

    assert counts.runs_per_hour(later)["series"]["succeeded"][-2:] == [1, 1]


def test_events_delivered_per_hour_count_delivered_messages_by_the_hour_of_delivery():
    message("delivered", at(12, 0), delivered_at=at(12, 10))
    message("delivered", at(12, 0), delivered_at=at(12, 20))
    message("delivered", at(10, 0), delivered_at=at(10, 15))
    message("delivered", NOW - timedelta(days=2), delivered_at=NOW - timedelta(days=2))
    message("pending", at(12, 0))

    delivered = counts.delivered_per_hour(NOW)

    assert delivered["series"]["delivered"] == [0] * 21 + [1, 0, 2]


# Per day.


def test_runs_per_day_count_each_outcome_by_the_day_it_finished():
    week_of_runs()

    per_day = counts.runs_per_day(NOW)

    assert [day.date().isoformat() for day in per_day["days"]] == [
        "2026-02-23",
        "2026-02-24",
        "2026-02-25",
        "2026-02-26",
        "2026-02-27",
        "2026-02-28",
        "2026-03-01",
    ]
    assert per_day["series"] == {
        "succeeded": [1, 0, 0, 0, 0, 0, 2],
        "failed": [0, 0, 1, 0, 0, 0, 1],
        "missed": [0, 0, 0, 0, 0, 1, 0],
        "expired": [0, 0, 0, 0, 0, 0, 0],
        "skipped": [0, 0, 0, 0, 0, 1, 0],
    }


def test_the_week_counts_settle_once_and_read_the_last_minutes_on_every_call():
    occurrence("a", "succeeded", feb(26, 9, 0))
    assert counts.runs_per_day(NOW)["series"]["succeeded"] == [0, 0, 0, 1, 0, 0, 0]

    occurrence("late", "succeeded", feb(27, 9, 0))  # committed days after its stamp: not read
    occurrence("b", "succeeded", at(12, 28))  # within the last minutes, read again on every call

    assert counts.runs_per_day(NOW + timedelta(seconds=5))["series"]["succeeded"] == [0, 0, 0, 1, 0, 0, 1]


def test_a_day_of_the_active_zone_lasts_as_long_as_the_zone_says():
    """Paris moves to summer time on 29 March 2026 at 02:00: that day has 23 hours."""
    per_quarter = Counter(
        {
            (datetime(2026, 3, 28, 22, 45, tzinfo=UTC), "succeeded"): 1,  # 23:45 CET on the 28th
            (datetime(2026, 3, 28, 23, 0, tzinfo=UTC), "succeeded"): 2,  # midnight CET, the 29th
            (datetime(2026, 3, 29, 21, 45, tzinfo=UTC), "failed"): 4,  # 23:45 CEST on the 29th
            (datetime(2026, 3, 29, 22, 0, tzinfo=UTC), "failed"): 8,  # midnight CEST, the 30th
        }
    )

    per_day = counts.runs_per_day(datetime(2026, 3, 30, 12, 0, tzinfo=UTC), per_quarter, zone=ZoneInfo("Europe/Paris"))

    assert [day.isoformat() for day in per_day["days"][-3:]] == [
        "2026-03-28T00:00:00+01:00",
        "2026-03-29T00:00:00+01:00",
        "2026-03-30T00:00:00+02:00",
    ]
    assert per_day["series"]["succeeded"][-3:] == [1, 2, 0]
    assert per_day["series"]["failed"][-3:] == [0, 4, 8]


# Totals.


def test_the_success_rate_is_rounded_down_and_a_dash_without_runs():
    assert counts.Totals({"succeeded": 1999, "failed": 1, "missed": 0, "skipped": 0}).rate == "99.9 %"
    assert counts.Totals({"succeeded": 5, "failed": 0, "missed": 3, "skipped": 0}).rate == "100.0 %"
    assert counts.Totals({"succeeded": 0, "failed": 0, "missed": 2, "skipped": 1}).rate == "–"
