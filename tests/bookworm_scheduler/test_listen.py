import threading

import pytest
from django.db import connection

from bookworm_scheduler.listen import Listener
from tests.jobs.helpers import listener_ready, wait_for

CHANNEL = "test_listen"


class Calls:
    """Counts the listener's callbacks (from its thread)."""

    def __init__(self):
        self.count = 0
        self._lock = threading.Lock()

    def __call__(self):
        with self._lock:
            self.count += 1


def notify(times: int = 1) -> None:
    with connection.cursor() as cursor:
        for _ in range(times):
            cursor.execute(f"NOTIFY {CHANNEL}")


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
        wait_for(lambda: calls.count == 1, timeout=10)  # once listening: for what came before
        yield listener, calls
    finally:
        listener.close()


@pytest.mark.django_db(transaction=True)
def test_each_notification_calls_back_and_close_ends_the_thread_at_once(listening):
    listener, calls = listening

    notify(times=2)
    wait_for(lambda: calls.count == 3, timeout=10)

    listener.close()
    assert not listener._thread.is_alive()
    wait_for(lambda: listening_pid() is None, timeout=10)


@pytest.mark.django_db(transaction=True)
def test_a_lost_connection_is_listened_on_again_and_called_back_for_what_it_missed(listening):
    _listener, calls = listening
    with connection.cursor() as cursor:
        cursor.execute("SELECT pg_terminate_backend(%s)", [listening_pid()])

    wait_for(lambda: calls.count == 2, timeout=10)  # listening again
    wait_for(lambda: listener_ready(CHANNEL), timeout=10)
    notify()
    wait_for(lambda: calls.count == 3, timeout=10)
