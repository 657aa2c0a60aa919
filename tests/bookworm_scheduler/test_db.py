import logging
import sqlite3
import threading
import uuid
from datetime import UTC, datetime, timedelta

import psycopg
import pytest
from django.contrib.auth.models import Group
from django.db import DataError, Error, OperationalError, connection, transaction
from django.test.utils import CaptureQueriesContext

from bookworm_scheduler.kernel.db import (
    DatabaseFault,
    bound_idle_transactions,
    connection_lost,
    database_fault,
    describe_database_error,
    fault_event,
    prepared_cursor,
    transaction_cut,
)
from outbox.models import OutboxMessage
from outbox.publishing import publish
from tests.jobs.helpers import wait_for
from tests.jobs.sample_jobs import SampleRanEvent
from tests.outbox.helpers import SERIALIZATION_FAILURE, serialization_failure


def prepared(statement_start: str) -> int:
    with connection.cursor() as cursor:
        cursor.execute("SELECT count(*) FROM pg_prepared_statements WHERE statement LIKE %s", [statement_start + "%"])
        return cursor.fetchone()[0]


@pytest.mark.django_db
def test_a_hot_path_statement_is_prepared_once_per_connection_and_still_seen_by_django():
    seen = []

    def record(execute, sql, params, many, context):
        seen.append(sql.split()[0])
        return execute(sql, params, many, context)

    with connection.execute_wrapper(record), transaction.atomic():
        for occurrence in range(3):
            publish(SampleRanEvent(occurrence=occurrence))

    assert sorted(OutboxMessage.objects.values_list("body__occurrence", flat=True)) == [0, 1, 2]
    assert seen.count("INSERT") == 3
    assert prepared('INSERT INTO "outbox_outboxmessage"') == 1


@pytest.mark.django_db
def test_an_error_of_a_prepared_statement_is_djangos_and_the_transaction_goes_on():
    with transaction.atomic():
        with pytest.raises(DataError, match="division by zero"), transaction.atomic(), prepared_cursor() as cursor:
            cursor.execute("SELECT 1 / %s", [0])
        with prepared_cursor() as cursor:
            cursor.execute("SELECT 6 / %s", [2])
            assert cursor.fetchone() == (3,)


def same_cursor_twice() -> bool:
    with prepared_cursor() as first:
        first.execute("SELECT %s", [1])
    with prepared_cursor() as second:
        second.execute("SELECT %s", [2])
        assert second.fetchone() == (2,)
    return first is second


@pytest.mark.django_db(transaction=True)
def test_the_prepared_cursor_is_kept_until_the_connection_is_replaced():
    assert same_cursor_twice()
    with prepared_cursor() as before:
        pass
    connection.close()
    with prepared_cursor() as after:
        after.execute("SELECT %s", [3])
        assert after.fetchone() == (3,)
    assert after is not before
    assert after.cursor.connection is connection.connection


@pytest.mark.django_db
def test_statements_of_the_kept_cursor_are_logged_while_queries_are_captured():
    assert same_cursor_twice()  # made and kept before the capture: Django's plain wrapper
    with CaptureQueriesContext(connection) as captured, prepared_cursor() as cursor:
        cursor.execute("SELECT %s", [4])
    assert len(captured) == 1
    with CaptureQueriesContext(connection) as captured:
        assert same_cursor_twice()
    assert len(captured) == 2


