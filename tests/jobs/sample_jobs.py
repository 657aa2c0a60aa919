"""Jobs the tests run. Subprocess schedulers load them through SCHEDULER_JOB_MODULES."""

import dataclasses
import os
import time

import psycopg
from django.db import DatabaseError, connection, transaction

from jobs.engine.registry import JobContext, job
from outbox.events import IntegrationEvent
from outbox.publishing import publish


@dataclasses.dataclass(frozen=True)
class SampleRanEvent(IntegrationEvent):
    message_namespace = "BookWorm.Tests"
    occurrence: int = 0
    attempt: int = 0


@job("test.publish")
def publish_one(context: JobContext) -> None:
    """Publish one event naming the occurrence: the outbox shows how often each one ran."""
    publish(SampleRanEvent(occurrence=context.occurrence_id, attempt=context.attempt))


@job("test.fail")
def fail(context: JobContext) -> None:
    """Publish, then raise: the event must roll back with the failed run."""
    publish(SampleRanEvent(occurrence=context.occurrence_id, attempt=context.attempt))
    raise RuntimeError("the sample job failed on purpose")


@job("test.fail_until")
def fail_until(context: JobContext) -> None:
    """Fail every attempt before kwargs["succeed_on"]."""
    if context.attempt < context.kwargs.get("succeed_on", 2):
        raise RuntimeError(f"attempt {context.attempt} fails")
    publish(SampleRanEvent(occurrence=context.occurrence_id, attempt=context.attempt))


@job("test.sleep")
def sleep(context: JobContext) -> None:
    """Sleep kwargs["seconds"] in short slices (on attempt kwargs["on_attempt"] only, if given)."""
    if context.kwargs.get("on_attempt", context.attempt) == context.attempt:
        deadline = time.monotonic() + context.kwargs.get("seconds", 1)
        while time.monotonic() < deadline:
            time.sleep(0.02)
    publish(SampleRanEvent(occurrence=context.occurrence_id, attempt=context.attempt))


@job("test.sleep_until_cancelled")
def sleep_until_cancelled(context: JobContext) -> None:
    """Publish, then sleep in short slices for kwargs["seconds"], asking each time whether it was cancelled."""
    publish(SampleRanEvent(occurrence=context.occurrence_id, attempt=context.attempt))
    deadline = time.monotonic() + context.kwargs.get("seconds", 60)
    while time.monotonic() < deadline:
        context.stop_if_cancelled()
        time.sleep(0.05)


@job("test.swallow")
def swallow(context: JobContext) -> None:
    """Sleep in a loop that swallows every Exception: the timeout must still stop it."""
    deadline = time.monotonic() + context.kwargs.get("seconds", 30)
    while time.monotonic() < deadline:
        try:
            time.sleep(0.02)
        except Exception:  # noqa: S110  (the point of this job)
            pass


@job("test.exit")
def exit_(context: JobContext) -> None:
    """Raise SystemExit or KeyboardInterrupt (kwargs["raise"]), as careless job code may."""
    raise {"exit": SystemExit(3), "interrupt": KeyboardInterrupt()}[context.kwargs.get("raise", "exit")]


LOST_CONNECTION_ONCE: set[int] = set()


@job("test.lose_connection")
def lose_connection(context: JobContext) -> None:
    """Publish, then have the database end this session (first run of each occurrence only)."""
    publish(SampleRanEvent(occurrence=context.occurrence_id, attempt=context.attempt))
    if context.occurrence_id not in LOST_CONNECTION_ONCE:
        LOST_CONNECTION_ONCE.add(context.occurrence_id)
        pid = connection.cursor().connection.info.backend_pid
        with psycopg.connect(**connection.get_connection_params(), autocommit=True) as other:
            other.execute("SELECT pg_terminate_backend(%s)", [pid])


CONFLICTED_ONCE: set[int] = set()


@job("test.conflict_at_record")
def conflict_at_record(context: JobContext) -> None:
    """Publish; the first run of each occurrence also makes the record of its run lose a real conflict.

    Its transaction reads the occurrence at REPEATABLE READ, then another session updates the
    row (as a lease renewal does): the record's update of it fails with SQLSTATE 40001.
    """
    if context.occurrence_id not in CONFLICTED_ONCE:
        CONFLICTED_ONCE.add(context.occurrence_id)
        with connection.cursor() as cursor:
            cursor.execute("SET TRANSACTION ISOLATION LEVEL REPEATABLE READ")
            cursor.execute("SELECT 1 FROM jobs_occurrence WHERE id = %s", [context.occurrence_id])
        with psycopg.connect(**connection.get_connection_params(), autocommit=True) as other:
            other.execute("UPDATE jobs_occurrence SET id = id WHERE id = %s", [context.occurrence_id])
    publish(SampleRanEvent(occurrence=context.occurrence_id, attempt=context.attempt))


@job("test.own_transactions", atomic=False)
def own_transactions(context: JobContext) -> None:
    """Commit one event in a transaction of its own, then fail if kwargs["fail"]."""
    if connection.in_atomic_block:
        raise AssertionError("a job that manages its own transactions runs outside one")
    with transaction.atomic():
        publish(SampleRanEvent(occurrence=context.occurrence_id, attempt=context.attempt))
    if context.kwargs.get("fail"):
        raise RuntimeError("failed after its own commit")


