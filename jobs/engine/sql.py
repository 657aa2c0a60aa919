"""The statements the scheduler's hot paths send, named and kept together.

Table and column names come from the models' _meta. Each statement is built once per
database alias (functools.cache): they run once or more per occurrence.
"""

import functools

from django.apps import apps
from django.db import connections
from django.db.models import JSONField

from bookworm_scheduler.kernel.db import SqlNames, row_converter
from jobs.engine.policy import Priority
from jobs.models import OccurrenceStatus


def _names(model_name: str, alias: str) -> SqlNames:
    return SqlNames(apps.get_model("jobs", model_name), alias)


def _ready(occ: SqlNames, alias: str, long_running: bool, also: str = "") -> str:
    """The SELECT of ready occurrences that claim and lock_ready share: one rule for what is ready, in what order.

    Parameters: now, those of `also` (a further condition), the limit. The scheduled status and the
    LongRunning priority are in the text, not parameters: the indexes are partial on them (occ_ready,
    occ_ready_long), and a prepared statement's generic plan can use a partial index only when its
    condition is in the statement itself. FOR UPDATE SKIP LOCKED (on PostgreSQL): concurrent
    schedulers never take the same row. A range on occ_ready's first column for ordinary jobs;
    occ_ready_long for LongRunning ones.
    """
    lock = " FOR UPDATE SKIP LOCKED" if connections[alias].features.has_select_for_update_skip_locked else ""
    kind = "=" if long_running else "<"
    return (
        f"FROM {occ.table} WHERE {occ.status} = '{OccurrenceStatus.SCHEDULED.value}' AND {occ.run_after} <= %s "
        f"AND {occ.priority} {kind} {int(Priority.LONG_RUNNING)} {also}"
        f"ORDER BY {occ.priority} DESC, {occ.run_after}, {occ.id} LIMIT %s{lock}"
    )


def _rows(occ: SqlNames, alias: str):
    """The columns a statement returns to build Occurrence instances, their attnames and a row converter.

    JSON columns as text: Django's JSONField reads text, and the prepared cursor asks for binary results
    (bookworm_scheduler.kernel.db.prepared_cursor), whose jsonb psycopg would parse itself.
    """
    fields = occ.model._meta.concrete_fields
    convert = row_converter(occ.model, alias, fields)

    def column(field) -> str:
        name = occ.quote(field.column)
        return f"CAST({name} AS text)" if isinstance(field, JSONField) else name

    return ", ".join(column(f) for f in fields), [f.attname for f in fields], convert


@functools.cache
def claim(alias: str, long_running: bool):
    """Move up to N ready occurrences to running with a lease, in one statement.

    The inner SELECT (_ready) takes the rows with FOR UPDATE SKIP LOCKED. Each claim starts an
    attempt: attempts + 1, started_at = now. Returns the statement, the attribute names of the
    returned columns and a converter of the rows (or None).
    """
    occ = _names("Occurrence", alias)
    columns, names, convert = _rows(occ, alias)
    statement = (
        f"UPDATE {occ.table} SET {occ.status} = %s, {occ.attempts} = {occ.attempts} + 1, {occ.scheduler} = %s, "
        f"{occ.session} = %s, {occ.lease_expires_at} = %s, {occ.started_at} = %s "
        f"WHERE {occ.id} IN (SELECT {occ.id} {_ready(occ, alias, long_running)}) "
        f"RETURNING {columns}"
    )
    return statement, names, convert


@functools.cache
def lock_ready(alias: str):
    """Lock up to N ready ordinary occurrences for the current transaction, unchanged.

    A group (jobs.engine.groups.GroupRunner.run_group) runs them and records them in the same transaction
    (record_group): the row lock is their claim, so a crash before the commit leaves them
    scheduled, as if never taken. Same order and rule as claim (_ready), less the ids of the
    last parameter but one: the rows this transaction locked already, which SKIP LOCKED does not
    skip.
    """
    occ = _names("Occurrence", alias)
    columns, names, convert = _rows(occ, alias)
    return f"SELECT {columns} {_ready(occ, alias, False, also=f'AND {occ.id} <> ALL(%s::bigint[]) ')}", names, convert