@pytest.mark.django_db
def test_the_prepared_cursors_results_come_in_binary_with_the_values_djangos_cursor_gives():
    statement = "SELECT %s::timestamptz, %s::text, %s::uuid, %s::interval, NULL::timestamptz, %s::bigint"
    params = [
        datetime(2026, 3, 29, 1, 30, 5, 123456, tzinfo=UTC),
        "scheduled",
        uuid.UUID(int=7),
        timedelta(seconds=90),
        42,
    ]
    with connection.cursor() as cursor:
        cursor.execute(statement, params)
        expected = cursor.fetchone()
    with prepared_cursor() as cursor:
        cursor.execute(statement, params)
        row = cursor.fetchone()
        formats = {cursor.cursor.pgresult.fformat(column) for column in range(6)}
    assert formats == {psycopg.pq.Format.BINARY}
    assert (
        row
        == expected
        == (
            datetime(2026, 3, 29, 1, 30, 5, 123456, tzinfo=UTC),
            "scheduled",
            uuid.UUID(int=7),
            timedelta(seconds=90),
            None,
            42,
        )
    )
    assert row[0].utcoffset() == timedelta(0)


# What a database error means: database_fault, one decision for the scheduler, the runner and the relay.


def as_django_raises(driver_error: BaseException) -> BaseException:
    """driver_error as Django raises it: wrapped in its class of django.db, the driver's error as __cause__."""
    with pytest.raises(Error) as raised, connection.wrap_database_errors:
        raise driver_error
    return raised.value


@pytest.mark.unit
@pytest.mark.parametrize(
    "driver_error, fault, described",
    [
        (
            psycopg.OperationalError("connection failed: Connection refused\n\tIs the server running?"),
            DatabaseFault.UNAVAILABLE,
            "DATABASE_URL: OperationalError: connection failed: Connection refused",
        ),
        (
            psycopg.errors.AdminShutdown("terminating connection due to administrator command"),
            DatabaseFault.UNAVAILABLE,
            "AdminShutdown (SQLSTATE 57P01): terminating connection due to administrator command",
        ),
        (
            psycopg.errors.DeadlockDetected("deadlock detected\nDETAIL:  Process 1 waits for ShareLock"),
            DatabaseFault.CONFLICT,
            "DeadlockDetected (SQLSTATE 40P01): deadlock detected",
        ),
        (
            psycopg.errors.SerializationFailure("could not serialize access due to concurrent update"),
            DatabaseFault.CONFLICT,
            "SerializationFailure (SQLSTATE 40001): could not serialize access due to concurrent update",
        ),
        (
            psycopg.errors.QueryCanceled("canceling statement due to statement timeout"),
            DatabaseFault.ERROR,
            "QueryCanceled (SQLSTATE 57014): canceling statement due to statement timeout",
        ),
        (
            psycopg.errors.UniqueViolation('duplicate key value violates unique constraint "x"'),
            DatabaseFault.ERROR,
            'UniqueViolation (SQLSTATE 23505): duplicate key value violates unique constraint "x"',
        ),
    ],
)
def test_a_drivers_error_is_told_apart_by_its_sqlstate_not_by_djangos_class(driver_error, fault, described):
    error = as_django_raises(driver_error)

    assert database_fault(error) is fault
    assert describe_database_error(error) == described


@pytest.mark.unit
def test_an_error_raised_while_handling_a_lost_connection_means_a_lost_connection():
    lost = as_django_raises(psycopg.errors.AdminShutdown("terminating connection due to administrator command"))
    try:
        try:
            raise lost
        except Error:
            raise RuntimeError("cleaning up failed") from None
    except RuntimeError as exc:
        error = exc
    assert error.__cause__ is None and error.__context__ is lost
    assert database_fault(error) is DatabaseFault.UNAVAILABLE
    assert connection_lost(error)


@pytest.mark.unit
def test_an_error_that_no_database_error_caused_is_no_database_fault():
    assert database_fault(RuntimeError("a bug")) is None
    assert not connection_lost(RuntimeError("a bug"))
    assert describe_database_error(RuntimeError("a bug\nmore")) == "RuntimeError: a bug"