@job("test.publish_then_sleep")
def publish_then_sleep(context: JobContext) -> None:
    """Publish, then sleep kwargs["seconds"] in short slices: a timeout stops it after its event was written."""
    publish(SampleRanEvent(occurrence=context.occurrence_id, attempt=context.attempt))
    deadline = time.monotonic() + context.kwargs.get("seconds", 0)
    while time.monotonic() < deadline:
        time.sleep(0.02)


@job("test.hold_once")
def hold_once(context: JobContext) -> None:
    """Publish; then, the first time only, create the file kwargs["marker"] and sleep kwargs["seconds"].

    Lets a test kill a scheduler while this run, and the runs of its group before it, have not committed.
    """
    publish(SampleRanEvent(occurrence=context.occurrence_id, attempt=context.attempt))
    marker = context.kwargs.get("marker")
    if marker and not os.path.exists(marker):
        with open(marker, "w"):
            pass
        deadline = time.monotonic() + context.kwargs.get("seconds", 60)
        while time.monotonic() < deadline:
            time.sleep(0.02)


@job("test.idle_in_transaction")
def idle_in_transaction(context: JobContext) -> None:
    """Send a statement, wait kwargs["seconds"] with the run's transaction open and idle, then send another."""
    with connection.cursor() as cursor:
        cursor.execute("SELECT 1")
    deadline = time.monotonic() + context.kwargs.get("seconds", 1)
    while time.monotonic() < deadline:
        time.sleep(0.02)
    with connection.cursor() as cursor:
        cursor.execute("SELECT 1")


@job("test.bad_sql")
def bad_sql(context: JobContext) -> None:
    """Publish, then send a statement the database rejects: the error aborts what the job did."""
    publish(SampleRanEvent(occurrence=context.occurrence_id, attempt=context.attempt))
    with connection.cursor() as cursor:
        cursor.execute("SELECT 1 / 0")


@job("test.swallow_database_error")
def swallow_database_error(context: JobContext) -> None:
    """Publish, then swallow a database error inside atomic(savepoint=False): its transaction can only roll back."""
    publish(SampleRanEvent(occurrence=context.occurrence_id, attempt=context.attempt))
    try:
        with transaction.atomic(savepoint=False), connection.cursor() as cursor:
            cursor.execute("SELECT 1 / 0")
    except DatabaseError:
        pass


@job("test.first_statement_fails_in_atomic")
def first_statement_fails_in_atomic(context: JobContext) -> None:
    """A statement that fails first, in an atomic block of its own, handled; then publish: a success."""
    try:
        with transaction.atomic(), connection.cursor() as cursor:
            cursor.execute("SELECT 1 / 0")
    except DatabaseError:
        pass
    publish(SampleRanEvent(occurrence=context.occurrence_id, attempt=context.attempt))


@job("test.swallow_first_statement_error")
def swallow_first_statement_error(context: JobContext) -> None:
    """Its first statement fails and it swallows the error outside any atomic block: its transaction is aborted."""
    try:
        with connection.cursor() as cursor:
            cursor.execute("SELECT 1 / 0")
    except DatabaseError:
        pass


# One-off runs (jobs.engine.oneoff).


@job("test.echo")
def echo(context: JobContext) -> dict:
    """Publish, then return what the run was given: its payload, attempt and parent (a follow-up's)."""
    publish(SampleRanEvent(occurrence=context.occurrence_id, attempt=context.attempt))
    parent = context.parent
    return {
        "payload": context.payload,
        "attempt": context.attempt,
        "parent": None if parent is None else {"id": parent.id, "status": parent.status, "result": parent.result},
    }


@job("test.not_json")
def not_json(context: JobContext) -> object:
    """Publish, then return what JSON cannot hold: the run fails, its event rolled back."""
    publish(SampleRanEvent(occurrence=context.occurrence_id, attempt=context.attempt))
    return {"when": object()}


@job("test.retried", retries=2, retry_intervals=[0], priority=2)
def retried(context: JobContext) -> int:
    """High priority; fails every attempt before payload["succeed_on"], retried at once twice; returns its attempt."""
    if context.attempt < context.payload.get("succeed_on", 2):
        raise RuntimeError(f"attempt {context.attempt} fails")
    return context.attempt


@job("test.nap", retries=1)
def nap(context: JobContext) -> dict:
    """On its first attempt, sleep payload["seconds"] in short slices; return its parent's status (a follow-up's)."""
    if context.attempt == 1:
        deadline = time.monotonic() + context.payload.get("seconds", 1)
        while time.monotonic() < deadline:
            time.sleep(0.02)
    return {"parent_status": None if context.parent is None else context.parent.status}


@job("test.session_setting")
def session_setting(context: JobContext) -> dict:
    """Return the value of the setting payload["name"] in the session the job runs in."""
    name = context.payload["name"]
    with connection.cursor() as cursor:
        cursor.execute("SELECT current_setting(%s)", [name])
        return {name: cursor.fetchone()[0]}
