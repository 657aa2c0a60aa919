import logging
import threading

import psycopg
import pytest
from django.db import connection

from bookworm_scheduler.kernel.listen import Listener
from tests.jobs.helpers import listener_ready, wait_for

CHANNEL = "test_listen"


class Calls:
    """The payloads the listener called back with (from its thread)."""

    def __init__(self):
        self.payloads = []
        self._lock = threading.Lock()

    def __call__(self, payload):
        with self._lock:
            self.payloads.append(payload)

    def seen(self):
        with self._lock:
            return list(self.payloads)


def notify(*payloads: str) -> None:
    with connection.cursor() as cursor:
        for payload in payloads:
            cursor.execute("SELECT pg_notify(%s, %s)", [CHANNEL, payload])


def listening_pid() -> int | None:
    with connection.cursor() as cursor:
        cursor.execute(
            "SELECT pid FROM pg_stat_activity WHERE datname = current_database() AND query = %s", [f"LISTEN {CHANNEL}"]
        )
        row = cursor.fetchone()
    return row[0] if row else None


@pytest.fixture
def listening():
    calls = Calls()
    listener = Listener(CHANNEL, calls)
    listener.start()
    try:
        wait_for(lambda: listener_ready(CHANNEL), timeout=10)
        wait_for(lambda: calls.seen() == [None], timeout=10)  # once listening: for what came before
        yield listener, calls
    finally:
        listener.close()


@pytest.mark.django_db(transaction=True)
def test_each_notification_calls_back_with_its_payload_and_close_ends_the_thread_at_once(listening):
    listener, calls = listening

    notify("definitions", "scheduled")
    wait_for(lambda: len(calls.seen()) == 3, timeout=10)
    assert calls.seen() == [None, "definitions", "scheduled"]

    listener.close()
    assert not listener._thread.is_alive()
    wait_for(lambda: listening_pid() is None, timeout=10)


def end_the_listening_session() -> None:
    with connection.cursor() as cursor:
        cursor.execute("SELECT pg_terminate_backend(%s)", [listening_pid()])


@pytest.mark.django_db(transaction=True)
def test_a_lost_connection_is_listened_on_again_and_called_back_for_what_it_missed(listening, caplog):
    _listener, calls = listening
    with caplog.at_level(logging.DEBUG, logger="bookworm_scheduler.kernel.listen"):
        end_the_listening_session()

        wait_for(lambda: calls.seen() == [None, None], timeout=10)  # listening again
    assert [record.action for record in caplog.records if hasattr(record, "action")] == ["listen_failed"]
    wait_for(lambda: listener_ready(CHANNEL), timeout=10)
    notify("scheduled")
    wait_for(lambda: calls.seen() == [None, None, "scheduled"], timeout=10)


@pytest.mark.django_db(transaction=True)
def test_a_failure_goes_to_on_failure_when_one_is_given_and_the_listener_listens_again():
    calls, failures = Calls(), Calls()
    listener = Listener(CHANNEL, calls, on_failure=failures)
    listener.start()
    try:
        wait_for(lambda: listener_ready(CHANNEL), timeout=10)
        wait_for(lambda: calls.seen() == [None], timeout=10)
        end_the_listening_session()

        wait_for(lambda: calls.seen() == [None, None], timeout=10)
        [error] = failures.seen()
        assert isinstance(error, psycopg.OperationalError)
    finally:
        listener.close()