@functools.cache
def record_group(alias: str) -> str:
    """PostgreSQL only: how the runs of a group ended, one row each, in one statement.

    The occurrences were locked by lock_ready in this transaction and are still scheduled in the
    table: a compare-and-set from (scheduled, attempts - 1) to the outcome, with the claim's
    scheduler, session and start, and one attempt row each. Parameters: arrays (one element per
    run) of id, number, status, run_after, finished_at, reason, attempt status, started_at,
    ended_at, error, traceback and result (JSON text, or null), sent in binary (%b, as in
    insert_occurrence_arrays); then scheduler and session. Returns one row per attempt inserted.
    """
    occ, att = _names("Occurrence", alias), _names("Attempt", alias)
    scheduled = occ.model.Status.SCHEDULED.value
    return f"""
        WITH done AS (
            SELECT * FROM unnest(%b::bigint[], %b::int[], %b::text[], %b::timestamptz[], %b::timestamptz[],
                                 %b::text[], %b::text[], %b::timestamptz[], %b::timestamptz[], %b::text[], %b::text[],
                                 %b::text[])
                AS d(id, number, status, run_after, finished_at, reason, attempt_status, started_at, ended_at,
                     error, traceback, result)
        ), finished AS (
            UPDATE {occ.table} AS o
               SET {occ.status} = done.status, {occ.attempts} = done.number, {occ.scheduler} = %s,
                   {occ.session} = %s, {occ.started_at} = done.started_at,
                   {occ.run_after} = COALESCE(done.run_after, o.{occ.run_after}),
                   {occ.finished_at} = done.finished_at, {occ.reason} = done.reason, {occ.lease_expires_at} = NULL,
                   {occ.result} = done.result::jsonb
              FROM done
             WHERE o.{occ.id} = done.id AND o.{occ.status} = '{scheduled}' AND o.{occ.attempts} = done.number - 1
         RETURNING o.{occ.id}, o.{occ.scheduler}
        )
        INSERT INTO {att.table}
               ({att.occurrence}, {att.number}, {att.status}, {att.scheduler}, {att.started_at}, {att.finished_at},
                {att.duration}, {att.error}, {att.traceback})
        SELECT done.id, done.number, done.attempt_status, finished.{occ.scheduler}, done.started_at, done.ended_at,
               done.ended_at - done.started_at, done.error, done.traceback
          FROM done JOIN finished ON finished.{occ.id} = done.id
        RETURNING {att.occurrence}
    """


@functools.cache
def record_attempt(alias: str) -> str:
    """PostgreSQL only: the compare-and-set from running and the attempt row, one round trip.

    result: the job's return value as JSON text (null: none, or not a success). Returns the
    attempt's id, or no row when the claim is no longer this session's or its cancel was
    asked (jobs.engine.store.record_cancel ends it then).
    """
    occ, att = _names("Occurrence", alias), _names("Attempt", alias)
    running = occ.model.Status.RUNNING.value
    return f"""
        WITH finished AS (
            UPDATE {occ.table}
               SET {occ.status} = %(status)s, {occ.run_after} = COALESCE(%(run_after)s, {occ.run_after}),
                   {occ.finished_at} = %(finished_at)s, {occ.reason} = %(reason)s, {occ.lease_expires_at} = NULL,
                   {occ.result} = CAST(%(result)s AS jsonb)
             WHERE {occ.id} = %(id)s AND {occ.status} = '{running}' AND {occ.session} = %(session)s
               AND {occ.attempts} = %(number)s AND {occ.cancel_requested_at} IS NULL
         RETURNING {occ.id}
        )
        INSERT INTO {att.table}
               ({att.occurrence}, {att.number}, {att.status}, {att.scheduler}, {att.started_at}, {att.finished_at},
                {att.duration}, {att.error}, {att.traceback})
        SELECT {occ.id}, %(number)s, %(attempt_status)s, %(scheduler)s, %(started_at)s, %(now)s, %(duration)s,
               %(error)s, %(traceback)s
          FROM finished
        RETURNING {att.id}
    """


