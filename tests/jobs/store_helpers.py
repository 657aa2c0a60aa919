"""Helpers of the occurrence store's contract tests (test_store_claims.py, test_store_records.py)."""

import contextlib
import threading
import uuid
from datetime import timedelta

import pytest
from django.db import connection, transaction

from jobs.engine import store
from jobs.models import Occurrence, Priority

SESSION = uuid.UUID("00000000-0000-4000-8000-00000000000a")
OTHER = uuid.UUID("00000000-0000-4000-8000-00000000000b")
LEASE = timedelta(seconds=60)


# What SQLite cannot do: deselected from the SQLite run (-m "not postgresql_only"), never skipped.
postgresql_only = pytest.mark.postgresql_only


def scheduled(task, at, *, priority=Priority.NORMAL, **fields) -> Occurrence:
    """A planned occurrence due at `at`."""
    return Occurrence.objects.create(
        task=task, job_name=task.name, scheduled_for=at, run_after=at, priority=priority, **fields
    )


def claimed(task, at, *, session=SESSION, scheduler="alpha") -> Occurrence:
    """An occurrence due at `at`, claimed then by session (its first attempt)."""
    occurrence = scheduled(task, at)
    return store.claim_one(occurrence.id, now=at, session=session, scheduler=scheduler, lease=LEASE)


def claim_ready(now, *, limit=10, long_running=False, session=SESSION):
    return store.claim_ready(
        now=now, session=session, scheduler="alpha", lease=LEASE, long_running=long_running, limit=limit
    )


def row(occurrence) -> Occurrence:
    return Occurrence.objects.get(id=occurrence.id)


def finished(task, at, status, **fields) -> Occurrence:
    return scheduled(task, at, status=status, finished_at=at, **fields)


@contextlib.contextmanager
def another_transaction(work):
    """work() in a transaction of another connection (a thread's), held open until the block ends; yields its result."""
    held, release, result, errors = threading.Event(), threading.Event(), [], []

    def hold():
        try:
            with transaction.atomic():
                result.append(work())
                held.set()
                release.wait(30)
        except Exception as exc:  # surfaced below
            errors.append(exc)
        finally:
            held.set()
            connection.close()

    thread = threading.Thread(target=hold)
    thread.start()
    try:
        assert held.wait(30)
        assert errors == []
        yield result[0]
    finally:
        release.set()
        thread.join(30)
    assert not thread.is_alive() and errors == []
