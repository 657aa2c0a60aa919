"""The worker pool (jobs.engine.pool.WorkerPool): slots per kind, what its slots hold, waiting and shutting down.

The jobs are the test's: each runs until the test releases it (threading.Event), so what the pool
says while they run is known. The pool's threads touch the database only to close their own
connections, which a thread that never opened one does not have: all but the last test need no
database (marked unit). The last one opens a connection in each thread and sees shutdown close it.
"""

import contextlib
import queue
import threading
import time

import pytest
from django.db import connection, connections

from jobs.engine import scheduler_metrics as metrics
from jobs.engine.pool import WorkerPool
from jobs.models import Occurrence


def occurrence(id) -> Occurrence:
    return Occurrence(id=id)


class Calls:
    """Calls counted: wait(n) until n more came (False after 10 s without them)."""

    def __init__(self):
        self._calls = threading.Semaphore(0)

    def __call__(self):
        self._calls.release()

    def wait(self, n=1):
        return all(self._calls.acquire(timeout=10) for _ in range(n))


class Job:
    """Runs the test holds: each counts as started (started.wait(n)), and ends when the test releases them."""

    def __init__(self, fail=False):
        self.started, self.release, self.fail = Calls(), threading.Event(), fail
        self.ran, self.threads = [], []

    def __call__(self, occurrence):
        self.ran.append(occurrence.id)
        self.threads.append(threading.current_thread())
        self.started()
        assert self.release.wait(10), "the test never released the job"
        if self.fail:
            raise RuntimeError("the job failed on purpose")


@pytest.fixture
def done():
    """The pool's on_done: called after each run, once its slot is free."""
    return Calls()


@pytest.fixture
def pools():
    """make(concurrency, long_running) -> a pool; at the end every job is released and every pool shut down."""
    made, jobs = [], []

    def make(concurrency=2, long_running=1, on_done=lambda: None):
        pool = WorkerPool(concurrency, long_running, on_done)
        made.append(pool)
        return pool

    make.jobs = jobs
    yield make
    for job in jobs:
        job.release.set()
    for pool in made:
        pool.wait(10)
        with contextlib.suppress(RuntimeError):  # a pool the test shut down refuses the threads' close tasks
            pool.shutdown()


@pytest.fixture
def job(pools):
    def new(fail=False):
        job = Job(fail)
        pools.jobs.append(job)
        return job

    return new


def busy(kind):
    return metrics.REGISTRY.get_sample_value("bookworm_scheduler_pool_busy", {"kind": kind})


@pytest.mark.unit
def test_a_new_pool_is_idle_with_every_slot_free(pools):
    pool = pools(concurrency=3, long_running=2)
    assert (pool.free(False), pool.free(True), pool.idle, pool.running_ids()) == (3, 2, True, [])
    slots = {
        kind: metrics.REGISTRY.get_sample_value("bookworm_scheduler_pool_slots", {"kind": kind})
        for kind in ("normal", "long_running")
    }
    assert slots == {"normal": 3.0, "long_running": 2.0}


@pytest.mark.unit
def test_a_run_takes_a_slot_of_its_kind_until_it_ends(pools, job, done):
    pool = pools(concurrency=2, long_running=1, on_done=done)
    ordinary, long = job(), job()
    pool.submit(occurrence(7), ordinary, long_running=False)
    assert ordinary.started.wait()
    assert (pool.free(False), pool.free(True), pool.idle, pool.running_ids()) == (1, 1, False, [7])
    pool.submit(occurrence(8), long, long_running=True)
    assert long.started.wait()
    assert (pool.free(False), pool.free(True), sorted(pool.running_ids())) == (1, 0, [7, 8])

    ordinary.release.set()
    assert done.wait()
    assert (pool.free(False), pool.free(True), pool.running_ids()) == (2, 0, [8])
    long.release.set()
    assert done.wait()
    assert (pool.free(False), pool.free(True), pool.idle, pool.running_ids()) == (2, 1, True, [])


@pytest.mark.unit
def test_the_busy_gauge_counts_the_running_runs_of_each_kind(pools, job, done):
    pool = pools(concurrency=2, long_running=1, on_done=done)
    before = busy("normal"), busy("long_running")
    first = job()
    pool.submit(occurrence(1), first, long_running=False)
    assert first.started.wait()
    assert (busy("normal"), busy("long_running")) == (before[0] + 1, before[1])
    first.release.set()
    assert done.wait()
    assert (busy("normal"), busy("long_running")) == before


@pytest.mark.unit
def test_submit_all_runs_each_occurrence_in_a_slot_of_its_own(pools, job, done):
    pool = pools(concurrency=3, long_running=0, on_done=done)
    run = job()
    pool.submit_all([occurrence(1), occurrence(2), occurrence(3)], run, long_running=False)
    assert run.started.wait(3)
    assert sorted(run.ran) == [1, 2, 3] and len(set(run.threads)) == 3
    assert (pool.free(False), sorted(pool.running_ids())) == (0, [1, 2, 3])
    run.release.set()
    assert done.wait(3)
    assert (pool.free(False), pool.idle) == (3, True)