# A planned occurrence's columns as planning gives them (jobs.engine.planning._occurrence_row), with their types,
# and the columns every planned row has alike.
PLANNED_TYPES = {
    "task": "int",
    "job_name": "text",
    "scheduled_for": "timestamptz",
    "run_after": "timestamptz",
    "priority": "int",
    "status": "text",
    "finished_at": "timestamptz",
    "reason": "text",
    "then": "jsonb",
}
PLANNED_COLUMNS = tuple(PLANNED_TYPES)
PLANNED_CONSTANTS = {"manual": "FALSE", "triggered_by": "''", "attempts": "0", "scheduler": "''"}


@functools.cache
def insert_occurrences(alias: str, rows: int) -> str:
    """Planned rows; an instant already planned is skipped, not an error.

    Parameters per row: task id, job name, scheduled_for, run_after, priority, status,
    finished_at, reason, then (the definition's follow-ups as JSON text, or None), created_at. ON CONFLICT
    DO NOTHING lets the partial unique constraint occurrence_once_per_instant drop a row another scheduler
    inserted first; RETURNING tells which rows the database took, so what is logged is what was inserted.
    """
    occ = _names("Occurrence", alias)
    columns = [getattr(occ, name) for name in (*PLANNED_COLUMNS, "created_at", *PLANNED_CONSTANTS)]
    row = "(" + ", ".join(["%s"] * (len(PLANNED_COLUMNS) + 1) + list(PLANNED_CONSTANTS.values())) + ")"
    return (
        f"INSERT INTO {occ.table} ({', '.join(columns)}) VALUES {', '.join([row] * rows)} "
        f"ON CONFLICT DO NOTHING RETURNING {occ.status}"
    )


@functools.cache
def insert_occurrence_arrays(alias: str) -> str:
    """PostgreSQL only: insert_occurrences with one array per column.

    Parameters: created_at, then the same nine values as arrays (one element per row), sent in
    binary (%b: psycopg quotes each element of a text array, 6 times slower; `then` as text, cast to
    jsonb). Ten placeholders however many rows: psycopg converts a query with thousands of them slowly.
    """
    occ = _names("Occurrence", alias)
    columns = [getattr(occ, name) for name in (*PLANNED_COLUMNS, "created_at", *PLANNED_CONSTANTS)]
    arrays = ", ".join(f"%b::{kind}[]" for kind in PLANNED_TYPES.values())
    return (
        f"INSERT INTO {occ.table} ({', '.join(columns)}) "
        f"SELECT r.*, %s, {', '.join(PLANNED_CONSTANTS.values())} FROM unnest({arrays}) AS r "
        f"ON CONFLICT DO NOTHING RETURNING {occ.status}"
    )


@functools.cache
def read_cursors(alias: str, lock: bool) -> str:
    """PostgreSQL only: the planning cursors of the given definitions, one statement.

    Parameter: the definitions' ids as one array. Returns (task id, planned_through, paused_at,
    resumed_at) in id order. With lock, only those of enabled definitions, locked FOR UPDATE SKIP
    LOCKED: a cursor another scheduler holds is left out (it plans that definition now). A burst
    of 10,000 due definitions as Django's `task_id__in` spent about 0.4 s converting its 10,000
    placeholders and 0.6 s building model instances.
    """
    cursor = _names("PlanningCursor", alias)
    task = connections[alias].ops.quote_name(cursor.model._meta.get_field("task").related_model._meta.db_table)
    columns = f"c.{cursor.task}, c.{cursor.planned_through}, c.{cursor.paused_at}, c.{cursor.resumed_at}"
    if not lock:
        return f"SELECT {columns} FROM {cursor.table} c WHERE c.{cursor.task} = ANY(%b::int[]) ORDER BY c.{cursor.task}"
    return (
        f"SELECT {columns} FROM {cursor.table} c JOIN {task} t ON t.id = c.{cursor.task} "
        f"WHERE c.{cursor.task} = ANY(%b::int[]) AND t.enabled ORDER BY c.{cursor.task} FOR UPDATE OF c SKIP LOCKED"
    )


