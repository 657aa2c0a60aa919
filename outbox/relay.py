"""The relay: committed outbox rows to RabbitMQ, marked delivered once the broker confirmed them.

Relay.deliver_batch(now) is one pass: claim a batch of ready rows (FOR UPDATE SKIP LOCKED),
publish it with a window of confirms, record the outcomes and commit, all in one transaction,
so that several relays share the work without sending a row twice. run() is the thin loop
around it that `manage.py relay_outbox` starts: reconnect with backoff, sleep until NOTIFY or
the poll interval, purge old rows now and then. No error ends the loop: after one, the relay
starts its connections afresh and tries again; the rows of a failed batch stay pending.
"""

import logging
import time
from collections.abc import Callable, Iterator
from datetime import datetime, timedelta

import psycopg
from django.db import (
    DEFAULT_DB_ALIAS,
    DatabaseError,
    InterfaceError,
    close_old_connections,
    connections,
    transaction,
)

from bookworm_scheduler.backoff import Backoff
from bookworm_scheduler.clock import default_clock

from .broker import Broker, BrokerUnavailable, Outgoing, describe
from .envelope import EnvelopeWriter, exchange_chain
from .models import OutboxMessage, PublishedKey
from .publishing import NOTIFY_CHANNEL

logger = logging.getLogger(__name__)

PURGE_BATCH = 5000


def reconnect_backoff() -> Backoff:
    """Delays after a failed attempt: from about 0.5 s up to 5 s, so the relay is back at work
    within about 5 s of the broker or the database coming back."""
    return Backoff(first=0.5, ceiling=5.0)


class Relay:
    """Delivers outbox rows of one database through one Broker."""

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

    def deliver_batch(self, now) -> int:
        """Send one batch of rows ready at now; the number of rows handled (0: nothing to do).

        Raises BrokerUnavailable if the broker is not connected or the connection was lost
        mid-batch; what was confirmed by then is recorded, the rest stays pending untouched.
        """
        if not self.broker.is_open:
            raise BrokerUnavailable("not connected")
        with transaction.atomic(using=self.using):
            claimed: list = []
            outcome = self.broker.publish_batch(self._outgoing(now, claimed))
            if not claimed:
                return 0
            self._record(outcome, self.clock())
        if outcome.lost:
            raise outcome.lost
        return len(claimed)

    def _outgoing(self, now, claimed: list) -> Iterator[Outgoing]:
        """Claim rows and turn them into messages as the broker takes them; claimed collects the rows."""
        sent_at = self.clock()
        for row in OutboxMessage.objects.using(self.using).claim_batch(now, self.batch_size):
            claimed.append(row)
            yield Outgoing(
                key=row,
                exchanges=exchange_chain(row.exchange, row.types_json),
                body=self.writer.body(row, sent_at),
                properties=self.writer.properties(row),
            )

    def _record(self, outcome, now) -> None:
        rows = OutboxMessage.objects.using(self.using)
        if outcome.delivered:
            rows.mark_delivered([row.id for row in outcome.delivered], now)
        by_reason: dict[str, list[int]] = {}
        for row, reason in outcome.unroutable.items():
            by_reason.setdefault(reason, []).append(row.id)
        for reason, ids in by_reason.items():
            rows.mark_unroutable(ids, reason)
        failed = []
        if outcome.failed:
            # Rare: load the failed rows (locked by this transaction) to count their attempts.
            messages = rows.in_bulk([row.id for row in outcome.failed])
            for row, error in outcome.failed.items():
                message = messages[row.id]
                message.record_failure(error, now, self.max_attempts, self.retry_max_seconds)
                failed.append((message, error))
            OutboxMessage.save_failures([message for message, _ in failed], self.using)
        self._log(outcome, failed)

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
                extra={"action": "outbox_unroutable", "message_id": str(row.message_id), "error": reason},
            )
        for message, error in failed:
            action = "outbox_dead" if message.status == OutboxMessage.Status.DEAD else "outbox_retry"
            logger.warning(
                "message %s to %s failed (attempt %d): %s",
                message.message_id,
                message.exchange,
                message.attempts,
                error,
                extra={"action": action, "message_id": str(message.message_id), "error": error},
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
            received = any(True for _ in listener.notifies(timeout=seconds, stop_after=1))
            if received:
                # Notifications that arrived together fold into this one wake-up.
                for _ in listener.notifies(timeout=0):
                    pass
            return received
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
) -> None:
    """Deliver until stopping() (or, once, until nothing is pending); the batch in flight finishes.

    With once, an unreachable broker raises BrokerUnavailable instead of being retried. Every
    other error, the waits between batches included, is logged and retried after a delay.
    """
    broker_backoff, failure_backoff = reconnect_backoff(), reconnect_backoff()
    next_purge = time.monotonic()
    while not stopping():
        try:
            if not relay.broker.is_open:
                relay.broker.connect()
                logger.info(
                    "connected to the broker at %s",
                    relay.broker.endpoint,
                    extra={"action": "outbox_broker_connected"},
                )
            broker_backoff.reset()
            handled = relay.deliver_batch(relay.clock())
            if time.monotonic() >= next_purge:
                while relay.purge(relay.clock(), retention, duplicate_window) == PURGE_BATCH and not stopping():
                    pass
                next_purge = time.monotonic() + purge_every
            if handled == 0:
                if once:
                    break
                close_old_connections()
                waker.wait(poll_seconds, tick=lambda: relay.broker.service(0), stopping=stopping)
            failure_backoff.reset()
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
            delay = failure_backoff.next()
            logger.error(
                "database unavailable, retrying in %.1fs: %s",
                delay,
                error,
                extra={"action": "outbox_database_unavailable", "error": str(error), "retry_in": delay},
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
    logger.info("relay stopped", extra={"action": "outbox_relay_stopped"})


def _start_afresh(relay: Relay, waker: Waker) -> None:
    """Drop every connection after a failed pass; the next pass opens new ones."""
    connections[relay.using].close()
    waker.close()
    # The batch's transaction is gone: start the broker side afresh too, rather than
    # match confirms of a half-published batch against the next one.
    relay.broker.close()


def _sleep(seconds: float, stopping: Callable[[], bool]) -> None:
    deadline = time.monotonic() + seconds
    while not stopping() and (remaining := deadline - time.monotonic()) > 0:
        time.sleep(min(remaining, 0.2))
