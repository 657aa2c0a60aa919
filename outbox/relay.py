"""The relay: committed outbox rows to RabbitMQ, marked delivered once the broker confirmed them.

Relay.deliver(now) is one pass: batches of ready rows claimed (FOR UPDATE SKIP LOCKED) and
published back to back through one window of confirms. Each batch is claimed in a transaction
of its own, on a database connection of its own (a Slot: four on PostgreSQL), and that
transaction records the batch's outcomes and commits once the broker has answered for every
message of it. Claims and records run in a recording thread while the publishing thread sends:
the next batch is claimed and on its way while the last confirms of this one arrive, and the
broker is not left idle at a batch boundary. A row stays locked from its claim
to the commit of its outcome, so several relays share the work without sending a row twice, and
a relay that dies releases its rows at once. deliver_batch(now) is a pass of one batch.

run() is the thin loop around it that `manage.py relay_outbox` starts: reconnect with backoff,
sleep until NOTIFY or the poll interval, purge old rows now and then, keep the relay's instance
row beating (Heartbeat). No error ends the loop: after one, the relay starts its connections
afresh and tries again; the rows of a batch whose outcomes were not committed stay pending.
"""

import itertools
import json
import logging
import select
import socket
import time
import uuid
from collections.abc import Callable, Iterator
from concurrent import futures
from concurrent.futures import Future, ThreadPoolExecutor
from datetime import datetime, timedelta

import psycopg
from django.db import (
    DEFAULT_DB_ALIAS,
    DatabaseError,
    Error,
    InterfaceError,
    close_old_connections,
    connections,
    transaction,
)
from opentelemetry.trace import SpanKind

from bookworm_scheduler.kernel import backoff as backoffs
from bookworm_scheduler.kernel import tracing
from bookworm_scheduler.kernel.clock import default_clock
from bookworm_scheduler.kernel.db import DatabaseFault, describe_database_error, fault_event
from bookworm_scheduler.kernel.liveness import relay_liveness
from outbox import relay_metrics as metrics
from outbox import sql
from outbox.broker import Broker, BrokerUnavailable, Outcome, Outgoing, describe
from outbox.envelope import EnvelopeWriter, exchange_chain
from outbox.models import OutboxMessage, PublishedKey, RelayInstance
from outbox.publishing import NOTIFY_CHANNEL

logger = logging.getLogger(__name__)

PURGE_BATCH = 5000


class Slot:
    """One database connection that holds the claim of one batch: its rows stay locked until record().

    Either Django's connection of the alias, or (own) a connection of the slot's own, which the
    relay's recording thread may use too, never at the same time (Relay.close() closes it). On
    PostgreSQL claim() and record() are one round trip each (outbox.sql); elsewhere (SQLite: one
    relay, one slot) Django's transaction functions open and close the transaction and each row's
    outcome is a statement of its own.
    """

    def __init__(self, using: str, *, own: bool = False):
        self.using = using
        self._own = connections.create_connection(using) if own else None
        if self._own is not None:
            self._own.inc_thread_sharing()
        self.holding = False  # a claim's transaction is open

    @property
    def own(self) -> bool:
        return self._own is not None

    @property
    def connection(self):
        return self._own or connections[self.using]

    def claim(self, now, limit: int, after: int = 0) -> list[sql.Claimed]:
        """Lock up to limit rows ready at now with ids above after (outbox.sql.claim), in a transaction left open."""
        connection = self.connection
        statement, convert = sql.claim(self.using)
        postgresql = connection.vendor == "postgresql"
        if not postgresql:
            connection.set_autocommit(False)
        self.holding = True
        with connection.cursor() as cursor:
            cursor.execute(statement, [connection.ops.adapt_datetimefield_value(now), after, limit])
            if postgresql:
                cursor.nextset()  # past BEGIN and SET LOCAL to the rows
                cursor.nextset()
            return convert(cursor.fetchall())

    def record(self, now, delivered: list[int], others: list[tuple], returning: bool) -> list[datetime]:
        """Write the outcomes and commit; the created_at of the rows delivered, if returning.

        others: (id, status, last_error, attempts, available_at) for each row not delivered,
        attempts and available_at None where they stay as they are.
        """
        connection = self.connection
        if connection.vendor == "postgresql":
            columns = [list(column) for column in zip(*others, strict=True)] if others else [[]] * 5
            with connection.cursor() as cursor:
                ids = "{" + ",".join(map(str, delivered)) + "}"
                cursor.execute(sql.record_outcomes(self.using, returning), [now, ids, *columns])
                cursor.nextset()  # past SET LOCAL to the UPDATE
                created = [at for (at,) in cursor.fetchall() if at is not None] if returning else []
            self.holding = False
            return created
        adapt = connection.ops.adapt_datetimefield_value
        params = [(OutboxMessage.Status.DELIVERED, "", adapt(now), None, None, row_id) for row_id in delivered]
        params += [(status, error, None, attempts, adapt(at), row_id) for row_id, status, error, attempts, at in others]
        with connection.cursor() as cursor:
            cursor.executemany(sql.record_outcome(self.using), params)
        connection.commit()
        connection.set_autocommit(True)
        self.holding = False
        if not returning:
            return []
        rows = OutboxMessage.objects.using(self.using).filter(id__in=delivered)
        return list(rows.values_list("created_at", flat=True))

    def release(self) -> None:
        """Roll back the claim, if one is open: its rows stay pending and are free again."""
        if not self.holding:
            return
        self.holding = False
        connection = self.connection
        try:
            if connection.vendor == "postgresql":
                with connection.cursor() as cursor:
                    cursor.execute("ROLLBACK")
            else:
                connection.rollback()
                connection.set_autocommit(True)
        except Error:
            connection.close()  # the server ends the transaction with the session

    def close(self) -> None:
        self.holding = False
        if self._own is not None:
            self._own.close()


