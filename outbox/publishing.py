"""Publishing an event: one outbox row written inside the caller's transaction."""

import contextlib
import contextvars
import uuid
from datetime import timedelta

import uuid6
from django.conf import settings
from django.db import DEFAULT_DB_ALIAS, connections, transaction

from bookworm_scheduler.kernel import tracing
from bookworm_scheduler.kernel.clock import default_clock
from bookworm_scheduler.kernel.db import insert_row, insert_rows
from outbox.events import IntegrationEvent
from outbox.models import OutboxMessage, PublishedKey

NOTIFY_CHANNEL = "outbox"  # see migration 0002_notify_on_insert

_origin: contextvars.ContextVar[str] = contextvars.ContextVar("outbox_origin", default="")


@contextlib.contextmanager
def origin(name: str):
    """Rows published inside this block record name as their origin (e.g. "occurrence:42")."""
    token = _origin.set(name)
    try:
        yield
    finally:
        _origin.reset(token)


class Kept:
    """The outbox rows publish() keeps in memory inside deferred(), in the order published."""

    def __init__(self, using: str):
        self.using = using
        self.rows: list[OutboxMessage] = []

    def insert(self) -> None:
        """Write the rows kept so far (one statement), and keep none."""
        rows, self.rows = self.rows, []
        insert_rows(rows, self.using)


_kept: contextvars.ContextVar[Kept | None] = contextvars.ContextVar("outbox_kept", default=None)


@contextlib.contextmanager
def deferred(using: str = DEFAULT_DB_ALIAS):
    """Inside this block publish() keeps its rows in memory instead of inserting each: one statement for many.

    Yields a Kept. The rows kept so far are inserted before any other statement the block sends
    through Django's connection, so that they are written where they were published: inside a
    nested atomic block (its SAVEPOINT, RELEASE and ROLLBACK TO are statements too) and before
    work that may read them. What is still kept when the block ends is the caller's to insert
    before its transaction commits (kept.insert(), or insert_rows with the rows of other blocks)
    or to drop with the rest of the block's work, if that failed. A grouped run of the
    scheduler is such a block (jobs.engine.runner): the rows of a job that only publishes cost no
    round trip of their own; the group writes the rows of all its runs with its record.
    """
    kept = Kept(using)

    def rows_first(execute, sql, params, many, context):
        if kept.rows:
            kept.insert()
        return execute(sql, params, many, context)

    token = _kept.set(kept)
    try:
        with connections[using].execute_wrapper(rows_first):
            yield kept
    finally:
        _kept.reset(token)


class TransactionRequired(RuntimeError):
    """publish() was called outside transaction.atomic()."""


def publish(
    event: IntegrationEvent,
    *,
    message_id: uuid.UUID | None = None,
    idempotency_key: str | None = None,
    correlation_id: uuid.UUID | None = None,
    headers: dict | None = None,
    using: str = DEFAULT_DB_ALIAS,
) -> OutboxMessage | None:
    """Write event to the outbox as part of the current transaction.

    The row commits or rolls back with the caller's work, so the event exists if and only if
    that work committed. A publish whose idempotency key (default: the message id, when one is
    given) was already published within OUTBOX_DUPLICATE_WINDOW_SECONDS is a no-op and returns
    None. On PostgreSQL a trigger on the outbox table sends NOTIFY outbox (NOTIFY_CHANNEL),
    which wakes the relay when the transaction commits.

    Inside deferred() (a grouped run of the scheduler) the row is kept and written before the
    block's next statement, or by the block's caller before its commit: its pk is set then.

    When tracing is on, the current span's context (an occurrence's run, a web request) is
    stored in the row's headers as W3C `traceparent` and `tracestate`, unless the caller gave
    its own: the relay continues that trace when it publishes (bookworm_scheduler.kernel.tracing).
    """
    connection = transaction.get_connection(using)
    if not connection.in_atomic_block:
        raise TransactionRequired("publish() must be called inside transaction.atomic()")
    now = default_clock()  # the database's time, which the relay judges availability by
    key = idempotency_key or (str(message_id) if message_id else None)
    if key is not None:
        window = timedelta(seconds=settings.OUTBOX_DUPLICATE_WINDOW_SECONDS)
        if not PublishedKey.claim(key, now, window, using):
            return None
    message = OutboxMessage(
        message_id=message_id or uuid6.uuid7(),
        correlation_id=correlation_id,
        message_types=event.message_types(),
        exchange=event.exchange(),
        body=event.to_message(),
        headers=_with_trace_context(headers or {}),
        created_at=now,
        available_at=now,
        origin=_origin.get(),
    )
    kept = _kept.get()
    if kept is not None and kept.using == using:
        kept.rows.append(message)
        return message
    return insert_row(message, using)


def _with_trace_context(headers: dict) -> dict:
    if not tracing.active() or tracing.TRACEPARENT in headers:
        return headers
    carrier: dict = {}
    tracing.inject(carrier)
    return {**headers, **carrier}
