import itertools
from datetime import UTC, datetime, timedelta
from zoneinfo import ZoneInfo

import pytest

from jobs.engine import registry
from jobs.engine.registry import get_job, job
from jobs.engine.schedules import (
    InvalidSchedule,
    cron_instants,
    did_you_mean,
    get_zone,
    interval_instants,
    next_instants,
    validate_cron,
)

pytestmark = pytest.mark.unit

UTC = UTC
BERLIN = ZoneInfo("Europe/Berlin")
NEW_YORK = ZoneInfo("America/New_York")


def utc(*args):
    return datetime(*args, tzinfo=UTC)


def local(instants, zone):
    return [i.astimezone(zone).strftime("%m-%d %H:%M %Z") for i in instants]


def test_it_returns_utc_instants_strictly_after_the_start():
    instants = next_instants(cron_instants("0 * * * *", "UTC", utc(2026, 1, 1, 10, 0)), 2)
    assert instants == [utc(2026, 1, 1, 11, 0), utc(2026, 1, 1, 12, 0)]
    assert all(i.tzinfo == UTC for i in instants)


def test_it_evaluates_cron_in_the_jobs_zone():
    instants = next_instants(cron_instants("0 9 * * *", "America/New_York", utc(2026, 1, 1)), 1)
    assert instants == [utc(2026, 1, 1, 14, 0)]  # 09:00 EST


def test_day_of_month_or_day_of_week_when_both_are_restricted():
    # Debian cron: the 13th of the month OR any Friday.
    instants = next_instants(cron_instants("0 0 13 * 5", "UTC", utc(2026, 2, 1)), 4)
    assert [i.day for i in instants] == [6, 13, 20, 27]  # Fridays of Feb 2026, and Fri 13th once


def test_a_star_day_field_means_and():
    instants = next_instants(cron_instants("0 0 * * 1", "UTC", utc(2026, 2, 1)), 2)
    assert [i.weekday() for i in instants] == [0, 0]


def test_a_fixed_time_in_the_skipped_hour_runs_right_after_the_spring_change():
    instants = next_instants(cron_instants("30 2 * * *", BERLIN, utc(2026, 3, 28, 12)), 2)
    assert local(instants, BERLIN) == ["03-29 03:00 CEST", "03-30 02:30 CEST"]


def test_a_fixed_time_in_the_repeated_hour_runs_once_in_the_autumn():
    instants = next_instants(cron_instants("30 2 * * *", BERLIN, utc(2026, 10, 24, 12)), 2)
    assert local(instants, BERLIN) == ["10-25 02:30 CEST", "10-26 02:30 CET"]


def test_a_wildcard_job_follows_the_clock_through_the_repeated_hour():
    start = datetime(2026, 10, 25, 1, 50, tzinfo=BERLIN)
    instants = next_instants(cron_instants("*/30 * * * *", BERLIN, start), 5)
    assert local(instants, BERLIN) == [
        "10-25 02:00 CEST",
        "10-25 02:30 CEST",
        "10-25 02:00 CET",
        "10-25 02:30 CET",
        "10-25 03:00 CET",
    ]
    gaps = {b - a for a, b in itertools.pairwise(instants)}
    assert gaps == {timedelta(minutes=30)}


def test_a_wildcard_job_skips_the_missing_hour_in_the_spring():
    instants = next_instants(cron_instants("0 * * * *", NEW_YORK, datetime(2026, 3, 8, 0, 30, tzinfo=NEW_YORK)), 3)
    assert local(instants, NEW_YORK) == ["03-08 01:00 EST", "03-08 03:00 EDT", "03-08 04:00 EDT"]


@pytest.mark.parametrize(
    "expression",
    ["61 * * * *", "* * * *", "* * * * * *", "a b c d e", "0 0 31 2 *", "*/0 * * * *", ""],
)
def test_a_bad_expression_is_an_invalid_schedule(expression):
    with pytest.raises(InvalidSchedule):
        validate_cron(expression)


def test_an_unknown_zone_is_an_invalid_schedule():
    with pytest.raises(InvalidSchedule, match="unknown time zone"):
        validate_cron("* * * * *", "Mars/Olympus_Mons")


