"""Schedule arithmetic: pure functions of a schedule and an instant.

Cron follows Debian cron through cronsim: five fields (or one of Debian's macros, @daily and
the like, read as its five fields), day-of-month OR day-of-week when both are restricted,
evaluated in the job's zone, and across daylight-saving changes a job at a fixed time that
falls in a skipped hour runs right after the change while one in a repeated hour runs once;
wildcard jobs follow the clock. Results are UTC instants. validate_cron is the one check of
an expression (the command line, the admin, @job and planning call it).
"""

import difflib
import functools
from collections.abc import Iterator
from datetime import UTC, datetime, timedelta
from zoneinfo import ZoneInfo, ZoneInfoNotFoundError, available_timezones

from cronsim import CronSim, CronSimError

UTC = UTC
EPOCH = datetime(1970, 1, 1, tzinfo=UTC)


class InvalidSchedule(ValueError):
    """A schedule that cannot be evaluated: bad cron, unknown zone, solar, or none at all."""


# Bounds on what a form, the command line or @job may hand over, so that a crafted one is refused at once
# instead of being parsed (or compared with every zone's name): the longest zone name of the tz database
# has 32 characters; the five fields of django-celery-beat's CrontabSchedule hold 588 at most.
ZONE_NAME_MAX_LENGTH = 64
CRON_MAX_LENGTH = 1000


# Debian cron's macros (crontab(5)), as the five fields a CrontabSchedule stores. @reboot runs a
# job when cron starts: a scheduler has no such moment, so it is refused (REBOOT).
MACROS = {
    "@yearly": "0 0 1 1 *",
    "@annually": "0 0 1 1 *",
    "@monthly": "0 0 1 * *",
    "@weekly": "0 0 * * 0",
    "@daily": "0 0 * * *",
    "@midnight": "0 0 * * *",
    "@hourly": "0 * * * *",
}
REBOOT = (
    "@reboot is not supported: it means 'when cron starts', and a scheduler runs jobs at instants, "
    "not at its own start; use a cron expression or another macro"
)


def did_you_mean(word: str, candidates) -> str:
    """' (did you mean X?)' for the candidate closest to word, the same but for case first; else ''.

    '' for a word longer than ZONE_NAME_MAX_LENGTH: no candidate is that long, and difflib's time grows with it.
    """
    if len(str(word)) > ZONE_NAME_MAX_LENGTH:
        return ""
    by_lower = {str(c).lower(): str(c) for c in candidates}
    close = difflib.get_close_matches(str(word).lower(), list(by_lower), n=1)
    match = by_lower.get(str(word).lower()) or (by_lower[close[0]] if close else None)
    return f" (did you mean {match}?)" if match else ""


@functools.cache
def zone_names() -> frozenset[str]:
    return frozenset(available_timezones())


def get_zone(name) -> ZoneInfo:
    if isinstance(name, ZoneInfo):
        return name
    if len(str(name)) > ZONE_NAME_MAX_LENGTH:
        raise InvalidSchedule(
            f"unknown time zone: {str(name)[:ZONE_NAME_MAX_LENGTH]}... "
            f"({len(str(name))} characters; no zone name has more than {ZONE_NAME_MAX_LENGTH})"
        )
    try:
        return ZoneInfo(str(name))
    except (ZoneInfoNotFoundError, ValueError, OSError):  # OSError: a name the file system cannot hold
        raise InvalidSchedule(f"unknown time zone: {name}{did_you_mean(name, zone_names())}") from None


def expand_macro(expr: str) -> str:
    """expr with a Debian cron macro replaced by its five fields, and its blanks made single."""
    text = " ".join(str(expr).split())
    if not text.startswith("@"):
        return text
    if text == "@reboot":
        raise InvalidSchedule(REBOOT)
    if text not in MACROS:
        known = ", ".join(MACROS)
        raise InvalidSchedule(f"unknown cron macro {text!r}{did_you_mean(text, MACROS)}; known: {known}")
    return MACROS[text]


@functools.lru_cache(maxsize=4096)
def validate_cron(expr: str, zone="UTC") -> str:
    """The five fields of expr (a macro expanded); InvalidSchedule with a readable reason if it cannot run.

    The one check of a cron expression: the command line, the admin's forms, @job and planning
    all call it. An expression that is well formed but names a day no month has (the 31st of
    February) never fires, and says so. One longer than CRON_MAX_LENGTH is refused unread.
    """
    if len(str(expr)) > CRON_MAX_LENGTH:
        raise InvalidSchedule(
            f"cron expression is {len(str(expr))} characters long, more than {CRON_MAX_LENGTH}: {str(expr)[:40]!r}..."
        )
    fields = expand_macro(expr).split()
    if len(fields) != 5:
        raise InvalidSchedule(f"cron expression must have five fields, got {len(fields)}: {expr!r}")
    tz = get_zone(zone)
    cron = " ".join(fields)
    try:
        CronSim(cron, datetime(2000, 1, 1, tzinfo=tz))
    except CronSimError as exc:
        if _never_fires(fields):
            dom, month = fields[2], fields[3]
            raise InvalidSchedule(
                f"never fires: day-of-month {dom} does not occur in month {month} in cron expression {expr!r}"
            ) from None
        raise InvalidSchedule(f"{exc} in cron expression {expr!r}") from None
    return cron


def _never_fires(fields: list[str]) -> bool:
    """cronsim refuses days that no listed month has; with every month the fields are valid."""
    minute, hour, dom, month, dow = fields
    try:
        CronSim(" ".join([minute, hour, dom, "*", dow]), datetime(2000, 1, 1, tzinfo=UTC))
        CronSim(" ".join([minute, hour, "1", month, dow]), datetime(2000, 1, 1, tzinfo=UTC))
    except CronSimError:
        return False
    return True


def cron_instants(expr: str, zone, after: datetime) -> Iterator[datetime]:
    """The fire instants of expr strictly after `after`, in UTC, without end."""
    expr = validate_cron(expr, zone)
    tz = get_zone(zone)
    try:
        for instant in CronSim(expr, after.astimezone(tz)):
            yield instant.astimezone(UTC)
    except StopIteration:
        return


def interval_instants(every: timedelta, anchor: datetime, after: datetime) -> Iterator[datetime]:
    """A fixed grid anchor + k*every (k >= 0), strictly after `after`, so every instance agrees."""
    if every <= timedelta(0):
        raise InvalidSchedule("interval must be positive")
    if after < anchor:
        instant = anchor
    else:
        instant = anchor + ((after - anchor) // every + 1) * every
    while True:
        yield instant
        instant += every


def clocked_instants(at: datetime, after: datetime) -> Iterator[datetime]:
    if at > after:
        yield at


def instants_between(source: Iterator[datetime], until: datetime, limit: int) -> tuple[list[datetime], bool]:
    """Up to `limit` instants from source that are <= until, and whether more were left."""
    found = []
    for instant in source:
        if instant > until:
            return found, False
        if len(found) == limit:
            return found, True
        found.append(instant)
    return found, False


def next_instants(source: Iterator[datetime], count: int) -> list[datetime]:
    result = []
    for instant in source:
        result.append(instant)
        if len(result) == count:
            break
    return result
