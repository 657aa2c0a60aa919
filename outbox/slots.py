"""A relay's hold on a batch of outbox rows: claimed, then its outcomes recorded, or released, on one connection.

A Slot is one database connection that claims a batch (its rows stay locked), records the
batch's outcomes and commits, or rolls the claim back. A Batch is a claimed batch on its way
through the broker: its slot, the outcomes known so far, how many messages still wait for one.
The relay's passes (outbox.relay_pass) use several slots at once on PostgreSQL.
"""

from datetime import datetime

from django.db import Error, connections

from bookworm_scheduler.kernel import transactions
from bookworm_scheduler.kernel.dialect import postgresql
from outbox import sql
from outbox.broker import Outcome
from outbox.models import OutboxMessage


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
        self.postgresql = postgresql(using)
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
        if not self.postgresql:
            connection.set_autocommit(False)
        self.holding = True
        with connection.cursor() as cursor:
            cursor.execute(statement, [connection.ops.adapt_datetimefield_value(now), after, limit])
            if self.postgresql:
                cursor.nextset()  # past BEGIN and SET LOCAL to the rows
                cursor.nextset()
            return convert(cursor.fetchall())

    def record(self, now, delivered: list[int], others: list[tuple], returning: bool) -> list[datetime]:
        """Write the outcomes and commit; the created_at of the rows delivered, if returning.

        others: (id, status, last_error, attempts, available_at) for each row not delivered,
        attempts and available_at None where they stay as they are.
        """
        connection = self.connection
        if self.postgresql:
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
            if self.postgresql:
                with connection.cursor() as cursor:
                    transactions.rollback(cursor)
            else:
                connection.rollback()
                connection.set_autocommit(True)
        except Error:
            connection.close()  # the server ends the transaction with the session

    def close(self) -> None:
        self.holding = False
        if self._own is not None:
            self._own.close()


class Batch:
    """One claimed batch: its slot, the outcomes known so far, how many messages still wait for one."""

    __slots__ = ("slot", "outcome", "waiting")

    def __init__(self, slot: Slot, size: int):
        self.slot = slot
        self.outcome = Outcome()
        self.waiting = size
