"""One clock for every process: the database's.

Hosts drift, containers more. Whether an instant is due, when a lease expires and when a
retry may run are judged by PostgreSQL's time, so a host whose clock is minutes off neither
runs jobs early or late nor steals a live claim. Reading the database for every timestamp
would cost a round trip each; DatabaseClock measures the database's time once (sync) and
then reads the local monotonic clock, which no setting of the wall clock moves.
"""

import threading
import time
from datetime import UTC, datetime, timedelta

from django.db import DEFAULT_DB_ALIAS, DatabaseError, connections
from django.utils import timezone

from bookworm_scheduler.kernel.dialect import postgresql


def database_now(using: str = DEFAULT_DB_ALIAS) -> datetime:
    """The database's current time (one round trip). SQLite runs on this host: its clock is ours."""
    connection = connections[using]
    if not postgresql(connection.alias):
        return timezone.now()
    with connection.cursor() as cursor:
        cursor.execute("SELECT clock_timestamp()")
        return cursor.fetchone()[0].astimezone(UTC)


class DatabaseClock:
    """Callable: the database's time now, from the last sync plus the monotonic time since.

    sync() takes one round trip; the clock syncs itself when its last sync is older than
    max_age seconds. While the database cannot be reached it goes on from its last sync (or,
    never synced, from this host's clock), so reading the time never fails. Thread-safe.
    """

    def __init__(self, using: str = DEFAULT_DB_ALIAS, max_age: float = 30.0):
        self.using = using
        self.max_age = max_age
        self._base: tuple[datetime, float] | None = None
        self._lock = threading.Lock()

    def sync(self) -> datetime:
        before = time.monotonic()
        now = database_now(self.using)
        after = time.monotonic()
        # The database read its clock somewhere within the round trip: assume its middle.
        with self._lock:
            self._base = (now, (before + after) / 2)
        return now + timedelta(seconds=after - (before + after) / 2)

    @property
    def offset(self) -> timedelta:
        """How far the database's clock is ahead of this host's wall clock."""
        return self() - timezone.now()

    def __call__(self) -> datetime:
        base = self._base
        if base is None or time.monotonic() - base[1] > self.max_age:
            try:
                return self.sync()
            except DatabaseError:
                if base is None:
                    return timezone.now()
        now, at = base
        return now + timedelta(seconds=time.monotonic() - at)


# The process's clock for code that is handed none (publishing, manual triggers).
default_clock = DatabaseClock()
