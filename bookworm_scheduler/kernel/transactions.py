"""Transactions beyond Django's atomic(): the few places that take its statements into their own hands.

The reason is always the same, and stated here once: round trips. A run is a transaction, and
on a busy scheduler or relay each round trip to PostgreSQL is a measurable share of the time
per occurrence or message (docs/benchmarks.md). So:

- a job of a group runs in a savepoint that is sent together with the job's first statement,
  and never released (job_savepoint): Django's atomic() would send SAVEPOINT and RELEASE on
  their own, two round trips per run;
- the relay opens its transaction in the string of its first statement and commits in the
  string of its last (begun, committed), or rolls it back (rollback): psycopg's client-side
  binding cursor sends a string of several statements as one, and Django's atomic() would add a
  BEGIN and a COMMIT of their own;
- a job's timeout is also the server's statement timeout (statement_timeout), because the
  watchdog that stops the job cannot stop a query.

This module alone edits Django's connection state (savepoint_ids, needs_rollback) or sends
BEGIN, COMMIT, ROLLBACK or SAVEPOINT itself.
"""

import itertools
from contextlib import contextmanager, suppress

import psycopg
from django.db import DEFAULT_DB_ALIAS, DatabaseError, connection, connections
from django.db.transaction import TransactionManagementError

from bookworm_scheduler.kernel.dialect import postgresql


@contextmanager
def job_savepoint():
    """The savepoint of one job in a group: rolled back if the job raises, left for the commit if it returns.

    Sent with the job's first statement, not on its own (_QueuedSavepoint). Not released: that
    would be one more round trip per run, and the group's commit ends them all (a group nests as
    many as it runs). Like transaction.atomic() it drops the on_commit callbacks of a job rolled
    back and clears needs_rollback after the rollback; a job that returns with its
    transaction marked for rollback (an error it swallowed inside atomic(savepoint=False), say),
    or aborted (an error it swallowed outside any atomic block), has failed: its work is rolled
    back, not committed silently, and the next job starts from a usable transaction.
    """
    db = connections[DEFAULT_DB_ALIAS]  # the proxy `connection` looks it up at every attribute
    sid = f"run_{next(_savepoint_numbers)}"
    queued = _QueuedSavepoint(db, sid)
    db.savepoint_ids.append(sid)
    returned = False
    try:
        try:
            yield
        finally:
            queued.close()  # what the job sent is answered: an error of it is the job's
        if db.needs_rollback:
            raise TransactionManagementError("the job returned with its transaction marked for rollback")
        if db.connection.info.transaction_status == psycopg.pq.TransactionStatus.INERROR:
            # A database error it swallowed outside any atomic block: the next job would get it.
            raise TransactionManagementError("the job returned with its transaction aborted by a database error")
        returned = True
    finally:
        db.savepoint_ids.pop()
        if not returned:
            db.needs_rollback = False  # cleared first, or Django refuses the rollback itself
            try:
                db.savepoint_rollback(sid)
            except DatabaseError:
                db.needs_rollback = True  # the connection broke: the group is lost (connection_lost)
                raise


_savepoint_numbers = itertools.count(1)  # names of the runs' savepoints: unique within a process


class _QueuedSavepoint:
    """A run's SAVEPOINT sent together with the job's first statement: one round trip for both.

    psycopg's pipeline mode queues the SAVEPOINT. The first statement the job sends through
    Django's connection (an execute_wrapper) is queued behind it, and the pipeline is left as
    soon as it is: its result, or its error, reaches the job from execute() as it would have
    without the pipeline. A job that sent nothing (one that only publishes: its rows are kept for
    the group's statement, outbox.publishing.deferred) leaves the pipeline when it ends, which
    costs the savepoint's round trip. A statement sent on psycopg's own connection
    (connection.connection) goes into the same pipeline, after the savepoint: covered by it.

    A Sync follows the SAVEPOINT at once, not waited for (_sync_sent): until a Sync the server is
    in the middle of a pipeline ("active"), not idle in its transaction, and a process paused
    while its job sends nothing would hold the group's locks past idle_in_transaction_session_timeout
    (kernel.db.bound_idle_transactions). psycopg has no public call that sends a Sync without
    waiting for its answer: _sync_sent uses its Pipeline's queues (psycopg is pinned).
    """

    def __init__(self, db, sid: str):
        self._db = db
        raw = db.connection
        self._pipeline = raw.pipeline()
        pipeline = self._pipeline.__enter__()
        try:
            raw.execute(db.ops.savepoint_create_sql(sid))
            _sync_sent(raw, pipeline)
        except BaseException:
            self._pipeline.__exit__(None, None, None)
            raise
        db.execute_wrappers.append(self._sent_with)

    def _sent_with(self, execute, sql, params, many, context):
        try:
            return execute(sql, params, many, context)
        finally:
            self.close()

    def close(self) -> None:
        """Leave the pipeline, once: send what is queued and wait for the answers (raises the first error)."""
        if self._pipeline is None:
            return
        pipeline, self._pipeline = self._pipeline, None
        self._db.execute_wrappers.remove(self._sent_with)
        with self._db.wrap_database_errors:
            pipeline.__exit__(None, None, None)


def _sync_sent(raw, pipeline) -> None:
    """Send a Sync in pipeline mode without waiting for its answer, which the pipeline's exit reads
    with the rest (psycopg's Pipeline.sync() waits: a round trip)."""
    pipeline._enqueue_sync()
    raw.wait(pipeline._communicate_gen())


@contextmanager
def statement_timeout(seconds: int | None, *, local: bool):
    """On PostgreSQL, cancel a query that outlives the job's timeout (the watchdog cannot stop a query)."""
    if not seconds or not postgresql():
        yield
        return
    with connection.cursor() as cursor:
        cursor.execute("SELECT set_config('statement_timeout', %s, %s)", [f"{seconds * 1000}", local])
    try:
        yield
    finally:
        if not local:
            with suppress(DatabaseError), connection.cursor() as cursor:
                cursor.execute("RESET statement_timeout")


def reset_statement_timeout() -> None:
    if postgresql():
        with connection.cursor() as cursor:
            cursor.execute("RESET statement_timeout")


def begun(statement: str, *set_local: str) -> str:
    """PostgreSQL: statement as the first of a transaction, `BEGIN; SET LOCAL ...; statement` in one string.

    set_local: settings for this transaction alone, e.g. "enable_bitmapscan = off". The results of
    BEGIN and of each SET LOCAL come first (cursor.nextset() steps past them). Django does not
    know that the transaction is open: committed() or rollback() ends it.
    """
    return "; ".join(["BEGIN", *(f"SET LOCAL {setting}" for setting in set_local), statement])


def committed(statement: str, *, synchronous: bool = True) -> str:
    """PostgreSQL: statement as the last of the transaction begun() opened, `statement; COMMIT` in one string.

    Not synchronous: the commit does not wait for its WAL to reach the disk (SET LOCAL
    synchronous_commit = off, sent first: its result comes before the statement's).
    """
    if synchronous:
        return f"{statement}; COMMIT"
    return f"SET LOCAL synchronous_commit = off; {statement}; COMMIT"


def rollback(cursor) -> None:
    """PostgreSQL: roll back the transaction begun() opened, on the connection of cursor."""
    cursor.execute("ROLLBACK")
