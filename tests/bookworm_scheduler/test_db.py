import pytest
from django.db import DataError, connection, transaction

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
