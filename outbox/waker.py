"""The relay's sleep between passes (Waker): until an outbox row commits, or the poll interval passes."""

import functools
import logging
import threading
import time
from collections.abc import Callable

import psycopg
from django.db import DEFAULT_DB_ALIAS

from bookworm_scheduler.kernel.dialect import postgresql
from bookworm_scheduler.kernel.listen import Listener
from outbox.publishing import NOTIFY_CHANNEL

logger = logging.getLogger(__name__)


class Waker:
    """Sleeps until an outbox row commits (NOTIFY outbox, heard by a Listener) or the timeout passes.

    The Listener starts at the first wait() after the waker was made or closed, and that wait
    gives it up to a slice to be listening: a row committed from then on wakes the relay. Its
    first call without payload (it listens) is not a wake-up: the relay made a pass before it
    waited, and a row committed between that pass and the LISTEN waits for the poll. A later one
    (it listens again after a lost connection) is, since rows may have committed in between.
    Notifications that arrive while the relay is not waiting fold into one wake-up, at its next
    wait. While LISTEN fails (outbox_listen_failed) the relay polls. On SQLite there is nothing
    to listen to and this just sleeps.
    """

    SLICE = 1.0  # longest uninterrupted wait: how soon a stop request or a heartbeat is seen

    def __init__(self, using: str = DEFAULT_DB_ALIAS):
        self.using = using
        self._listener: Listener | None = None
        self._woken = threading.Event()  # a wake-up that no wait() has returned yet

    @property
    def can_listen(self) -> bool:
        return postgresql(self.using)

    def wait(self, seconds: float, tick: Callable[[], None], stopping: Callable[[], bool]) -> bool:
        """Wait for a notification (True), for seconds or until stopping(); tick() between slices."""
        deadline = time.monotonic() + seconds
        while not stopping():
            self._listen()
            remaining = deadline - time.monotonic()
            if remaining <= 0:
                return False
            if self._woken.wait(min(remaining, self.SLICE)):
                self._woken.clear()
                return True
            tick()
        return False

    def close(self) -> None:
        if self._listener is not None:
            self._listener.close()
            self._listener = None

    def _listen(self) -> None:
        """Start the listener, if there is none (and something to listen to); wait up to a slice until it listens."""
        if self._listener is not None or not self.can_listen:
            return
        self._woken.clear()
        listening = threading.Event()
        self._listener = Listener(
            NOTIFY_CHANNEL,
            functools.partial(self._notified, listening),
            using=self.using,
            retry=self.SLICE,
            on_failure=self._failed,
        )
        self._listener.start()
        listening.wait(self.SLICE)

    def _notified(self, listening: threading.Event, payload: str | None) -> None:
        """The listener's callback, from its thread: a row committed, or the listener listens (again)."""
        if payload is None and not listening.is_set():
            listening.set()  # the first: not a wake-up
        else:
            self._woken.set()

    @staticmethod
    def _failed(error: psycopg.Error) -> None:
        """The listener's callback when LISTEN fails: it tries again in a slice; meanwhile the relay polls."""
        logger.warning(
            "cannot listen for outbox notifications, polling: %s",
            error,
            extra={"action": "outbox_listen_failed", "error": str(error)},
        )
