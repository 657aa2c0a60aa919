"""Job timeouts: raise JobTimeout inside the thread that runs the job.

Python cannot kill a thread; a watchdog timer asynchronously raises JobTimeout in it, which
takes effect at the next Python bytecode the job runs (not inside a long C call such as
time.sleep), and on PostgreSQL a statement_timeout cancels a query that outlives the job.
"""

import ctypes
import threading


class JobTimeout(BaseException):
    """Not an Exception: a job's `except Exception:` cannot swallow its own timeout."""


class Watchdog:
    """Arm for `seconds`; disarm when the job returns. A no-op when seconds is None."""

    def __init__(self, seconds: float | None):
        self.seconds = seconds
        self._lock = threading.Lock()
        self._armed = False
        self._timer = None
        self._thread_id = None

    def __enter__(self):
        if self.seconds:
            self._thread_id = threading.get_ident()
            self._armed = True
            self._timer = threading.Timer(self.seconds, self._fire)
            self._timer.daemon = True
            self._timer.start()
        return self

    def _fire(self):
        with self._lock:
            if self._armed:
                ctypes.pythonapi.PyThreadState_SetAsyncExc(
                    ctypes.c_ulong(self._thread_id), ctypes.py_object(JobTimeout)
                )

    def __exit__(self, *exc):
        # After this returns no exception can be injected; one injected just before is raised
        # while this method still runs, inside the caller's try block.
        if self._timer is not None:
            with self._lock:
                self._armed = False
            self._timer.cancel()
        return False
