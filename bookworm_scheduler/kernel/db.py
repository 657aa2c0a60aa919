"""Plain database helpers shared by the apps, and what a database error means (database_fault)."""

import enum
import logging
import sqlite3
from collections.abc import Callable, Iterator
from contextlib import contextmanager
from functools import cache

import psycopg
from django.db import Error, connections
from django.db.backends.utils import CursorDebugWrapper

from bookworm_scheduler.kernel.dialect import postgresql
from bookworm_scheduler.kernel.errors import one_line

# SQLSTATEs of a connection that broke (class 08) or a server that shut down or restarts.
LOST_CONNECTION_STATES = ("08", "57P01", "57P02", "57P03")
# SQLSTATEs of a transaction that lost to a concurrent one: serialization failure, deadlock detected.
CONFLICT_STATES = ("40001", "40P01")
# SQLite's words for the same: another connection held the lock past the busy timeout.
SQLITE_CONFLICTS = ("SQLITE_BUSY", "SQLITE_LOCKED")


class DatabaseFault(enum.Enum):
    """What a database error means for whoever tries again (database_fault)."""

    UNAVAILABLE = "unavailable"  # the connection broke: reconnect, backing off as from an outage
    CONFLICT = "conflict"  # the transaction lost to a concurrent one and rolled back: run it again soon
    ERROR = "error"  # a statement failed: as it is, another try fails alike


def database_fault(exc: BaseException) -> DatabaseFault | None:
    """What exc, or an error that caused it, says of the database; None if no database error did.

    Django wraps the driver's error (as __cause__) in a class that covers more than one case: a
    broken connection, a deadlock (40P01) and a statement timeout (57014) are all OperationalError.
    The driver's SQLSTATE tells them apart: a connection that broke (or none at all) is
    UNAVAILABLE, a serialization failure or a deadlock is a CONFLICT, a statement timeout or any
    other database error is an ERROR. The first decisive error along the chain wins, so an error
    raised while handling a lost connection (the rollback of a savepoint, say) means the same.
    """
    fault = None
    for error in _chain(exc):
        if isinstance(error, psycopg.Error):
            state = error.sqlstate
            if isinstance(error, (psycopg.OperationalError, psycopg.InterfaceError)) and (
                state is None or state.startswith(LOST_CONNECTION_STATES)
            ):
                return DatabaseFault.UNAVAILABLE
            if state in CONFLICT_STATES:
                return DatabaseFault.CONFLICT
        if isinstance(error, sqlite3.Error) and error.sqlite_errorname in SQLITE_CONFLICTS:
            return DatabaseFault.CONFLICT
        if fault is None and isinstance(error, (Error, psycopg.Error, sqlite3.Error)):
            fault = DatabaseFault.ERROR
    return fault


def fault_event(exc: BaseException, actions: dict) -> tuple[DatabaseFault, str, int, str]:
    """How a database error is logged: its fault (ERROR when database_fault knows none), the
    caller's action for that fault (docs/logging.md), the level (WARNING for a conflict, which is
    retried at once, else ERROR) and the words of the message."""
    fault = database_fault(exc) or DatabaseFault.ERROR
    level = logging.WARNING if fault is DatabaseFault.CONFLICT else logging.ERROR
    return fault, actions[fault], level, f"database {fault.value}"


def connection_lost(exc: BaseException) -> bool:
    """Whether exc says the database connection broke (not that a statement failed): see database_fault."""
    return database_fault(exc) is DatabaseFault.UNAVAILABLE


def describe_database_error(exc: BaseException) -> str:
    """One line for a log: the driver's error class, its SQLSTATE (SQLite: its error name), its message's first line.

    The driver's class (DeadlockDetected, AdminShutdown) rather than Django's wrapper, which says
    OperationalError for most of them.
    """
    shown = next((error for error in _chain(exc) if isinstance(error, (psycopg.Error, sqlite3.Error))), exc)
    state = getattr(shown, "sqlstate", None)
    code = f"SQLSTATE {state}" if state else getattr(shown, "sqlite_errorname", None)
    return one_line(shown, f"{type(shown).__name__} ({code})" if code else None)


