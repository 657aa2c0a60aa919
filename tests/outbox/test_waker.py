"""The relay's wait between passes: woken by a committed row, or by listening again after a lost connection."""

import logging
import time

import pytest
from django.db import connection, transaction

from outbox.publishing import NOTIFY_CHANNEL, publish
from outbox.waker import Waker
from tests.jobs.helpers import listener_ready, wait_for

pytestmark = pytest.mark.django_db(transaction=True)


def wait(waker: Waker, seconds: float) -> bool:
    return waker.wait(seconds, tick=lambda: None, stopping=lambda: False)


def end_the_listening_session() -> None:
    with connection.cursor() as cursor:
        cursor.execute(
            "SELECT pg_terminate_backend(pid) FROM pg_stat_activity WHERE datname = current_database() AND query = %s",
            [f"LISTEN {NOTIFY_CHANNEL}"],
        )


def test_the_waker_wakes_when_an_outbox_row_commits(event_type):
    waker = Waker()
    try:
        assert wait(waker, 0.1) is False  # listening from now on, which is no wake-up
        with transaction.atomic():
            publish(event_type())

        assert wait(waker, 30) is True
    finally:
        waker.close()


def test_the_waker_returns_at_once_when_asked_to_stop():
    waker = Waker()
    try:
        started = time.monotonic()
        assert waker.wait(30, tick=lambda: None, stopping=lambda: True) is False
        assert time.monotonic() - started < Waker.SLICE
    finally:
        waker.close()


def test_listening_again_after_a_lost_connection_wakes_the_relay_for_what_it_may_have_missed(caplog):
    waker = Waker()
    try:
        assert wait(waker, 0.1) is False
        wait_for(lambda: listener_ready(NOTIFY_CHANNEL), timeout=10)
        with caplog.at_level(logging.WARNING, logger="outbox"):
            end_the_listening_session()

            assert wait(waker, 30) is True
        [failed] = [record for record in caplog.records if getattr(record, "action", None) == "outbox_listen_failed"]
        assert failed.levelname == "WARNING" and failed.error
    finally:
        waker.close()


def test_a_closed_waker_listens_again_at_its_next_wait(event_type):
    waker = Waker()
    try:
        assert wait(waker, 0.1) is False
        waker.close()
        wait_for(lambda: not listener_ready(NOTIFY_CHANNEL), timeout=10)

        assert wait(waker, 0.1) is False  # listening again after close(): a start, not a wake-up
        with transaction.atomic():
            publish(event_type())
        assert wait(waker, 30) is True
    finally:
        waker.close()
