"""The dashboard's template tags (jobs/templatetags/dashboard_tags.py) as plain functions: durations, relative
times, round axis steps and the geometry of a bar chart. The pages that show them: test_dashboard.py."""

from datetime import UTC, datetime, timedelta
from zoneinfo import ZoneInfo

import pytest

from jobs.templatetags.dashboard_tags import (
    DAILY,
    OUTCOME_LABELS,
    Bar,
    Tick,
    axis_label,
    bar_chart,
    duration,
    nice_step,
    relative_to,
    span,
    thousands,
)

pytestmark = pytest.mark.unit

NOW = datetime(2026, 3, 1, 12, 30, tzinfo=UTC)
HOURS = [datetime(2026, 3, 1, hour, tzinfo=UTC) for hour in range(4)]
RUNS = {"succeeded": "succeeded", "failed": "failed"}
PARIS = ZoneInfo("Europe/Paris")


@pytest.mark.parametrize(
    "seconds, shown",
    [
        (0, "0 s"),
        (5, "5 s"),
        (65, "1 min 5 s"),
        (3600, "1 h"),
        (3661, "1 h 1 min"),
        (90061, "1 d 1 h"),
        (3 * 86400 + 4 * 3600 + 59, "3 d 4 h"),
    ],
)
def test_a_span_is_shown_in_its_two_largest_units(seconds, shown):
    assert span(timedelta(seconds=seconds)) == shown


def test_a_duration_is_its_span_whichever_its_sign_and_a_dash_when_unknown():
    assert duration(timedelta(seconds=-65)) == "1 min 5 s"
    assert duration(None) == "–"


def test_an_instant_is_shown_relative_to_now():
    assert relative_to(NOW + timedelta(seconds=125), NOW) == "in 2 min 5 s"
    assert relative_to(NOW - timedelta(minutes=5), NOW) == "5 min ago"
    assert relative_to(NOW, NOW) == "in 0 s"
    assert relative_to(None, NOW) == "–"


@pytest.mark.parametrize(
    "largest, step",
    [(0, 1), (1, 1), (5, 2), (9, 3), (13, 4), (100, 25), (101, 30), (1000, 250), (4801, 1500)],
)
def test_the_step_is_the_smallest_round_one_whose_four_steps_reach_the_largest_bar(largest, step):
    assert nice_step(largest) == step


def test_axis_labels_shorten_whole_thousands_from_ten_thousand():
    assert [axis_label(value) for value in (0, 1500, 9000, 10000, 10500, 40000)] == [
        "0",
        "1500",
        "9000",
        "10k",
        "10500",
        "40k",
    ]


def test_a_bar_chart_has_a_bar_per_hour_and_series_scaled_to_four_round_steps():
    chart = bar_chart("runs", "Runs", HOURS, {"succeeded": [2, 4, 0, 8], "failed": [0, 1, 0, 0]}, RUNS)

    assert len(chart["bars"]) == 8
    assert chart["bars"][:4] == [
        Bar(x=57.7, y=139.0, width=54.8, height=37.0, series="succeeded", title="00:00–01:00 UTC: 2 succeeded"),
        Bar(x=112.5, y=176.0, width=54.8, height=0.0, series="failed", title="00:00–01:00 UTC: 0 failed"),
        Bar(x=194.7, y=102.0, width=54.8, height=74.0, series="succeeded", title="01:00–02:00 UTC: 4 succeeded"),
        Bar(x=249.5, y=157.5, width=54.8, height=18.5, series="failed", title="01:00–02:00 UTC: 1 failed"),
    ]
    assert chart["y_ticks"] == [
        Tick(176.0, "0"),
        Tick(139.0, "2"),
        Tick(102.0, "4"),
        Tick(65.0, "6"),
        Tick(28.0, "8"),
    ]
    assert chart["x_ticks"] == [Tick(112.5, "00:00"), Tick(523.5, "03:00")]  # every third hour