class _Batch:
    """One claimed batch: its slot, the outcomes known so far, how many messages still wait for one."""

    __slots__ = ("slot", "outcome", "waiting")

    def __init__(self, slot: Slot, size: int):
        self.slot = slot
        self.outcome = Outcome()
        self.waiting = size


class Relay:
    """Delivers outbox rows of one database through one Broker."""

    # Batches in one pass of deliver(): a pass ends with the window drained (a few milliseconds
    # at most), so it may be long; between passes run() beats, purges and sees stop requests.
    PASS_BATCHES = 20
    # Batches claimed at once on PostgreSQL, a connection each: one being recorded and the next
    # being claimed (by the recording thread), one whose last confirms arrive, one going out.
    # With batches of 500 the broker's window of 1,000 then stays full across batch boundaries.
    SLOTS = 4

    def __init__(
        self,
        broker: Broker,
        writer: EnvelopeWriter,
        *,
        batch_size: int,
        max_attempts: int,
        retry_max_seconds: int,
        using: str = DEFAULT_DB_ALIAS,
        clock: Callable[[], datetime] = default_clock,
    ):
        self.broker = broker
        self.writer = writer
        self.batch_size = batch_size
        self.max_attempts = max_attempts
        self.retry_max_seconds = retry_max_seconds
        self.using = using
        self.clock = clock  # the database's time: rows are stamped with it by whoever publishes
        self._slots = [Slot(using)]
        self._pipeline: list[Slot] = []
        self._recorder: ThreadPoolExecutor | None = None

    def deliver_batch(self, now) -> int:
        """Send one batch of rows ready at now; the number of rows handled (0: nothing to do)."""
        return self.deliver(now, batches=1)

    def deliver(self, now, batches: int | None = None, stopping: Callable[[], bool] = lambda: False) -> int:
        """Send batches of rows ready at now back to back; the number of rows handled (0: nothing to do).

        Claims the next batch while a full one is ready, up to batches (PASS_BATCHES) or until
        stopping(), then waits for the broker's answer to every message and records the rest.
        Raises BrokerUnavailable if the broker is not connected or the connection was lost
        mid-pass; what was confirmed by then is recorded, the rest stays pending untouched.
        """
        if not self.broker.is_open:
            raise BrokerUnavailable("not connected")
        delivery = _Pass(self, now, batches or self.PASS_BATCHES, stopping)
        try:
            outcome = self.broker.publish_batch(delivery.messages())
            delivery.finish(outcome)
        finally:
            delivery.release()  # after an error: the batches without a record roll back
            for span in delivery.spans.values():  # no outcome: the connection was lost, or an error
                _end_span(span, "lost", "no confirm: the batch did not finish")
        if outcome.lost:
            raise outcome.lost
        metrics.LAST_BATCH.set_to_current_time()
        return delivery.claimed

    def close(self) -> None:
        """Close the database connections of the relay's own (Django's are closed with the others)."""
        if self._recorder is not None:
            self._recorder.shutdown()
            self._recorder = None
        for slot in self._slots + self._pipeline:
            slot.close()

    def slots(self, batches: int) -> list[Slot]:
        """The slots a pass of batches uses: on PostgreSQL, SLOTS of their own for several batches;
        else Django's connection (one batch, or a database with one writer)."""
        if batches > 1 and connections[self.using].vendor == "postgresql":
            if not self._pipeline:
                self._pipeline = [Slot(self.using, own=True) for _ in range(self.SLOTS)]
            return self._pipeline
        return self._slots

    @property
    def recorder(self) -> ThreadPoolExecutor:
        """The thread that claims and records the batches of slots of their own, while this one publishes."""
        if self._recorder is None:
            self._recorder = ThreadPoolExecutor(max_workers=1, thread_name_prefix="outbox-record")
        return self._recorder

    def outgoing(self, row: sql.Claimed, sent_at: datetime, spans: dict) -> Outgoing:
        return Outgoing(
            key=row,
            exchanges=exchange_chain(row.exchange, row.types_json),
            body=self.writer.body(row, sent_at),
            properties=self.writer.properties(row, self._trace_headers(row, spans)),
        )

    def _trace_headers(self, row, spans: dict) -> dict | None:
        """The AMQP headers that carry the row's trace on to its consumers (MassTransit's and W3C's).

        With tracing on, a publish span, child of the context publish() stored in the row's
        headers, from now until its confirm is recorded. With tracing off, the stored context
        itself, so the consumer still joins the trace of the run that published the row. Rows
        without a context cost a substring test.
        """
        stored = json.loads(row.headers_json) if tracing.TRACEPARENT in row.headers_json else None
        if not tracing.active():
            return tracing.amqp_headers(carrier=stored) if stored else None
        message_id = str(row.message_id)
        span = tracing.start_span(
            f"publish {row.exchange}",
            kind=SpanKind.PRODUCER,
            parent=tracing.extract(stored) if stored else None,
            attributes={
                "messaging.system": "rabbitmq",
                "messaging.operation.type": "send",
                "messaging.operation.name": "publish",
                "messaging.destination.name": row.exchange,
                "messaging.message.id": message_id,
                "messaging.message.conversation_id": message_id,  # the envelope's conversationId
                "server.address": self.broker.parameters.host,
                "server.port": self.broker.parameters.port,
                "bookworm.outbox.id": row.id,
            },
        )
        spans[row.id] = span
        return tracing.amqp_headers(span)

    def record(self, batch: _Batch, now, spans: dict) -> None:
        """Write a batch's outcomes in one statement and commit: its rows are free again.

        Rows without an outcome (the connection was lost first) stay pending as they were.
        """
        outcome = batch.outcome
        unroutable = OutboxMessage.Status.UNROUTABLE
        others = [(row.id, unroutable, reason, None, None) for row, reason in outcome.unroutable.items()]
        failed = []
        for row, error in outcome.failed.items():
            # Rare: the rule of the retry is the model's (record_failure), fed the claimed attempts.
            message = OutboxMessage(
                id=row.id, message_id=row.message_id, exchange=row.exchange, attempts=row.attempts, available_at=None
            )
            message.record_failure(error, now, self.max_attempts, self.retry_max_seconds)
            others.append((row.id, message.status, message.last_error, message.attempts, message.available_at))
            failed.append((message, error))
        delivered = [row.id for row in outcome.delivered]
        created = batch.slot.record(now, delivered, others, metrics.measure_latency)
        for created_at in created:
            metrics.PUBLISH_LATENCY.observe(max((now - created_at).total_seconds(), 0.0))
        self._measure(outcome, failed, spans)
        self._log(outcome, failed)

    @staticmethod
    def _measure(outcome, failed: list, spans: dict) -> None:
        """Count the outcomes (outbox.relay_metrics) and end the publish spans that have one."""
        metrics.CONFIRMED.inc(len(outcome.delivered))
        metrics.RETURNED.inc(len(outcome.unroutable))
        metrics.FAILED.inc(len(failed))
        metrics.DEAD.inc(sum(1 for message, _ in failed if message.status == OutboxMessage.Status.DEAD))
        if not spans:
            return
        for row in outcome.delivered:
            _end_span(spans.pop(row.id, None), "delivered")
        for row, reason in outcome.unroutable.items():
            _end_span(spans.pop(row.id, None), "unroutable", reason)
        for message, error in failed:
            outcome_name = "dead" if message.status == OutboxMessage.Status.DEAD else "failed"
            _end_span(spans.pop(message.id, None), outcome_name, error)

    @staticmethod
    def _log(outcome, failed: list) -> None:
        if outcome.delivered:
            logger.debug(
                "delivered %d messages",
                len(outcome.delivered),
                extra={"action": "outbox_delivered", "count": len(outcome.delivered)},
            )
        for row, reason in outcome.unroutable.items():
            logger.warning(
                "message %s to %s is unroutable: %s",
                row.message_id,
                row.exchange,
                reason,
                extra={
                    "action": "outbox_unroutable",
                    "message_id": str(row.message_id),
                    "exchange": row.exchange,
                    "status": OutboxMessage.Status.UNROUTABLE,
                    "error": reason,
                },
            )
        for message, error in failed:
            action = "outbox_dead" if message.status == OutboxMessage.Status.DEAD else "outbox_retry"
            logger.warning(
                "message %s to %s failed (attempt %d): %s",
                message.message_id,
                message.exchange,
                message.attempts,
                error,
                extra={
                    "action": action,
                    "message_id": str(message.message_id),
                    "exchange": message.exchange,
                    "attempt": message.attempts,
                    "status": message.status,
                    "error": error,
                },
            )

    def purge(self, now, retention: timedelta, duplicate_window: timedelta) -> int:
        """Delete delivered rows older than retention and expired idempotency keys.

        One bounded batch of outbox rows per call; the count deleted, so callers repeat while
        it is PURGE_BATCH.
        """
        with transaction.atomic(using=self.using):
            deleted = OutboxMessage.objects.using(self.using).delete_delivered_before(now - retention, PURGE_BATCH)
            keys = PublishedKey.purge(now - duplicate_window, self.using)
        if deleted or keys:
            logger.info(
                "purged %d delivered messages and %d idempotency keys",
                deleted,
                keys,
                extra={"action": "outbox_purged", "count": deleted, "keys": keys},
            )
        return deleted


