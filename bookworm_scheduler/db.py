"""Plain database helpers shared by the apps."""

from functools import cache

from django.db import connections


@cache
def _insert_sql(model, alias: str) -> tuple[str, tuple]:
    quote = connections[alias].ops.quote_name
    fields = tuple(f for f in model._meta.concrete_fields if f is not model._meta.auto_field)
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
    with connection.cursor() as cursor:
        cursor.execute(sql, params)
        instance.pk = cursor.fetchone()[0]
    instance._state.adding = False
    instance._state.db = using
    return instance
