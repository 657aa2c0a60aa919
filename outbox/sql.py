"""The statements of the relay's hot path, named and kept together (as jobs/engine/sql.py is the scheduler's).

Table and column names come from the model's _meta; each statement is built once per database
alias (functools.cache). On PostgreSQL the claim opens its transaction and the record of the
outcomes closes it in the same round trip as the statement itself (`BEGIN; ...` and `...;
COMMIT` in one string, which psycopg's client-side binding cursor, Django's default, sends as
one query; bookworm_scheduler.kernel.transactions.begun and committed): two round trips per
batch, whatever its size.
"""

import functools
from collections import namedtuple

from bookworm_scheduler.kernel.db import SqlNames, row_converter
from bookworm_scheduler.kernel.dialect import postgresql
from bookworm_scheduler.kernel.transactions import begun, committed
from outbox.models import OutboxMessage

PENDING = OutboxMessage.Status.PENDING.value  # the status literal the statements below compare with

# A claimed row: what the envelope needs (EnvelopeWriter.body reads the JSON columns as text, as
# they are stored; on PostgreSQL the ids too) and attempts, for the retry rule
# (OutboxMessage.record_failure) if its send fails.
Claimed = namedtuple("Claimed", "id message_id correlation_id exchange types_json body_json headers_json attempts")


@functools.cache
def claim(alias: str) -> tuple[str, object]:
    """Lock up to N rows ready at now, in write order, skipping rows another relay holds.

    Parameters: now, an id to start after, N. A pass of the relay starts after 0, then after the
    last row it claimed: the scan of outbox_pending then starts where the last claim stopped
    instead of stepping again over the rows the pass holds or has just recorded (their entries
    stay in the index until vacuum). A row below that, committed late, waits for the next pass.

    On PostgreSQL the statement begins the transaction whose commit (see
    record_outcomes) releases the locks, so two relays never hold the same row; SET LOCAL
    enable_bitmapscan = off keeps the plan on the partial index outbox_pending: LockRows between
    Sort and Limit rules out a top-N sort, and with statistics older than a backlog the planner
    would otherwise pick a bitmap scan and sort every pending row for each batch. Elsewhere
    (SQLite) the caller opens the transaction and one relay is assumed.

    Returns the statement and a converter of the fetched rows into Claimed tuples.
    """
    on_postgresql = postgresql(alias)
    m = SqlNames(OutboxMessage, alias)
    # PostgreSQL's text of a uuid is its canonical form, what the envelope needs: no UUID object.
    message_id, correlation_id = (
        f"CAST({c} AS text)" if on_postgresql else c for c in (m.message_id, m.correlation_id)
    )
    select = (
        f"SELECT {m.id}, {message_id}, {correlation_id}, {m.exchange}, CAST({m.message_types} AS text), "
        f"CAST({m.body} AS text), CAST({m.headers} AS text), {m.attempts} FROM {m.table} "
        f"WHERE {m.status} = '{PENDING}' AND {m.available_at} <= %s AND {m.id} > %s ORDER BY {m.id} LIMIT %s"
    )
    if on_postgresql:
        statement = begun(f"{select} FOR UPDATE SKIP LOCKED", "enable_bitmapscan = off")
    else:
        statement = select
    fields = [OutboxMessage._meta.get_field(name) for name in ("id", "message_id", "correlation_id")]
    values = row_converter(OutboxMessage, alias, fields)
    if values:  # SQLite stores UUIDs as text

        def convert(rows):
            return list(map(Claimed._make, values(rows)))

    else:

        def convert(rows):
            return list(map(Claimed._make, rows))

    return statement, convert


@functools.cache
def record_outcomes(alias: str, returning: bool) -> str:
    """PostgreSQL only: every outcome of a batch in one UPDATE, then COMMIT (asynchronous).

    Parameters: now (delivered_at), the ids delivered (an array literal, e.g. '{1,2}': the common
    case costs one parameter, and no adaptation of each id), then five arrays of equal length
    for the other rows: id, status, last_error, attempts and available_at (NULL: unchanged). A
    compare-and-set: only rows still pending change. With returning, the statement returns the
    created_at of the rows delivered (for outbox.relay_metrics.PUBLISH_LATENCY).
    """
    m = SqlNames(OutboxMessage, alias)
    delivered = OutboxMessage.Status.DELIVERED
    statement = f"""
        UPDATE {m.table} AS m
           SET {m.status} = o.status, {m.last_error} = o.last_error,
               {m.delivered_at} = CASE WHEN o.status = '{delivered}' THEN %s::timestamptz END,
               {m.attempts} = COALESCE(o.attempts, m.{m.attempts}),
               {m.available_at} = COALESCE(o.available_at, m.{m.available_at})
          FROM (SELECT id, '{delivered}'::varchar AS status, ''::text AS last_error, NULL::integer AS attempts,
                       NULL::timestamptz AS available_at
                  FROM unnest(%s::text::bigint[]) AS id
                 UNION ALL
                SELECT * FROM unnest(%s::bigint[], %s::varchar[], %s::text[], %s::integer[], %s::timestamptz[])
               ) AS o (id, status, last_error, attempts, available_at)
         WHERE m.{m.id} = o.id AND m.{m.status} = '{PENDING}'"""
    if returning:
        statement += f" RETURNING CASE WHEN o.status = '{delivered}' THEN m.{m.created_at} END"
    # The commit does not wait for the WAL to reach the disk: should PostgreSQL crash in the next
    # moment and lose the record, its rows are pending again and are sent again with their message
    # ids, as after any lost record; the relay does not wait for a flush per batch meanwhile.
    return committed(statement, synchronous=False)


@functools.cache
def record_outcome(alias: str) -> str:
    """SQLite only: one row's outcome, executed once per row, as record_outcomes.

    Parameters: status, last_error, delivered_at, attempts and available_at (NULL: unchanged), id.
    """
    m = SqlNames(OutboxMessage, alias)
    return (
        f"UPDATE {m.table} SET {m.status} = %s, {m.last_error} = %s, {m.delivered_at} = %s, "
        f"{m.attempts} = COALESCE(%s, {m.attempts}), {m.available_at} = COALESCE(%s, {m.available_at}) "
        f"WHERE {m.id} = %s AND {m.status} = '{PENDING}'"
    )