class _Pass:
    """The batches of one Relay.deliver(): claimed as the broker takes their messages, recorded once answered.

    messages() is the generator Broker.publish_batch reads. On slots of their own (PostgreSQL,
    several batches) the relay's recording thread claims the next batch while this one goes
    out, and records each batch once the broker has answered for all its messages, so the
    publishing thread does not wait on the database; the thread takes its work in order, so a
    slot's next claim follows its record. A slot is taken for the next claim once its batch is
    answered; only when every slot holds an unanswered batch does the publishing thread wait,
    for the oldest one's answers, while the broker's window (Broker.window) holds the batches
    after it. Elsewhere (one batch, or SQLite) claims and records are made in turn, in place.
    """

    def __init__(self, relay: Relay, now, batches: int, stopping: Callable[[], bool]):
        self.relay = relay
        self.now = now
        self.batches = batches
        self.stopping = stopping
        self.claimed = 0
        self.spans: dict = {}  # row id -> its publish span, while tracing is on
        self._slots: list[Slot] = []
        self._open: dict[Slot, _Batch] = {}  # the batches without a record, oldest first
        self._tasks: list[Future] = []  # claims and records handed to the recording thread
        self._waiting: dict[int, _Batch] = {}  # row id -> its batch, until the row has an outcome
        self._claimed: set[int] = set()  # every row id claimed in this pass
        self._seen = [0, 0, 0]  # how many of the outcome's delivered, unroutable, failed are sorted

    def messages(self) -> Iterator[Outgoing]:
        relay, size = self.relay, self.relay.batch_size
        sent_at = relay.clock()
        slots = self._slots = relay.slots(self.batches)
        ahead = slots[0].own
        slot = self._free_slot()
        rows = slot.claim(self.now, size)
        for number in range(1, self.batches + 1):
            self._hold(slot, rows)
            more = len(rows) == size and number < self.batches and not self.stopping()
            if more and ahead:
                slot = self._free_slot()
                upcoming = self._submit(slot.claim, self.now, size, rows[-1].id)
            for row in rows:
                yield relay.outgoing(row, sent_at, self.spans)
            if not more:
                return
            if ahead:
                rows = upcoming.result()
            else:
                after = rows[-1].id
                slot = self._free_slot()
                rows = slot.claim(self.now, size, after)

    def finish(self, outcome: Outcome) -> None:
        """Record every batch still open, with what outcome holds for it (all of it, unless lost)."""
        self._sort(outcome)
        for slot, batch in list(self._open.items()):
            del self._open[slot]
            if batch.outcome.delivered or batch.outcome.unroutable or batch.outcome.failed:
                self._record(slot, batch)
            else:
                slot.release()
        tasks, self._tasks = self._tasks, []
        for task in tasks:
            task.result()

    def release(self) -> None:
        """After an error: let the recording thread's work end, roll back the claims left open."""
        futures.wait(self._tasks)
        self._tasks = []
        for slot in self._slots:
            slot.release()
        self._open.clear()

    def _hold(self, slot: Slot, rows: list) -> None:
        """Take rows as the batch open in slot."""
        batch = self._open[slot] = _Batch(slot, len(rows))
        self.claimed += len(rows)
        for row in rows:
            if row.id in self._claimed:
                # The session of an earlier claim ended (a restart, a timeout, an operator): its
                # rows were free to claim again. What it held goes out again in the next pass.
                # Caused by a lost connection, as the driver says it, so that it is handled as one
                # (bookworm_scheduler.kernel.db.database_fault).
                raise DatabaseError("a claim's session ended before its outcomes were recorded") from (
                    psycopg.OperationalError("the session holding the claim ended")
                )
            self._claimed.add(row.id)
            self._waiting[row.id] = batch

    def _free_slot(self) -> Slot:
        """A slot without an open batch: record the batches answered, wait for the oldest if need be."""
        broker = self.relay.broker
        while True:
            for task in [task for task in self._tasks if task.done()]:
                self._tasks.remove(task)
                task.result()  # a record's error ends the pass
            if self._open and broker.outcome is not None:
                self._record_answered(broker.outcome)
            for slot in self._slots:
                if slot not in self._open:
                    return slot
            oldest = next(iter(self._open.values()))
            broker.await_outcomes(lambda b=oldest: self._sort(broker.outcome) or not b.waiting)

    def _record_answered(self, outcome: Outcome) -> None:
        """Record the open batches whose every message has an outcome."""
        self._sort(outcome)
        for slot, batch in list(self._open.items()):
            if not batch.waiting:
                del self._open[slot]
                self._record(slot, batch)

    def _record(self, slot: Slot, batch: _Batch) -> None:
        now = self.relay.clock()
        if slot.own:
            self._submit(self.relay.record, batch, now, self.spans)
        else:
            self.relay.record(batch, now, self.spans)

    def _submit(self, work: Callable, *args) -> Future:
        task = self.relay.recorder.submit(work, *args)
        self._tasks.append(task)
        return task

    def _sort(self, outcome: Outcome) -> None:
        """Hand the outcomes the broker added since the last call to the batches of their rows."""
        seen = self._seen
        if len(outcome.delivered) > seen[0]:
            for row in outcome.delivered[seen[0] :]:
                batch = self._waiting.pop(row.id)
                batch.outcome.delivered.append(row)
                batch.waiting -= 1
            seen[0] = len(outcome.delivered)
        for index, found, name in ((1, outcome.unroutable, "unroutable"), (2, outcome.failed, "failed")):
            if len(found) > seen[index]:
                for row, detail in itertools.islice(found.items(), seen[index], None):
                    batch = self._waiting.pop(row.id)
                    getattr(batch.outcome, name)[row] = detail
                    batch.waiting -= 1
                seen[index] = len(found)


