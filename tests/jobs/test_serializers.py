"""The history filter of `jobs history` and /tickerq/api/history/, as a query string or the options give it, and the
rows' values: no database."""

from datetime import UTC, datetime, timedelta

import pytest
from pydantic import ValidationError

from jobs.web.serializers import BadFilter, HistoryFilter, iso, milliseconds, occurrence_url, occurrence_urls

pytestmark = pytest.mark.unit


def test_an_empty_filter_asks_for_the_twenty_newest_runs_of_every_job():
    assert HistoryFilter() == HistoryFilter(job=None, status=None, manual=None, limit=20)


def test_every_parameter_of_a_query_string_is_read_and_an_empty_one_is_left_out():
    query = {"job": "", "status": "failed", "manual": "Yes", "limit": "5"}

    assert HistoryFilter(**query) == HistoryFilter(job=None, status="failed", manual=True, limit=5)


@pytest.mark.parametrize(
    "manual, expected",
    [("1", True), ("true", True), ("YES", True), ("0", False), ("False", False), ("no", False), ("", None)],
)
def test_manual_is_a_yes_or_a_no_in_any_case(manual, expected):
    assert HistoryFilter(manual=manual).manual is expected


@pytest.mark.parametrize(
    "query, message",
    [
        ({"limit": "0"}, "limit must be a whole number from 1 to 1000"),
        ({"limit": 1001}, "limit must be a whole number from 1 to 1000"),
        ({"limit": "-5"}, "limit must be a whole number from 1 to 1000"),
        ({"limit": "ten"}, "limit must be a whole number from 1 to 1000"),
        ({"limit": 2.5}, "limit must be a whole number from 1 to 1000"),
        (
            {"status": "exploded"},
            "status must be one of scheduled, running, succeeded, failed, skipped, missed, expired",
        ),
        ({"manual": "perhaps"}, "manual must be true or false"),
        (
            {"status": "exploded", "limit": "0"},
            "status must be one of scheduled, running, succeeded, failed, skipped, missed, expired; "
            "limit must be a whole number from 1 to 1000",
        ),
    ],
)
def test_a_bad_parameter_is_refused_naming_it(query, message):
    with pytest.raises(BadFilter) as raised:
        HistoryFilter(**query)

    assert str(raised.value) == message


def test_a_parameter_the_filter_does_not_have_is_named_with_the_known_ones():
    assert (
        HistoryFilter.unknown_parameter(["job", "colour", "age"])
        == "unknown parameter: age (known: job, status, manual, limit)"
    )
    assert HistoryFilter.unknown_parameter(["job", "limit"]) is None


def test_a_filter_is_not_changed_after_it_is_made():
    history = HistoryFilter(limit=5)

    with pytest.raises(ValidationError):
        history.limit = 1000


def test_the_largest_limit_is_allowed():
    assert HistoryFilter(limit=1000).limit == 1000


def test_instants_are_iso_8601_and_a_missing_one_is_null():
    assert iso(datetime(2026, 3, 1, 12, 30, tzinfo=UTC)) == "2026-03-01T12:30:00+00:00"
    assert iso(None) is None


def test_the_url_of_many_occurrences_is_each_ones_own():
    url = occurrence_urls()

    assert [url(7), url(1234567890123)] == ["/tickerq/api/occurrences/7", "/tickerq/api/occurrences/1234567890123"]
    assert url(7) == occurrence_url(7)


@pytest.mark.parametrize(
    "duration, ms", [(None, None), (timedelta(0), 0), (timedelta(seconds=1, microseconds=2400), 1002)]
)
def test_durations_are_whole_milliseconds_and_a_missing_one_is_null(duration, ms):
    assert milliseconds(duration) == ms
