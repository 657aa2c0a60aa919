"""What differs between the databases the service runs on: PostgreSQL in production, SQLite embedded.

SQLite is the default of `make run`: one process, no LISTEN/NOTIFY, no SKIP LOCKED, no advisory
locks, no server-side statement timeout, no arrays. Code that takes a PostgreSQL-only path asks
here (postgresql); NOTIFY and the advisory locks, which simply do nothing on SQLite, are here too.
The occurrence store (jobs.engine.store) and the planner hold the ORM forms of the statements
that PostgreSQL runs as one.
"""

import zlib

from django.db import DEFAULT_DB_ALIAS, connections, transaction


def postgresql(using: str = DEFAULT_DB_ALIAS) -> bool:
    """Whether the database of alias `using` is PostgreSQL (else SQLite)."""
    return connections[using].vendor == "postgresql"


def notify(channel: str, payload: str = "", using: str = DEFAULT_DB_ALIAS) -> None:
    """NOTIFY channel (delivered at the commit of the current transaction, if any); nothing on SQLite."""
    if postgresql(using):
        with connections[using].cursor() as cursor:
            cursor.execute("SELECT pg_notify(%s, %s)", [channel, payload])


def try_advisory_lock(name: str) -> bool:
    """A transaction-scoped advisory lock on PostgreSQL: True if this session got it (always on SQLite,
    where one process is the only writer)."""
    connection = transaction.get_connection()
    if not postgresql(connection.alias):
        return True
    with connection.cursor() as cursor:
        cursor.execute("SELECT pg_try_advisory_xact_lock(%s)", [_lock_key(name)])
        return cursor.fetchone()[0]


def advisory_lock(name: str, using: str | None = None) -> None:
    """A transaction-scoped advisory lock on PostgreSQL, waited for (nothing on SQLite)."""
    connection = transaction.get_connection(using)
    if postgresql(connection.alias):
        with connection.cursor() as cursor:
            cursor.execute("SELECT pg_advisory_xact_lock(%s)", [_lock_key(name)])


def _lock_key(name: str) -> int:
    return zlib.crc32(name.encode())
