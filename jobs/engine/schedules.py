"""Schedule arithmetic: pure functions of a schedule and an instant.

Cron follows Debian cron through cronsim: five fields, day-of-month OR day-of-week when
both are restricted, evaluated in the job's zone, and across daylight-saving changes a job
at a fixed time that falls in a skipped hour runs right after the change while one in a
repeated hour runs once; wildcard jobs follow the clock. Results are UTC instants.
"""

import functools
from collections.abc import Iterator
from datetime import UTC, datetime, timedelta
from zoneinfo import ZoneInfo, ZoneInfoNotFoundError

from cronsim import CronSim, CronSimError

UTC = UTC
EPOCH = datetime(1970, 1, 1, tzinfo=UTC)


class InvalidSchedule(ValueError):
    """A schedule that cannot be evaluated: bad cron, unknown zone, solar, or none at all."""


def get_zone(name) -> ZoneInfo:
    if isinstance(name, ZoneInfo):
        return name
    try:
        return ZoneInfo(str(name))
    except (ZoneInfoNotFoundError, ValueError):
        raise InvalidSchedule(f"unknown time zone: {name}") from None


@functools.lru_cache(maxsize=4096)
def validate_cron(expr: str, zone="UTC") -> None:
    """Raise InvalidSchedule with a readable reason if expr is not a five-field cron expression."""
    fields = expr.split()
    if len(fields) != 5:
        raise InvalidSchedule(f"cron expression must have five fields, got {len(fields)}: {expr!r}")
    tz = get_zone(zone)
    try:
        CronSim(expr, datetime(2000, 1, 1, tzinfo=tz))
    except CronSimError as exc:
        raise InvalidSchedule(f"{exc} in cron expression {expr!r}") from None


def cron_instants(expr: str, zone, after: datetime) -> Iterator[datetime]:
    """The fire instants of expr strictly after `after`, in UTC, without end."""
    validate_cron(expr, zone)
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
