"""The relay: committed outbox rows to RabbitMQ, marked delivered once the broker confirmed them.

Relay.deliver(now) is one pass (outbox.relay_pass): batches of ready rows claimed (FOR UPDATE
SKIP LOCKED) and published back to back through one window of confirms. Each batch is claimed
in a transaction of its own, on a database connection of its own (a Slot, outbox.slots: four on
PostgreSQL), and that transaction records the batch's outcomes and commits once the broker has
answered for every message of it. Claims and records run in a recording thread while the
publishing thread sends: the next batch is claimed and on its way while the last confirms of
this one arrive, and the broker is not left idle at a batch boundary. A row stays locked from
its claim to the commit of its outcome, so several relays share the work without sending a row
twice, and a relay that dies releases its rows at once. deliver_batch(now) is a pass of one batch.

run() is the thin loop around it that `manage.py relay_outbox` starts: reconnect with backoff,
sleep until NOTIFY or the poll interval (outbox.waker.Waker), purge old rows now and then, keep
the relay's instance row beating (outbox.heartbeat.Heartbeat). No error ends the loop: after
one, the relay starts its connections afresh and tries again; the rows of a batch whose
outcomes were not committed stay pending.
"""

import json
import logging
import time
from collections.abc import Callable
from concurrent.futures import ThreadPoolExecutor
from datetime import datetime, timedelta

from django.db import (
    DEFAULT_DB_ALIAS,
    DatabaseError,
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
from bookworm_scheduler.kernel.dialect import postgresql
from outbox import relay_metrics as metrics
from outbox import sql
from outbox.broker import Broker, BrokerUnavailable, Outgoing, describe
from outbox.envelope import EnvelopeWriter, exchange_chain
from outbox.models import OutboxMessage, PublishedKey
from outbox.relay_pass import Pass
from outbox.slots import Batch, Slot
from outbox.waker import Waker

logger = logging.getLogger(__name__)

PURGE_BATCH = 5000


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
        delivery = Pass(self, now, batches or self.PASS_BATCHES, stopping)
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
        if batches > 1 and postgresql(self.using):
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

    def record(self, batch: Batch, now, spans: dict) -> None:
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
