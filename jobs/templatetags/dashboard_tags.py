"""The overview at the top of the dashboard, its bar charts (server-side SVG) and time filters."""

import dataclasses
import math
from collections.abc import Callable
from datetime import UTC, datetime, timedelta

from django import template

from bookworm_scheduler.kernel.clock import default_clock
from jobs.web import counts, dashboard

register = template.Library()


@register.inclusion_tag("jobs/overview.html")
def dashboard_overview():
    """The overview as of the database's time; the fragment view renders the same template."""
    return dashboard.overview(default_clock())


# Bar charts: one group of bars per hour or day, one bar per series, drawn as SVG on the server.

WIDTH, HEIGHT = 600, 200
LEFT, RIGHT, TOP, BOTTOM = 44, 8, 28, 24  # room for the y labels, the legend and the x labels
LEGEND_STEP = 150  # between the legend's items, narrower when four do not fit
LABEL_EVERY = 3  # hours between x labels
HOUR = timedelta(hours=1)


@dataclasses.dataclass(frozen=True)
class Bar:
    x: float
    y: float
    width: float
    height: float
    series: str
    title: str


@dataclasses.dataclass(frozen=True)
class Tick:
    position: float
    label: str


@dataclasses.dataclass(frozen=True)
class Scale:
    """What a chart's slots are: how each is named under the axis and in its bars' titles, and the chart's start.

    The slots are aware datetimes in the zone they are shown in (the active one).
    """

    per: str
    tick: Callable[[datetime], str | None]  # the x label under a slot; None for none
    span: Callable[[datetime], str]
    since: Callable[[datetime], str]


def hour_span(start: datetime) -> str:
    """ "13:00–14:00 UTC": the end one hour later, read in the start's zone (a change of offset shows)."""
    end = (start.astimezone(UTC) + HOUR).astimezone(start.tzinfo)
    return f"{start:%H:%M}–{end:%H:%M} {start:%Z}"


HOURLY = Scale(
    per="hour",
    tick=lambda start: f"{start:%H:%M}" if start.hour % LABEL_EVERY == 0 else None,
    span=hour_span,
    since=lambda first: f"{first:%H:%M %Z} yesterday",
)
DAILY = Scale(
    per="day",
    tick=lambda start: f"{start:%a %d}",
    span=lambda start: f"{start:%a %Y-%m-%d} ({start.tzinfo})",
    since=lambda first: f"{first:%a %Y-%m-%d} ({first.tzinfo})",
)


def nice_step(largest: int, intervals: int = 4) -> int:
    """The smallest round step (1, 1.2, 1.5, 2, 2.5, 3, 4, 5, 6 or 8 x 10^k) whose `intervals` steps reach `largest`."""
    needed = max(largest, 1) / intervals
    magnitude = 10 ** max(math.floor(math.log10(needed)), 0)
    for factor in (1, 1.2, 1.5, 2, 2.5, 3, 4, 5, 6, 8, 10):
        step = factor * magnitude
        if step >= needed and step == int(step):
            return int(step)
    return 10 * magnitude  # pragma: no cover (the factor 10 always fits)


def axis_label(value: int) -> str:
    """40000 as "40k", 1500 as "1500": short enough for the y axis."""
    return f"{value // 1000}k" if value >= 10000 and value % 1000 == 0 else str(value)


