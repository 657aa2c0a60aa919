import uuid
from datetime import UTC, datetime, timedelta

import psycopg
import pytest
from django.db import DataError, connection, transaction
from django.test.utils import CaptureQueriesContext

from bookworm_scheduler.db import prepared_cursor
from outbox.models import OutboxMessage
from outbox.publishing import publish
from tests.jobs.sample_jobs import SampleRanEvent


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