@functools.cache
def move_cursors(alias: str) -> str:
    """PostgreSQL only: set planning cursors, one statement for any number.

    Parameters: arrays (one element per cursor) of task id, planned_through, paused_at, resumed_at.
    """
    cursor = _names("PlanningCursor", alias)
    return (
        f"UPDATE {cursor.table} c SET {cursor.planned_through} = m.planned_through, "
        f"{cursor.paused_at} = m.paused_at, {cursor.resumed_at} = m.resumed_at "
        f"FROM unnest(%b::int[], %b::timestamptz[], %b::timestamptz[], %b::timestamptz[]) "
        f"AS m(task_id, planned_through, paused_at, resumed_at) WHERE c.{cursor.task} = m.task_id"
    )


@functools.cache
def prune_occurrences(alias: str) -> str:
    """PostgreSQL only: one batch of old finished occurrences, one round trip.

    Parameters: the finished statuses, the cutoff, the batch size. Deletes their attempts,
    unlinks their alerts (which keep their own copy of the job and error) and their follow-ups
    (children, whose parent is then null, as on_delete=SET_NULL would have it) and deletes them;
    returns how many occurrences went. The oldest first, by index occ_finished; rows another
    transaction holds are left for the next batch.
    """
    occ, att, alert = _names("Occurrence", alias), _names("Attempt", alias), _names("Alert", alias)
    return f"""
        WITH doomed AS (
            SELECT {occ.id} FROM {occ.table}
             WHERE {occ.status} = ANY(%s) AND {occ.finished_at} < %s
             ORDER BY {occ.finished_at} LIMIT %s FOR UPDATE SKIP LOCKED
        ), unlinked AS (
            UPDATE {alert.table} SET {alert.occurrence} = NULL WHERE {alert.occurrence} IN (SELECT {occ.id} FROM doomed)
        ), orphaned AS (
            UPDATE {occ.table} SET {occ.parent} = NULL
             WHERE {occ.parent} IN (SELECT {occ.id} FROM doomed) AND {occ.id} NOT IN (SELECT {occ.id} FROM doomed)
        ), attempts AS (
            DELETE FROM {att.table} WHERE {att.occurrence} IN (SELECT {occ.id} FROM doomed)
        ), gone AS (
            DELETE FROM {occ.table} WHERE {occ.id} IN (SELECT {occ.id} FROM doomed) RETURNING 1
        )
        SELECT count(*) FROM gone
    """


@functools.cache
def insert_one_offs(alias: str):
    """PostgreSQL only: one-off runs (jobs.engine.oneoff), any number in one statement; returns the rows inserted.

    Parameters: triggered_by and created_at, then one array per column (one element per run), sent
    in binary: job, payload (JSON text), key, priority, scheduled_for (also run_after), expires_at,
    then (JSON text), parent. Inserted in the order given (WITH ORDINALITY), so their ids, sorted,
    follow it. ON CONFLICT DO NOTHING: a run whose key a live run holds (occurrence_key_once_live,
    committed or not: a concurrent insert of the key waits for that transaction) is not inserted;
    the caller reads that run instead. Returns the statement, the returned columns' attnames and a
    row converter, as claim does.
    """
    occ = _names("Occurrence", alias)
    returned, names, convert = _rows(occ, alias)
    given = ("job", "job_name", "payload", "key", "priority", "scheduled_for", "run_after", "expires_at", "then")
    constant = {"status": f"'{occ.model.Status.SCHEDULED.value}'", "manual": "FALSE", "attempts": "0"}
    constant |= {"scheduler": "''", "reason": "''", "cancel_requested_by": "''"}
    columns = [getattr(occ, name) for name in (*given, "parent", "triggered_by", "created_at", *constant)]
    values = "r.job, r.job, r.payload::jsonb, r.key, r.priority, r.at, r.at, r.expires_at, r.follow_ups::jsonb"
    return (
        (
            f"INSERT INTO {occ.table} ({', '.join(columns)}) "
            f"SELECT {values}, r.parent, %s, %s, {', '.join(constant.values())} "
            f"FROM unnest(%b::text[], %b::text[], %b::text[], %b::int[], %b::timestamptz[], %b::timestamptz[], "
            f"%b::text[], %b::bigint[]) WITH ORDINALITY AS r(job, payload, key, priority, at, expires_at, follow_ups, "
            f"parent, n) ORDER BY r.n "
            f"ON CONFLICT DO NOTHING RETURNING {returned}"
        ),
        names,
        convert,
    )