def bar_chart(
    chart_id: str, title: str, slots: list[datetime], series: dict[str, list[int]], labels: dict, scale: Scale = HOURLY
) -> dict:
    """The geometry of a grouped bar chart of counts per slot (an hour or a day, by `scale`), in SVG user units."""
    plot_width, plot_height = WIDTH - LEFT - RIGHT, HEIGHT - TOP - BOTTOM
    step = nice_step(max((v for values in series.values() for v in values), default=0))
    top = step * 4
    slot = plot_width / len(slots)
    bar_width = slot * 0.8 / len(series)
    bars = []
    for i, start in enumerate(slots):
        span = scale.span(start)
        for j, (name, values) in enumerate(series.items()):
            height = plot_height * values[i] / top
            bars.append(
                Bar(
                    x=round(LEFT + i * slot + slot * 0.1 + j * bar_width, 2),
                    y=round(TOP + plot_height - height, 2),
                    width=round(bar_width, 2),
                    height=round(height, 2),
                    series=name,
                    title=f"{span}: {values[i]} {labels[name]}",
                )
            )
    y_ticks = [Tick(round(TOP + plot_height - plot_height * k / 4, 2), axis_label(step * k)) for k in range(5)]
    x_ticks = [
        Tick(round(LEFT + i * slot + slot / 2, 2), label)
        for i, start in enumerate(slots)
        if (label := scale.tick(start)) is not None
    ]
    totals = {name: sum(values) for name, values in series.items()}
    legend_step = min(LEGEND_STEP, plot_width // len(series))
    legend = [
        {
            "series": name,
            "label": labels[name],
            "total": f"{totals[name]:,}",
            "x": LEFT + k * legend_step,
            "text_x": LEFT + k * legend_step + 14,
        }
        for k, name in enumerate(series)
    ]
    summary = ", ".join(f"{totals[name]:,} {labels[name]}" for name in series)
    return {
        "id": chart_id,
        "title": title,
        "description": f"{summary} from {scale.since(slots[0])} until now, per {scale.per}.",
        "width": WIDTH,
        "height": HEIGHT,
        "left": LEFT,
        "right": WIDTH - RIGHT,
        "y_label_x": LEFT - 6,
        "x_label_y": HEIGHT - 6,
        "baseline": TOP + plot_height,
        "bars": bars,
        "y_ticks": y_ticks,
        "x_ticks": x_ticks,
        "legend": legend,
        "legend_y": TOP - 20,
        "legend_text_y": TOP - 15,
    }


OUTCOME_LABELS = {status: status for status in counts.OUTCOMES}  # the status words of the rest of the console


@register.inclusion_tag("jobs/bar_chart.svg")
def runs_chart(runs: dict):
    return bar_chart(
        "runs-chart",
        "Runs per hour, last 24 hours",
        runs["hours"],
        runs["series"],
        {"succeeded": "succeeded", "failed": "failed"},
    )


@register.inclusion_tag("jobs/bar_chart.svg")
def runs_per_day_chart(runs_per_day: dict):
    return bar_chart(
        "runs-per-day-chart",
        f"Finished runs per day, last {counts.DAYS} days",
        runs_per_day["days"],
        runs_per_day["series"],
        OUTCOME_LABELS,
        DAILY,
    )


@register.inclusion_tag("jobs/bar_chart.svg")
def delivered_chart(delivered: dict):
    return bar_chart(
        "delivered-chart",
        "Events delivered per hour, last 24 hours",
        delivered["hours"],
        delivered["series"],
        {"delivered": "delivered"},
    )


@register.filter
def thousands(value: int) -> str:
    """12345 as "12,345", as the charts' legends write totals."""
    return f"{value:,}"


# Times.


def span(delta: timedelta) -> str:
    """A duration in its two largest units: "3 d 4 h", "2 min 5 s", "0 s"."""
    seconds = int(abs(delta).total_seconds())
    parts = []
    for unit, size in (("d", 86400), ("h", 3600), ("min", 60), ("s", 1)):
        if seconds >= size or (unit == "s" and not parts):
            parts.append(f"{seconds // size} {unit}")
            seconds %= size
        if len(parts) == 2:
            break
    return " ".join(parts)


@register.filter
def duration(delta: timedelta | None) -> str:
    return span(delta) if delta is not None else "–"


@register.filter
def relative_to(instant: datetime | None, now: datetime) -> str:
    """ "in 2 min 5 s" for an instant after now, "5 min ago" for one before."""
    if instant is None:
        return "–"
    if instant >= now:
        return f"in {span(instant - now)}"
    return f"{span(now - instant)} ago"


def run_time(delta: timedelta | None) -> str:
    """How long a run took (or was late): "14 ms", "2.3 s", "1 h 2 min"; "-" for none."""
    if delta is None:
        return "-"
    sign, delta = ("-", -delta) if delta < timedelta(0) else ("", delta)
    seconds = delta.total_seconds()
    if seconds < 1:
        return f"{sign}{int(seconds * 1000)} ms"
    if seconds < 60:
        return f"{sign}{int(seconds * 10) / 10:.1f} s"
    return sign + span(delta)


register.filter("run_time", run_time)