def _chain(exc: BaseException | None) -> Iterator[BaseException]:
    """exc, then what caused it (__cause__, else __context__), and so on; each once."""
    seen = set()
    while exc is not None and id(exc) not in seen:
        seen.add(id(exc))
        yield exc
        exc = exc.__cause__ or exc.__context__


class SqlNames:
    """Quoted table and column names of a model on one database: names.table, names.<field> (its column)."""

    def __init__(self, model, alias: str):
        self.model = model
        self.quote = connections[alias].ops.quote_name
        self.table = self.quote(model._meta.db_table)

    def __getattr__(self, field: str) -> str:
        return self.quote(self.model._meta.get_field(field).column)


def row_converter(model, alias: str, fields) -> Callable | None:
    """Django's conversion of these fields' values as a raw statement returns them (rows in, lists of
    values out: SQLite's text UUIDs, say); None where the database's values need none."""
    compiler = model.objects.none().query.get_compiler(alias)
    converters = compiler.get_converters([field.get_col(model._meta.db_table) for field in fields])
    return (lambda rows: list(compiler.apply_converters(rows, converters))) if converters else None


def _inserted_fields(model) -> tuple:
    """The fields an INSERT of a new instance writes: all but the auto-incremented primary key."""
    return tuple(f for f in model._meta.concrete_fields if f is not model._meta.auto_field)


def _saved(instance, pk, using: str) -> None:
    """Mark a freshly inserted instance as save() would: its primary key, and stored in `using`."""
    instance.pk = pk
    instance._state.adding = False
    instance._state.db = using


@cache
def _insert_sql(model, alias: str) -> tuple[str, tuple]:
    quote = connections[alias].ops.quote_name
    fields = _inserted_fields(model)
    columns = ", ".join(quote(f.column) for f in fields)
    placeholders = ", ".join(["%s"] * len(fields))
    pk = quote(model._meta.pk.column)
    return f"INSERT INTO {quote(model._meta.db_table)} ({columns}) VALUES ({placeholders}) RETURNING {pk}", fields


def insert_row(instance, using: str):
    """INSERT one new model instance in one statement and set its primary key.

    The ORM's create() compiles its SQL on every call; on the scheduler's hot path (one
    outbox row and one attempt row per run) that compilation costs more than the database
    does. Defaults and pre_save (auto_now) apply as in save(); signals are not sent.
    """
    connection = connections[using]
    sql, fields = _insert_sql(type(instance), using)
    params = [f.get_db_prep_save(f.pre_save(instance, add=True), connection) for f in fields]
    with prepared_cursor(using) as cursor:
        cursor.execute(sql, params)
        _saved(instance, cursor.fetchone()[0], using)
    return instance


@cache
def _insert_arrays_sql(model, alias: str) -> tuple[str, tuple]:
    connection = connections[alias]
    quote = connection.ops.quote_name
    fields = _inserted_fields(model)
    names = ", ".join(f"c{n}" for n in range(len(fields)))
    arrays = ", ".join(f"%b::{f.cast_db_type(connection)}[]" for f in fields)
    return (
        f"INSERT INTO {quote(model._meta.db_table)} ({', '.join(quote(f.column) for f in fields)}) "
        f"SELECT {names} FROM unnest({arrays}) WITH ORDINALITY AS r({names}, n) ORDER BY n "
        f"RETURNING {quote(model._meta.pk.column)}"
    ), fields


