"""What differs between the databases the service runs on: PostgreSQL in production, SQLite embedded.

SQLite is the default of `make run`: one process, no LISTEN/NOTIFY, no SKIP LOCKED, no advisory
locks, no server-side statement timeout. Code that takes a PostgreSQL-only path asks here.
"""

from django.db import DEFAULT_DB_ALIAS, connections


def postgresql(using: str = DEFAULT_DB_ALIAS) -> bool:
    """Whether the database of alias `using` is PostgreSQL (else SQLite)."""
    return connections[using].vendor == "postgresql"


def notify(channel: str, payload: str = "", using: str = DEFAULT_DB_ALIAS) -> None:
    """NOTIFY channel (delivered at the commit of the current transaction, if any); nothing on SQLite."""
    if postgresql(using):
        with connections[using].cursor() as cursor:
            cursor.execute("SELECT pg_notify(%s, %s)", [channel, payload])
