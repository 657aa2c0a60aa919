"""LISTEN on a PostgreSQL channel in a thread of its own, calling back on each notification."""

import logging
import os
import selectors
import threading
from collections.abc import Callable

import psycopg
from django.db import DEFAULT_DB_ALIAS, connections

from bookworm_scheduler.kernel.dialect import postgresql

logger = logging.getLogger(__name__)


class Listener:
    """Calls on_notify(payload) whenever `channel` is notified, until close(). A no-op on SQLite.

    A dedicated autocommit connection listens: Django's connections run transactions. A lost
    connection, or one that cannot be made, is reported to on_failure(error) (by default logged,
    listen_failed, at DEBUG) and retried every `retry` seconds. Each time it listens, the first
    time included, it calls on_notify(None), for whatever was notified while it was not (callers
    poll as well, as a safety net). Callbacks are made from the listener's thread.

    The thread sleeps in select() on the connection's socket and a pipe that close() writes to,
    with no timeout: an idle listener costs no CPU. (psycopg's notifies(timeout=...) wakes every
    0.1 s to check for interrupts, a few milliseconds of CPU a second in every idle process.)
    """

    def __init__(
        self,
        channel: str,
        on_notify: Callable[[str | None], None],
        using: str = DEFAULT_DB_ALIAS,
        retry: float = 1.0,
        on_failure: Callable[[psycopg.Error], None] | None = None,
    ):
        self.channel = channel
        self.on_notify = on_notify
        self.using = using
        self.retry = retry
        self.on_failure = on_failure or self._log_failure
        self._closed = threading.Event()
        self._thread: threading.Thread | None = None
        self._wakeup: tuple[int, int] | None = None  # a pipe: close() writes to it

    def start(self) -> None:
        if not postgresql(self.using):
            return
        self._wakeup = os.pipe()
        self._thread = threading.Thread(target=self._listen, name=f"listen-{self.channel}", daemon=True)
        self._thread.start()

    def close(self) -> None:
        """Stop listening; the thread ends at once (a second call does nothing)."""
        self._closed.set()
        if self._thread is None or self._wakeup is None:
            return
        os.write(self._wakeup[1], b"x")
        self._thread.join(5)
        if not self._thread.is_alive():
            os.close(self._wakeup[0])
            os.close(self._wakeup[1])
            self._wakeup = None

    def _listen(self) -> None:
        params = connections[self.using].get_connection_params()
        while not self._closed.is_set():
            try:
                with psycopg.connect(**params, autocommit=True) as listener:
                    listener.execute(f"LISTEN {self.channel}")
                    self.on_notify(None)
                    with selectors.DefaultSelector() as selector:
                        selector.register(listener.fileno(), selectors.EVENT_READ)
                        selector.register(self._wakeup[0], selectors.EVENT_READ)
                        while not self._closed.is_set():
                            selector.select()
                            # What the socket holds (timeout 0: no waiting); a lost connection raises here.
                            for notify in listener.notifies(timeout=0):
                                self.on_notify(notify.payload)
            except psycopg.Error as error:
                self.on_failure(error)
                self._closed.wait(self.retry)

    def _log_failure(self, error: psycopg.Error) -> None:
        logger.debug("listening on %s failed: %s", self.channel, error, extra={"action": "listen_failed"})
