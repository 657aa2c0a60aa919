"""LISTEN on a PostgreSQL channel in a thread of its own, calling back on each notification."""

import logging
import threading
from collections.abc import Callable

import psycopg
from django.db import DEFAULT_DB_ALIAS, connections

logger = logging.getLogger(__name__)


class Listener:
    """Calls on_notify() whenever `channel` is notified, until close(). A no-op on SQLite.

    A dedicated autocommit connection listens: Django's connections run transactions. A lost
    connection is retried every `retry` seconds; once listening again it calls on_notify(), for
    what was notified while it was not (callers poll as well, as a safety net).
    """

    def __init__(self, channel: str, on_notify: Callable[[], None], using: str = DEFAULT_DB_ALIAS, retry: float = 1.0):
        self.channel = channel
        self.on_notify = on_notify
        self.using = using
        self.retry = retry
        self._closed = threading.Event()
        self._thread: threading.Thread | None = None

    def start(self) -> None:
        if connections[self.using].vendor != "postgresql":
            return
        self._thread = threading.Thread(target=self._listen, name=f"listen-{self.channel}", daemon=True)
        self._thread.start()

    def close(self) -> None:
        self._closed.set()
        if self._thread is not None:
            self._thread.join(5)

    def _listen(self) -> None:
        params = connections[self.using].get_connection_params()
        while not self._closed.is_set():
            try:
                with psycopg.connect(**params, autocommit=True) as listener:
                    listener.execute(f"LISTEN {self.channel}")
                    self.on_notify()
                    while not self._closed.is_set():
                        for _ in listener.notifies(timeout=0.5, stop_after=1):
                            self.on_notify()
            except psycopg.Error as error:
                logger.debug("listening on %s failed: %s", self.channel, error, extra={"action": "listen_failed"})
                self._closed.wait(self.retry)