def test_a_bar_charts_legend_and_description_give_each_series_total():
    chart = bar_chart("runs", "Runs", HOURS, {"succeeded": [2, 4, 0, 8], "failed": [0, 1, 0, 0]}, RUNS)

    assert chart["legend"] == [
        {"series": "succeeded", "label": "succeeded", "total": "14", "x": 44, "text_x": 58},
        {"series": "failed", "label": "failed", "total": "1", "x": 194, "text_x": 208},
    ]
    assert chart["description"] == "14 succeeded, 1 failed from 00:00 UTC yesterday until now, per hour."


def test_an_empty_chart_still_has_an_axis_and_large_totals_have_separators():
    empty = bar_chart("delivered", "Delivered", HOURS, {"delivered": [0, 0, 0, 0]}, {"delivered": "delivered"})
    large = bar_chart("delivered", "Delivered", HOURS, {"delivered": [40500, 1234, 0, 0]}, {"delivered": "delivered"})

    assert [tick.label for tick in empty["y_ticks"]] == ["0", "1", "2", "3", "4"]
    assert empty["bars"][0].height == 0.0
    assert [tick.label for tick in large["y_ticks"]] == ["0", "12k", "24k", "36k", "48k"]
    assert large["legend"][0]["total"] == "41,734"


def test_a_daily_chart_has_a_group_of_bars_per_day_named_in_its_zone():
    days = [datetime(2026, 2, day, tzinfo=PARIS) for day in (27, 28)] + [datetime(2026, 3, 1, tzinfo=PARIS)]
    series = {"succeeded": [3, 0, 1200], "failed": [1, 0, 0], "missed": [0, 2, 0], "skipped": [0, 0, 1]}

    chart = bar_chart("per-day", "Per day", days, series, OUTCOME_LABELS, DAILY)

    assert len(chart["bars"]) == 12
    assert chart["bars"][:2] == [
        Bar(
            x=62.27,
            y=175.63,
            width=36.53,
            height=0.37,
            series="succeeded",
            title="Fri 2026-02-27 (Europe/Paris): 3 succeeded",
        ),
        Bar(
            x=98.8, y=175.88, width=36.53, height=0.12, series="failed", title="Fri 2026-02-27 (Europe/Paris): 1 failed"
        ),
    ]
    assert chart["x_ticks"] == [Tick(135.33, "Fri 27"), Tick(318.0, "Sat 28"), Tick(500.67, "Sun 01")]
    assert [(item["label"], item["total"], item["x"]) for item in chart["legend"]] == [
        ("succeeded", "1,203", 44),
        ("failed", "1", 181),
        ("missed", "2", 318),
        ("skipped", "1", 455),
    ]
    assert chart["description"] == (
        "1,203 succeeded, 1 failed, 2 missed, 1 skipped from Fri 2026-02-27 (Europe/Paris) until now, per day."
    )


def test_an_hourly_chart_names_its_hours_in_their_zone_across_a_change_of_offset():
    """Paris moves from 02:00 CET to 03:00 CEST on 29 March 2026: the hour after 01:00 is 03:00."""
    hours = [(datetime(2026, 3, 28, 23, tzinfo=UTC) + timedelta(hours=n)).astimezone(PARIS) for n in range(4)]

    chart = bar_chart("runs", "Runs", hours, {"succeeded": [1, 2, 3, 4]}, {"succeeded": "succeeded"})

    assert [bar.title for bar in chart["bars"]] == [
        "00:00–01:00 CET: 1 succeeded",
        "01:00–03:00 CET: 2 succeeded",
        "03:00–04:00 CEST: 3 succeeded",
        "04:00–05:00 CEST: 4 succeeded",
    ]
    assert [tick.label for tick in chart["x_ticks"]] == ["00:00", "03:00"]
    assert chart["description"] == "10 succeeded from 00:00 CET yesterday until now, per hour."


def test_totals_have_thousands_separators():
    assert [thousands(n) for n in (0, 999, 1000, 1234567)] == ["0", "999", "1,000", "1,234,567"]