class Waker:
    """Sleeps until an outbox row commits (LISTEN on PostgreSQL) or the timeout passes.

    A dedicated autocommit connection listens: Django's own connection runs transactions and
    is closed between passes. On SQLite there is nothing to listen to and this just sleeps.
    """

    SLICE = 1.0  # longest uninterrupted wait: how soon a stop request or a heartbeat is seen

    def __init__(self, using: str = DEFAULT_DB_ALIAS):
        self.using = using
        self._listener: psycopg.Connection | None = None

    @property
    def can_listen(self) -> bool:
        return connections[self.using].vendor == "postgresql"

    def wait(self, seconds: float, tick: Callable[[], None], stopping: Callable[[], bool]) -> bool:
        """Wait for a notification (True), for seconds or until stopping(); tick() between slices."""
        deadline = time.monotonic() + seconds
        while not stopping():
            remaining = deadline - time.monotonic()
            if remaining <= 0:
                return False
            if self._notified(min(remaining, self.SLICE)):
                return True
            tick()
        return False

    def close(self) -> None:
        if self._listener is not None:
            self._listener.close()
            self._listener = None

    def _notified(self, seconds: float) -> bool:
        if not self.can_listen:
            time.sleep(seconds)
            return False
        try:
            listener = self._listen()
            # select() sleeps until the socket has data; psycopg's notifies(timeout=...) would wake
            # every 0.1 s to check for interrupts, CPU that an idle relay need not spend.
            readable, _, _ = select.select([listener.fileno()], [], [], seconds)
            # All that the socket holds (timeout 0: no waiting): notifications that arrived
            # together fold into this one wake-up.
            return bool(readable) and bool(list(listener.notifies(timeout=0)))
        except psycopg.Error as error:
            logger.warning(
                "cannot listen for outbox notifications, polling: %s",
                error,
                extra={"action": "outbox_listen_failed", "error": str(error)},
            )
            self.close()
            time.sleep(seconds)
            return False

    def _listen(self) -> psycopg.Connection:
        if self._listener is None:
            params = connections[self.using].get_connection_params()
            listener = psycopg.connect(**params, autocommit=True)
            listener.execute(f"LISTEN {NOTIFY_CHANNEL}")
            self._listener = listener
        return self._listener