def test_an_interval_fires_on_a_grid_anchored_at_its_start():
    anchor = utc(2026, 1, 1, 0, 0, 7)
    every = timedelta(minutes=10)
    assert next_instants(interval_instants(every, anchor, utc(2026, 1, 1, 5, 3)), 2) == [
        utc(2026, 1, 1, 5, 10, 7),
        utc(2026, 1, 1, 5, 20, 7),
    ]
    assert next_instants(interval_instants(every, anchor, utc(2026, 1, 1, 5, 10, 7)), 1) == [utc(2026, 1, 1, 5, 20, 7)]
    assert next_instants(interval_instants(every, anchor, utc(2025, 1, 1)), 1) == [anchor]


@pytest.mark.parametrize(
    "macro, fields",
    [
        ("@yearly", "0 0 1 1 *"),
        ("@annually", "0 0 1 1 *"),
        ("@monthly", "0 0 1 * *"),
        ("@weekly", "0 0 * * 0"),
        ("@daily", "0 0 * * *"),
        ("@midnight", "0 0 * * *"),
        ("@hourly", "0 * * * *"),
    ],
)
def test_debian_crons_macros_are_read_as_their_five_fields(macro, fields):
    assert validate_cron(macro) == fields


def test_a_macro_is_planned_in_the_jobs_zone():
    instants = next_instants(cron_instants("@weekly", BERLIN, utc(2026, 3, 2)), 2)
    assert local(instants, BERLIN) == ["03-08 00:00 CET", "03-15 00:00 CET"]


def test_validate_cron_gives_the_expression_with_single_blanks():
    assert validate_cron("  30   2 * * 1-5 ") == "30 2 * * 1-5"


@pytest.mark.parametrize(
    "expression, message",
    [
        (
            "@reboot",
            "@reboot is not supported: it means 'when cron starts', and a scheduler runs jobs at instants, "
            "not at its own start; use a cron expression or another macro",
        ),
        (
            "@dayly",
            "unknown cron macro '@dayly' (did you mean @daily?); "
            "known: @yearly, @annually, @monthly, @weekly, @daily, @midnight, @hourly",
        ),
        ("0 0 31 2 *", "never fires: day-of-month 31 does not occur in month 2 in cron expression '0 0 31 2 *'"),
        (
            "0 0 31 4,6,9,11 *",
            "never fires: day-of-month 31 does not occur in month 4,6,9,11 in cron expression '0 0 31 4,6,9,11 *'",
        ),
        ("0 0 32 2 *", "Bad day-of-month in cron expression '0 0 32 2 *'"),
        ("0 0 31 13 *", "Bad month in cron expression '0 0 31 13 *'"),
    ],
)
def test_a_refused_expression_says_why(expression, message):
    with pytest.raises(InvalidSchedule) as raised:
        validate_cron(expression)
    assert str(raised.value) == message


def test_a_day_some_years_have_fires_and_a_day_of_week_makes_any_day_fire():
    assert next_instants(cron_instants("0 0 29 2 *", "UTC", utc(2026, 1, 1)), 1) == [utc(2028, 2, 29)]
    assert next_instants(cron_instants("0 0 31 2 1", "UTC", utc(2026, 1, 1)), 1) == [utc(2026, 2, 2)]  # OR


@pytest.mark.parametrize(
    "zone, message",
    [
        ("Europe/paris", "unknown time zone: Europe/paris (did you mean Europe/Paris?)"),
        ("Europ/Berlinn", "unknown time zone: Europ/Berlinn (did you mean Europe/Berlin?)"),
        ("Nowhere/City", "unknown time zone: Nowhere/City"),
    ],
)
def test_an_unknown_zone_names_the_closest_one(zone, message):
    with pytest.raises(InvalidSchedule) as raised:
        get_zone(zone)
    assert str(raised.value) == message


def test_did_you_mean_prefers_the_same_name_in_another_case():
    names = ["ResendErrorEmailJob", "CleanUpSentEmailJob"]
    assert did_you_mean("resenderroremailjob", names) == " (did you mean ResendErrorEmailJob?)"
    assert did_you_mean("CleanUpSentMailJob", names) == " (did you mean CleanUpSentEmailJob?)"
    assert did_you_mean("Nope", names) == ""


def test_a_job_declared_with_a_macro_keeps_its_five_fields(monkeypatch):
    monkeypatch.setattr(registry, "_registry", {})

    job("nightly", cron="@daily")(lambda context: None)

    assert get_job("nightly").cron == "0 0 * * *"
    with pytest.raises(InvalidSchedule, match="^@reboot is not supported"):
        job("at.start", cron="@reboot")
