"""The worker pool: a standard thread pool with slots for ordinary and for LongRunning jobs."""

import threading
from collections.abc import Callable
from concurrent.futures import FIRST_COMPLETED, Future, ThreadPoolExecutor, wait

from django.db import connection

from jobs.engine import scheduler_metrics as metrics
from jobs.models import Occurrence


class Slot:
    """What one busy slot holds: the occurrence whose claim is committed and whose lease must be renewed.

    None while it holds none, or only occurrences locked by its open transaction (a group):
    those need no lease, and renewing them would wait for the group's commit.
    """

    def __init__(self, occurrence_id: int | None = None):
        self.occurrence_id = occurrence_id


class WorkerPool:
    """Runs claimed occurrences in threads: `concurrency` at once, plus `long_running` LongRunning ones.

    The scheduler asks free() how many to claim, so a claim never waits for a slot. An
    ordinary claim may come with a drain (submit_drain) that, once it ran the claim, goes on
    with what else is ready, a group at a time. on_done is called from the worker thread after
    each run or drain (the scheduler claims more then).
    """

    def __init__(self, concurrency: int, long_running: int, on_done: Callable[[], None] = lambda: None):
        self._workers = concurrency + long_running
        self._executor = ThreadPoolExecutor(max_workers=self._workers, thread_name_prefix="job")
        self._limit = {False: concurrency, True: long_running}
        self._busy = {False: 0, True: 0}
        self._running: dict[Future, Slot] = {}
        self._lock = threading.Lock()
        self._on_done = on_done
        for long_running, slots in self._limit.items():
            metrics.POOL_SLOTS.labels(metrics.pool_kind(long_running)).set(slots)

    @property
    def capacity(self) -> int:
        """The threads: ordinary and LongRunning slots."""
        return self._workers

    def stop_cancelled(self, now) -> None:
        """Nothing: a job here checks its cancel (JobContext.cancelled), or is stopped at its return (Runner)."""

    def free(self, long_running: bool) -> int:
        with self._lock:
            return self._limit[long_running] - self._busy[long_running]

    @property
    def idle(self) -> bool:
        with self._lock:
            return not self._running

    def running_ids(self) -> list[int]:
        with self._lock:
            slots = list(self._running.values())
        return [slot.occurrence_id for slot in slots if slot.occurrence_id is not None]

    def submit(self, occurrence: Occurrence, run: Callable[[Occurrence], None], *, long_running: bool) -> None:
        self._start(lambda slot: run(occurrence), Slot(occurrence.id), long_running)

    def submit_all(self, occurrences: list[Occurrence], run: Callable[[Occurrence], None], *, long_running: bool):
        for occurrence in occurrences:
            self.submit(occurrence, run, long_running=long_running)

    def submit_drain(self, occurrence: Occurrence, drain: Callable[[Occurrence, Slot], None]) -> None:
        """Give an ordinary slot to drain(occurrence, slot): it runs its claim, then what else is ready."""
        self._start(lambda slot: drain(occurrence, slot), Slot(occurrence.id), False)

    def _start(self, work: Callable[[Slot], None], slot: Slot, long_running: bool) -> None:
        with self._lock:
            self._busy[long_running] += 1
            metrics.POOL_BUSY.labels(metrics.pool_kind(long_running)).inc()
            future = self._executor.submit(self._run, work, slot)
            self._running[future] = slot
        future.add_done_callback(lambda done: self._finished(done, long_running))

    def wait(self, timeout: float) -> bool:
        """Wait up to timeout for a run to finish; True if none is running any more."""
        with self._lock:
            futures = list(self._running)
        if futures:
            wait(futures, timeout=timeout, return_when=FIRST_COMPLETED)
        return self.idle

    def shutdown(self) -> None:
        """No more runs. When idle, each thread closes its database connection and ends."""
        idle = self.idle
        if idle:
            # One task per thread: the barrier holds each until all have taken one.
            barrier = threading.Barrier(self._workers)
            for _ in range(self._workers):
                self._executor.submit(self._close_connection, barrier)
        self._executor.shutdown(wait=idle, cancel_futures=not idle)

    @staticmethod
    def _close_connection(barrier: threading.Barrier) -> None:
        connection.close()
        barrier.wait(timeout=5)

    @staticmethod
    def _run(work: Callable[[Slot], None], slot: Slot) -> None:
        connection.close_if_unusable_or_obsolete()
        work(slot)

    def _finished(self, future: Future, long_running: bool) -> None:
        with self._lock:
            self._busy[long_running] -= 1
            metrics.POOL_BUSY.labels(metrics.pool_kind(long_running)).dec()
            self._running.pop(future, None)
        self._on_done()