class Heartbeat:
    """This relay's instance row (outbox.RelayInstance), as jobs.engine.leases.Leases keeps a scheduler's.

    beat() registers the row the first time, then renews it once the relay's renewal period
    (bookworm_scheduler.kernel.liveness.relay_liveness) has passed by the database's clock; run()
    calls it at every turn of its loop and between the slices of its waits, so a live relay
    beats at least that often, plus Waker.SLICE, outside a batch. Each renewal also marks the
    relays silent for longer than the liveness allows lost and deletes the rows of relays
    stopped or lost more than KEEP ago. retire() says goodbye at exit.
    """

    KEEP = timedelta(days=1)

    def __init__(self, clock: Callable[[], datetime], *, instance_id: str = "", using: str = DEFAULT_DB_ALIAS):
        self.session = uuid.uuid4()
        self.instance_id = instance_id or socket.gethostname()
        self.clock = clock
        self.using = using
        self.liveness = relay_liveness()
        self._beaten_at: datetime | None = None

    def beat(self) -> None:
        now = self.clock()
        if self._beaten_at is not None and now - self._beaten_at < self.liveness.renew_every:
            return
        rows = RelayInstance.objects.using(self.using)
        if not rows.beat(self.session, now):
            rows.register(self.session, self.instance_id, now)
        rows.mark_lost(now, self.liveness.lost_after)
        rows.prune(now - self.KEEP)
        self._beaten_at = now

    def retire(self) -> None:
        try:
            RelayInstance.objects.using(self.using).retire(self.session, self.clock())
        except DatabaseError:
            pass  # the row then simply stops beating, and is marked lost