@pytest.mark.unit
def test_a_drain_holds_an_ordinary_slot_and_its_slot_says_what_it_holds(pools, done):
    pool = pools(concurrency=2, long_running=1, on_done=done)
    orders, acks, given = queue.Queue(), queue.Queue(), []

    def drain(occurrence, slot):
        given.append((occurrence.id, slot.occurrence_id))
        while (order := orders.get(timeout=10)) != "end":
            slot.occurrence_id = order
            acks.put(order)

    pool.submit_drain(occurrence(5), drain)
    orders.put(5)
    assert acks.get(timeout=10) == 5
    assert given == [(5, 5)]
    assert (pool.free(False), pool.free(True), pool.running_ids()) == (1, 1, [5])
    orders.put(None)  # a group's rows, locked by its transaction: nothing to renew
    assert acks.get(timeout=10) is None
    assert (pool.running_ids(), pool.idle) == ([], False)
    orders.put(6)  # the next lone run
    assert acks.get(timeout=10) == 6
    assert pool.running_ids() == [6]
    orders.put("end")
    assert done.wait()
    assert (pool.free(False), pool.idle) == (2, True)


@pytest.mark.unit
def test_a_run_that_raises_frees_its_slot_and_calls_on_done(pools, job, done):
    pool = pools(concurrency=1, long_running=0, on_done=done)
    failing = job(fail=True)
    pool.submit(occurrence(1), failing, long_running=False)
    failing.release.set()
    assert done.wait()
    assert (pool.free(False), pool.idle) == (1, True)
    after = job()
    after.release.set()
    pool.submit(occurrence(2), after, long_running=False)
    assert done.wait()
    assert after.ran == [2]


@pytest.mark.unit
def test_wait_returns_when_a_run_ends_and_says_whether_any_is_left(pools, job, done):
    pool = pools(concurrency=2, long_running=0, on_done=done)
    assert pool.wait(0) is True  # idle: nothing to wait for
    first, second = job(), job()
    pool.submit(occurrence(1), first, long_running=False)
    pool.submit(occurrence(2), second, long_running=False)
    assert first.started.wait() and second.started.wait()
    assert pool.wait(0) is False

    first.release.set()
    started = time.monotonic()
    assert pool.wait(30) is False  # one ended, one is left
    assert time.monotonic() - started < 10, "wait waited for its timeout, not for the first run to end"
    assert done.wait()
    second.release.set()
    assert done.wait()
    assert pool.wait(30) is True


@pytest.mark.unit
def test_shutdown_of_an_idle_pool_ends_its_threads_and_takes_no_more_runs(pools, job, done):
    pool = pools(concurrency=2, long_running=1, on_done=done)
    ran = job()
    ran.release.set()
    pool.submit(occurrence(1), ran, long_running=False)
    assert done.wait()
    pool.shutdown()
    [thread] = ran.threads
    assert not thread.is_alive()  # shutdown waited for it to end
    with pytest.raises(RuntimeError):
        pool.submit(occurrence(2), job(), long_running=False)


@pytest.mark.unit
def test_shutdown_of_a_busy_pool_returns_at_once_and_cancels_what_has_not_started(pools, job, done):
    pool = pools(concurrency=1, long_running=0, on_done=done)
    running, queued = job(), job()
    pool.submit(occurrence(1), running, long_running=False)
    assert running.started.wait()
    pool.submit(occurrence(2), queued, long_running=False)  # no thread free: it waits in the executor's queue
    pool.shutdown()
    assert not running.release.is_set()  # shutdown did not wait for the running job
    assert done.wait()  # the queued run, cancelled
    assert pool.running_ids() == [1]
    running.release.set()
    assert done.wait()
    assert (pool.idle, running.ran, queued.ran) == (True, [1], [])


@pytest.mark.django_db
def test_shutdown_closes_the_database_connection_of_each_thread(pools, done):
    pool = pools(concurrency=2, long_running=1, on_done=done)
    everyone = threading.Barrier(3)
    opened = []

    def run(occurrence):
        connection.ensure_connection()
        opened.append(connections["default"])  # this thread's own wrapper
        everyone.wait(10)  # three threads at once: each opened its own connection

    for n, long_running in enumerate((False, False, True)):
        pool.submit(occurrence(n), run, long_running=long_running)
    assert done.wait(3)
    assert len(opened) == 3 and len({id(wrapper) for wrapper in opened}) == 3
    assert all(wrapper.connection is not None for wrapper in opened)
    pool.shutdown()
    assert [wrapper.connection for wrapper in opened] == [None, None, None]
