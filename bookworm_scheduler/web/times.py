"""How the console's lists show an instant: one line, in the viewer's zone, with that zone."""

from django.utils import timezone
from django.utils.html import format_html


def list_time(instant, day_of=None) -> str:
    """A time in a list: one line, in the active zone (bookworm_scheduler.web.display_zone; UTC by default), with
    its abbreviation ("2026-12-07 12:29:09 CET"); the title holds the ISO time with its offset. lists.css keeps it
    unwrapped.

    Only the time ("12:29:09 CET") when it falls on the day of day_of, shown beside it, in that zone.
    """
    if instant is None:
        return "-"
    zone = timezone.get_current_timezone()
    instant = instant.astimezone(zone)
    same_day = day_of is not None and day_of.astimezone(zone).date() == instant.date()
    return format_html(
        '<span class="list-time" title="{}">{}</span>',
        instant.isoformat(timespec="seconds"),
        instant.strftime("%H:%M:%S %Z" if same_day else "%Y-%m-%d %H:%M:%S %Z"),
    )