def _no_heartbeat() -> None:
    pass


def run(
    relay: Relay,
    waker: Waker,
    *,
    poll_seconds: float,
    purge_every: float,
    retention: timedelta,
    duplicate_window: timedelta,
    stopping: Callable[[], bool],
    once: bool = False,
    heartbeat: Callable[[], None] = _no_heartbeat,
) -> None:
    """Deliver until stopping() (or, once, until nothing is pending); the batches in flight finish.

    With once, an unreachable broker raises BrokerUnavailable instead of being retried. Every
    other error, the waits between batches included, is logged and retried after a delay.
    heartbeat (Heartbeat.beat) is called at every turn and between the slices of every wait.
    When it returns, the relay's own database connections are closed (Relay.close).
    """
    broker_backoff, failure_backoff, conflicts = backoffs.after_outage(), backoffs.after_outage(), backoffs.conflict()
    next_purge = time.monotonic()

    def tick() -> None:
        relay.broker.service(0)
        heartbeat()

    while not stopping():
        try:
            heartbeat()
            if not relay.broker.is_open:
                relay.broker.connect()
                logger.info(
                    "connected to the broker at %s",
                    relay.broker.endpoint,
                    extra={"action": "outbox_broker_connected"},
                )
            broker_backoff.reset()
            handled = relay.deliver(relay.clock(), stopping=stopping)
            if time.monotonic() >= next_purge:
                while relay.purge(relay.clock(), retention, duplicate_window) == PURGE_BATCH and not stopping():
                    pass
                next_purge = time.monotonic() + purge_every
            if handled == 0:
                if once:
                    break
                close_old_connections()
                waker.wait(poll_seconds, tick=tick, stopping=stopping)
            failure_backoff.reset()
            conflicts.reset()
        except BrokerUnavailable as error:
            if once:
                raise
            delay = broker_backoff.next()
            logger.error(
                "broker unavailable, retrying in %.1fs: %s",
                delay,
                error,
                extra={"action": "outbox_broker_unavailable", "error": str(error), "retry_in": delay},
            )
            _sleep(delay, stopping)
        except (DatabaseError, InterfaceError) as error:
            # A conflict (a deadlock, a serialization failure) is tried again soon, not backed off
            # from as an outage; either way the pass starts afresh, since its batch rolled back.
            fault, action, level, words = fault_event(error, DATABASE_FAULT_ACTIONS)
            delay = (conflicts if fault is DatabaseFault.CONFLICT else failure_backoff).next()
            described = describe_database_error(error)
            logger.log(
                level,
                "%s, retrying in %.2fs: %s",
                words,
                delay,
                described,
                extra={"action": action, "error": described, "retry_in": delay},
            )
            _start_afresh(relay, waker)
            _sleep(delay, stopping)
        except Exception as error:
            # A bug, or a broker or library error that nothing above expects: the traceback
            # is logged for a person to read, and the relay carries on as after a database error.
            delay = failure_backoff.next()
            logger.error(
                "relay error, retrying in %.1fs: %s",
                delay,
                describe(error),
                exc_info=True,
                extra={"action": "outbox_relay_error", "error": describe(error), "retry_in": delay},
            )
            _start_afresh(relay, waker)
            _sleep(delay, stopping)
    relay.close()  # its own connections; the caller closes the broker, the waker and Django's
    logger.info("relay stopped", extra={"action": "outbox_relay_stopped"})


# The relay's log actions for each kind of database fault.
DATABASE_FAULT_ACTIONS = {
    DatabaseFault.UNAVAILABLE: "outbox_database_unavailable",
    DatabaseFault.CONFLICT: "outbox_database_conflict",
    DatabaseFault.ERROR: "outbox_database_error",
}


def _end_span(span, outcome: str, error: str = "") -> None:
    """End a publish span with how its message fared: delivered, unroutable, failed, dead or lost."""
    if span is None:
        return
    span.set_attribute("bookworm.outbox.outcome", outcome)
    if outcome != "delivered":
        tracing.fail(span, error or outcome)
    span.end()


def _start_afresh(relay: Relay, waker: Waker) -> None:
    """Drop every connection after a failed pass; the next pass opens new ones."""
    connections[relay.using].close()
    relay.close()
    waker.close()
    # The batch's transaction is gone: start the broker side afresh too, rather than
    # match confirms of a half-published batch against the next one.
    relay.broker.close()


def _sleep(seconds: float, stopping: Callable[[], bool]) -> None:
    deadline = time.monotonic() + seconds
    while not stopping() and (remaining := deadline - time.monotonic()) > 0:
        time.sleep(min(remaining, 0.2))
