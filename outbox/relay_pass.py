"""One pass of the relay (Relay.deliver): batches claimed as the broker takes their messages, recorded once answered.

Pass is the pipeline between the database and the broker: it hands the broker the messages of
batch after batch (messages(), the generator Broker.publish_batch reads), sorts the broker's
answers to the batches of their rows, and has each batch recorded (Relay.record) once every
message of it has an answer. The batches' connections are outbox.slots'.
"""

import itertools
from collections.abc import Callable, Iterator
from concurrent import futures
from concurrent.futures import Future
from typing import TYPE_CHECKING

import psycopg
from django.db import DatabaseError

from outbox.broker import Outcome, Outgoing
from outbox.slots import Batch, Slot

if TYPE_CHECKING:
    from outbox.relay import Relay


class Pass:
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

    def __init__(self, relay: "Relay", now, batches: int, stopping: Callable[[], bool]):
        self.relay = relay
        self.now = now
        self.batches = batches
        self.stopping = stopping
        self.claimed = 0
        self.spans: dict = {}  # row id -> its publish span, while tracing is on
        self._slots: list[Slot] = []
        self._open: dict[Slot, Batch] = {}  # the batches without a record, oldest first
        self._tasks: list[Future] = []  # claims and records handed to the recording thread
        self._waiting: dict[int, Batch] = {}  # row id -> its batch, until the row has an outcome
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
        batch = self._open[slot] = Batch(slot, len(rows))
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

    def _record(self, slot: Slot, batch: Batch) -> None:
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
