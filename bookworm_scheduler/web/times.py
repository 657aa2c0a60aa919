"""How the console's lists show an instant: one line, UTC, with its zone."""

from datetime import UTC

from django.utils.html import format_html


def list_time(instant, day_of=None) -> str:
    """A time in a list: one line, UTC, with its zone ("2026-12-07 11:29:09 UTC"); lists.css keeps it unwrapped.

    Only the time ("11:29:09 UTC") when it falls on the day of day_of, shown beside it.
    """
    if instant is None:
        return "-"
    instant = instant.astimezone(UTC)
    same_day = day_of is not None and day_of.astimezone(UTC).date() == instant.date()
    return format_html(
        '<span class="list-time" title="{}">{}</span>',
        instant.strftime("%Y-%m-%d %H:%M:%S UTC"),
        instant.strftime("%H:%M:%S UTC" if same_day else "%Y-%m-%d %H:%M:%S UTC"),
    )