@pytest.mark.django_db(transaction=True)
def test_a_real_deadlock_is_a_conflict_named_by_its_sqlstate():
    first, second = Group.objects.create(name="first"), Group.objects.create(name="second")
    touch = "UPDATE auth_group SET name = name WHERE id = %s"
    params = connection.get_connection_params()
    with psycopg.connect(**params) as other, psycopg.connect(**params, autocommit=True) as watcher:
        other.execute("SET deadlock_timeout = '60s'")  # it waits; this session finds the deadlock
        other.execute(touch, [second.id])
        waiting = threading.Thread(target=other.execute, args=(touch, [first.id]))
        with pytest.raises(OperationalError) as raised, transaction.atomic(), connection.cursor() as cursor:
            cursor.execute("SET LOCAL deadlock_timeout = '100ms'")
            cursor.execute(touch, [first.id])
            waiting.start()
            wait_for(lambda: waits_for_a_lock(watcher, other.info.backend_pid), timeout=10)
            cursor.execute(touch, [second.id])
        waiting.join(10)
        assert not waiting.is_alive()

    assert database_fault(raised.value) is DatabaseFault.CONFLICT
    assert describe_database_error(raised.value) == "DeadlockDetected (SQLSTATE 40P01): deadlock detected"


def waits_for_a_lock(watcher, pid: int) -> bool:
    row = watcher.execute("SELECT wait_event_type FROM pg_stat_activity WHERE pid = %s", [pid]).fetchone()
    return row == ("Lock",)


@pytest.mark.django_db(transaction=True)
def test_a_real_serialization_failure_is_a_conflict_named_by_its_sqlstate():
    group = Group.objects.create(name="contended")

    with pytest.raises(OperationalError) as raised:
        serialization_failure(connection, "auth_group", group.id)

    assert database_fault(raised.value) is DatabaseFault.CONFLICT
    assert describe_database_error(raised.value) == SERIALIZATION_FAILURE


def test_a_busy_sqlite_database_is_a_conflict(tmp_path):
    path = tmp_path / "busy.sqlite3"
    holder, other = sqlite3.connect(path, timeout=0), sqlite3.connect(path, timeout=0)
    try:
        holder.execute("BEGIN IMMEDIATE")
        with pytest.raises(sqlite3.OperationalError) as raised:
            other.execute("BEGIN IMMEDIATE")
    finally:
        holder.close()
        other.close()

    assert database_fault(raised.value) is DatabaseFault.CONFLICT
    assert describe_database_error(raised.value) == "OperationalError (SQLITE_BUSY): database is locked"


@pytest.mark.django_db(transaction=True)
def test_a_transaction_left_idle_past_the_bound_is_cut_and_means_a_lost_connection_logged_as_transaction_cut():
    options = dict(connection.settings_dict["OPTIONS"])
    connection.settings_dict["OPTIONS"]["options"] = "-c search_path=public"
    try:
        bound_idle_transactions(timedelta(seconds=1))
        bound_idle_transactions(timedelta(milliseconds=300))  # the last one counts, once
        assert connection.settings_dict["OPTIONS"]["options"] == (
            "-c search_path=public -c idle_in_transaction_session_timeout=300"
        )
        with psycopg.connect(**connection.get_connection_params(), autocommit=True) as watcher:
            with pytest.raises(Error) as raised, transaction.atomic():
                Group.objects.create(name="idle")
                pid = connection.connection.info.backend_pid
                wait_for(lambda: not watcher.execute("SELECT 1 FROM pg_stat_activity WHERE pid = %s", [pid]).fetchone())
                Group.objects.count()
    finally:
        connection.settings_dict["OPTIONS"] = options
        connection.close()

    assert transaction_cut(raised.value) and connection_lost(raised.value)
    assert database_fault(raised.value) is DatabaseFault.UNAVAILABLE
    assert describe_database_error(raised.value) == (
        "IdleInTransactionSessionTimeout (SQLSTATE 25P03): terminating connection due to idle-in-transaction timeout"
    )
    assert fault_event(raised.value, {}) == (
        DatabaseFault.UNAVAILABLE,
        "transaction_cut",
        logging.ERROR,
        "database session ended: its transaction sat idle too long",
    )
    assert not Group.objects.filter(name="idle").exists()