def insert_rows(instances: list, using: str) -> None:
    """INSERT new instances of one model, in their order, and set their primary keys (as insert_row does).

    On PostgreSQL one statement whatever their number: one array per column, sent in binary,
    unnested in order (WITH ORDINALITY). The primary key must be drawn from a sequence: the rows
    are inserted, and their ids drawn, in the order given, so the ids returned, sorted, are theirs
    in that order. Elsewhere one insert_row each.
    """
    if not instances:
        return
    connection = connections[using]
    if not postgresql(connection.alias):
        for instance in instances:
            insert_row(instance, using)
        return
    sql, fields = _insert_arrays_sql(type(instances[0]), using)
    columns = [
        [f.get_db_prep_save(f.pre_save(instance, add=True), connection) for instance in instances] for f in fields
    ]
    with prepared_cursor(using) as cursor:
        cursor.execute(sql, columns)
        ids = sorted(pk for (pk,) in cursor.fetchall())
    for instance, pk in zip(instances, ids, strict=True):
        _saved(instance, pk, using)


@cache
def _cursor_classes():
    """Django's cursor class for psycopg, and ours that prepares."""
    from django.db.backends.postgresql.base import Cursor, ServerBindingCursor

    class PreparedStatementCursor(ServerBindingCursor):
        """Binds parameters on the server, prepares every statement it executes (once per connection),
        and asks for its results in binary.

        Binary results, because Django's loader of a timestamptz in text parses it in Python (its
        subclass of psycopg's TimestamptzLoader), several times slower than the binary loader
        (docs/benchmarks.md). psycopg's binary loaders give the same values (an aware datetime in
        the connection's time zone, UTC); the statements of this cursor return no json, whose text
        Django's JSONField expects.
        """

        def execute(self, query, params=None, *, prepare=True, binary=True):
            return super().execute(query, params, prepare=prepare, binary=binary)

    return Cursor, PreparedStatementCursor


@contextmanager
def prepared_cursor(using: str = "default"):
    """A Django cursor whose statements are prepared on PostgreSQL; a plain one elsewhere.

    For the statements the hot paths send once or more per run (an outbox row, a claim, a
    group's record): Django's cursors bind parameters on the client, so PostgreSQL parses and
    plans each statement anew, and psycopg quotes every parameter (each element of an array)
    in Python. A prepared statement is parsed and planned once per connection, its parameters
    sent as they are. The cursor is Django's wrapper all the same: the statements go through
    execute_wrapper()s and their errors are Django's (DEBUG's query log records them without
    their text, which Django reads from client-side binding only). Needs a session of its own
    on the server (no pooler in transaction mode), as LISTEN does already; `prepare_threshold`
    must be set in the database OPTIONS (settings.py), or psycopg prepares nothing.

    On PostgreSQL the cursor is not closed at the end of the block but kept for the next one on
    the same connection (_kept_cursor): a new cursor costs about as much of our CPU as the
    statement's round trip, most of it in looking up again how to send each parameter's type.
    With tracing on, the connection's cursor class is the instrumentation's (it traces each
    statement): a cursor of that class is used as it is, closed after the block, and nothing is
    prepared.
    """
    connection = connections[using]
    if postgresql(connection.alias):
        cursor = _kept_cursor(connection)
        if cursor is not None:
            yield cursor
            return
    with connection.cursor() as cursor:
        yield cursor


def _kept_cursor(connection):
    """The connection's prepared cursor, made on first use after each (re)connection; None with tracing on."""
    connection.close_if_health_check_failed()
    connection.ensure_connection()
    connection.validate_thread_sharing()
    raw, (plain, prepared) = connection.connection, _cursor_classes()
    if raw.cursor_factory is not plain:
        return None
    kept = getattr(connection, "_bookworm_prepared_cursor", None)
    # Django's debug wrapper while queries are logged (DEBUG, assertNumQueries), the plain one otherwise.
    if (
        kept is not None
        and kept.cursor.connection is raw
        and isinstance(kept, CursorDebugWrapper) == connection.queries_logged
    ):
        return kept
    raw.cursor_factory = prepared
    try:
        kept = connection.cursor()
    finally:
        raw.cursor_factory = plain
    connection._bookworm_prepared_cursor = kept
    return kept
