"""Plain database helpers shared by the apps, and what a database error means (database_fault)."""

import enum
import logging
import re
import sqlite3
from collections.abc import Callable, Iterator
from contextlib import contextmanager
from datetime import timedelta
from functools import cache

import psycopg
from django.db import DEFAULT_DB_ALIAS, Error, connections
from django.db.backends.utils import CursorDebugWrapper

from bookworm_scheduler.kernel.dialect import postgresql
from bookworm_scheduler.kernel.errors import one_line

# SQLSTATEs of a connection that broke (class 08) or a server that shut down or restarts.
LOST_CONNECTION_STATES = ("08", "57P01", "57P02", "57P03")
# SQLSTATEs of a session the server ended for sitting idle: in a transaction (25P03, after
# idle_in_transaction_session_timeout: bound_idle_transactions), or at all (57P05).
IDLE_TIMEOUT_STATES = ("25P03", "57P05")
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
    UNAVAILABLE, and so is a session the server ended for sitting idle in a transaction
    (transaction_cut: psycopg says InternalError), a serialization failure or a deadlock is a
    CONFLICT, a statement timeout or any other database error is an ERROR. The first decisive
    error along the chain wins, so an error raised while handling a lost connection (the rollback
    of a savepoint, say) means the same.
    """
    fault = None
    for error in _chain(exc):
        if isinstance(error, psycopg.Error):
            state = error.sqlstate
            if isinstance(error, (psycopg.OperationalError, psycopg.InterfaceError)) and (
                state is None or state.startswith(LOST_CONNECTION_STATES)
            ):
                return DatabaseFault.UNAVAILABLE
            if state in IDLE_TIMEOUT_STATES:
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
    retried at once, else ERROR) and the words of the message. A session the server ended for
    sitting idle in a transaction is UNAVAILABLE but logged as transaction_cut, whoever logs it: the
    process was paused or stalled with its transaction open, and its locks were freed."""
    fault = database_fault(exc) or DatabaseFault.ERROR
    if transaction_cut(exc):
        return fault, TRANSACTION_CUT, logging.ERROR, "database session ended: its transaction sat idle too long"
    level = logging.WARNING if fault is DatabaseFault.CONFLICT else logging.ERROR
    return fault, actions[fault], level, f"database {fault.value}"


# The log action of a transaction the server cut (fault_event; docs/logging.md).
TRANSACTION_CUT = "transaction_cut"


def transaction_cut(exc: BaseException) -> bool:
    """Whether exc, or an error that caused it, says the server ended the session for sitting idle."""
    return any(getattr(error, "sqlstate", None) in IDLE_TIMEOUT_STATES for error in _chain(exc))


def bound_idle_transactions(limit: timedelta, using: str = DEFAULT_DB_ALIAS) -> None:
    """From the next connection on, have the server end this process's sessions of alias `using`
    whose transaction sits idle for `limit` (PostgreSQL's idle_in_transaction_session_timeout,
    among the connection's options: no statement of its own); nothing on SQLite.

    For the scheduler's and the relay's processes only, at their start (the limit:
    kernel.liveness): a process paused with a transaction open then loses its locks after the
    limit rather than holding them for the whole pause. Every connection of the alias that this
    process makes afterwards, in any thread, has it: they share the alias's settings.
    """
    if not postgresql(using):
        return
    db = connections[using]
    options = db.settings_dict.setdefault("OPTIONS", {})
    others = re.sub(r"-c\s*idle_in_transaction_session_timeout=\S+", "", options.get("options", "")).strip()
    setting = f"-c idle_in_transaction_session_timeout={max(1, round(limit.total_seconds() * 1000))}"
    options["options"] = f"{others} {setting}".strip()
    db.close()


def connection_lost(exc: BaseException) -> bool:
    """Whether exc says the database connection broke (not that a statement failed): see database_fault."""
    return database_fault(exc) is DatabaseFault.UNAVAILABLE


def describe_database_error(exc: BaseException) -> str:
    """One line for a log: the driver's error class, its SQLSTATE (SQLite: its error name), its message's first line.

    The driver's class (DeadlockDetected, AdminShutdown) rather than Django's wrapper, which says
    OperationalError for most of them. A connection that could not be made (libpq's message names
    the host and port and why: refused, a certificate it could not verify, a password refused; never
    the password) starts with the variable to look at: "DATABASE_URL: OperationalError: connection failed: ...".
    """
    shown = next((error for error in _chain(exc) if isinstance(error, (psycopg.Error, sqlite3.Error))), exc)
    state = getattr(shown, "sqlstate", None)
    code = f"SQLSTATE {state}" if state else getattr(shown, "sqlite_errorname", None)
    described = one_line(shown, f"{type(shown).__name__} ({code})" if code else None)
    return f"DATABASE_URL: {described}" if _connect_failed(shown) else described


# What libpq says when it cannot connect, as the few words /health/ may show (no host, user or database name).
CONNECT_REASONS = {
    "certificate verify failed": "certificate verify failed",
    "does not match host name": "hostname mismatch",
    "server does not support SSL": "server does not support SSL",
    "password authentication failed": "password authentication failed",
}


def _connect_failed(error: BaseException) -> bool:
    return isinstance(error, psycopg.OperationalError) and str(error).startswith("connection failed")


def connect_failure_reason(exc: BaseException) -> str | None:
    """Why a connection to the database could not be made, in CONNECT_REASONS' words; None for another error."""
    for error in _chain(exc):
        if _connect_failed(error):
            return next((reason for words, reason in CONNECT_REASONS.items() if words in str(error)), None)
    return None


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
