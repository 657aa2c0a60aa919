"""Helpers of the celery executor's tests: a real `celery -A bookworm_scheduler worker` subprocess.

Workers load this module through SCHEDULER_JOB_MODULES for its job.
"""

import os
import signal
import subprocess
import sys
import threading
import time
import uuid
from datetime import timedelta

from django.conf import settings
from kombu import Connection

from bookworm_scheduler.celery import job_queues
from bookworm_scheduler.kernel.clock import database_now
from jobs.engine import store
from jobs.engine.registry import JobContext, job
from tests.jobs.helpers import wait_for

CELERY = [sys.executable, "-m", "celery", "-A", "bookworm_scheduler"]


def unique_queue() -> str:
    """A queue name of its own per test: no test sees another's messages."""
    return f"bookworm.test.{uuid.uuid4().hex[:12]}"


def delete_queues(name: str, url: str) -> None:
    with Connection(url) as conn:
        channel = conn.default_channel
        for queue in job_queues(name):
            queue.bind(channel).delete()
        job_queues(name)[0].exchange.bind(channel).delete()


def claim_ready(executor, limit: int = 1) -> list:
    """Claim what is ready for the executor's session, oldest first, as a scheduler's dispatch pass does."""
    return store.claim_ready(
        now=database_now(),
        session=executor.session,
        scheduler="test",
        lease=timedelta(seconds=60),
        long_running=False,
        limit=limit,
    )


def messages_in(queue_name: str, url: str | None = None) -> int:
    """Ready messages in the queue's ordinary queue (declared as the executor declares it, if nothing was sent)."""
    with Connection(url or settings.RABBITMQ_URL) as conn:
        queue = job_queues(queue_name)[0].bind(conn.default_channel)
        return queue.queue_declare().message_count


class CeleryProcess:
    """A `celery -A bookworm_scheduler` process in a process group of its own (kill() takes its children too)."""

    READY = ""  # what its output says once it is up

    def __init__(self, env, args):
        self.lines: list[str] = []
        self.process = subprocess.Popen(
            [*CELERY, *args],
            env=env,
            stdout=subprocess.PIPE,
            stderr=subprocess.STDOUT,
            text=True,
            start_new_session=True,
        )
        self._reader = threading.Thread(target=self._read, daemon=True)
        self._reader.start()

    def _read(self) -> None:
        for line in self.process.stdout:
            self.lines.append(line)

    @property
    def output(self) -> str:
        return "".join(self.lines)

    def wait_ready(self, timeout=30.0) -> None:
        try:
            wait_for(lambda: self.READY in self.output or self.process.poll() is not None, timeout=timeout)
        except AssertionError:
            raise AssertionError(
                f"{self.process.args[len(CELERY)]} did not start within {timeout} s:\n{self.output}"
            ) from None
        assert self.process.poll() is None, self.output

    def stop(self, timeout=20.0) -> None:
        if self.process.poll() is None:
            os.killpg(self.process.pid, signal.SIGTERM)
            try:
                self.process.wait(timeout)
            except subprocess.TimeoutExpired:
                self.kill()

    def kill(self) -> None:
        """SIGKILL the process and its children at once: a machine that went away."""
        if self.process.poll() is None:
            os.killpg(self.process.pid, signal.SIGKILL)
            self.process.wait(10)


class WorkerProcess(CeleryProcess):
    """A Celery worker."""

    READY = " ready."

    def __init__(self, env, *, concurrency=1, name="worker"):
        super().__init__(
            env,
            [
                "worker",
                "--loglevel",
                "INFO",
                "--concurrency",
                str(concurrency),
                "--hostname",
                f"{name}@%h",
                "--without-gossip",
                "--without-mingle",
                "--without-heartbeat",
            ],
        )

    def pool_pids(self) -> list[int]:
        out = subprocess.run(["pgrep", "-P", str(self.process.pid)], capture_output=True, text=True).stdout
        return [int(pid) for pid in out.split()]


class BeatProcess(CeleryProcess):
    """Stock celery beat with django-celery-beat's DatabaseScheduler, on the same PeriodicTask rows."""

    READY = "beat: Starting..."

    def __init__(self, env):
        super().__init__(
            env,
            ["beat", "-S", "django_celery_beat.schedulers:DatabaseScheduler", "--loglevel", "INFO", "--pidfile="],
        )


@job("test.stuck_in_c_call")
def stuck_in_c_call(context: JobContext) -> None:
    """Sleep with SIGUSR1 (the soft limit) and SIGTERM blocked: a C call that never returns to Python."""
    signals = {signal.SIGUSR1, signal.SIGTERM}
    signal.pthread_sigmask(signal.SIG_BLOCK, signals)
    try:
        time.sleep(context.kwargs.get("seconds", 30))
    finally:
        signal.pthread_sigmask(signal.SIG_UNBLOCK, signals)
