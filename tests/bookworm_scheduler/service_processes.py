"""The service's processes as real subprocesses for the TLS and secrets tests: manage.py commands,
gunicorn with the web app, a Celery worker; each one's output (stdout and stderr) in a file of its own."""

import json
import os
import signal
import subprocess
import sys
import tempfile
import time
import urllib.error
import urllib.request
from pathlib import Path

from tests.bookworm_scheduler.tls_servers import free_port, wait_for_port

ROOT = Path(__file__).resolve().parents[2]
PYTHON = sys.executable
GUNICORN = str(Path(sys.executable).with_name("gunicorn"))


class Process:
    """A subprocess in a session of its own (stop() ends its children too); its output in a file, not a pipe."""

    def __init__(self, args, env):
        self.log = tempfile.TemporaryFile(mode="w+")
        self.process = subprocess.Popen(
            args, env=env, cwd=ROOT, stdout=self.log, stderr=subprocess.STDOUT, text=True, start_new_session=True
        )

    def written(self) -> str:
        self.log.seek(0)
        return self.log.read()

    def wait_for(self, *texts: str, timeout: float = 30.0) -> str:
        """The output once every one of texts is in it; fails the test after timeout or if the process ended first."""
        deadline = time.monotonic() + timeout
        while True:
            output = self.written()
            if all(text in output for text in texts):
                return output
            ended = self.process.poll() is not None
            if ended or time.monotonic() > deadline:
                state = f"exited {self.process.returncode}" if ended else f"not within {timeout} s"
                raise AssertionError(f"{texts} not in the output ({state}) of {self.process.args}:\n{output[-3000:]}")
            time.sleep(0.1)

    def wait_for_any(self, *texts: str, timeout: float = 30.0) -> str:
        """The output once one of texts is in it, or the process ended; fails the test after timeout."""
        deadline = time.monotonic() + timeout
        while not any(text in (output := self.written()) for text in texts) and self.process.poll() is None:
            if time.monotonic() > deadline:
                raise AssertionError(f"none of {texts} within {timeout} s in {self.process.args}:\n{output[-3000:]}")
            time.sleep(0.1)
        return self.written()

    def exit_code(self, timeout: float = 60.0) -> int:
        return self.process.wait(timeout)

    def stop(self, timeout: float = 30.0) -> str:
        """SIGTERM to its session, SIGKILL after timeout; its whole output."""
        if self.process.poll() is None:
            os.killpg(self.process.pid, signal.SIGTERM)
            try:
                self.process.wait(timeout)
            except subprocess.TimeoutExpired:
                os.killpg(self.process.pid, signal.SIGKILL)
                self.process.wait(10)
        return self.written()


def manage(env, *args) -> Process:
    return Process([PYTHON, "manage.py", *args], env)


def run_manage(env, *args, timeout: float = 120.0) -> subprocess.CompletedProcess:
    return subprocess.run(
        [PYTHON, "manage.py", *args], env=env, cwd=ROOT, capture_output=True, text=True, timeout=timeout
    )


def worker(env, queue: str) -> Process:
    """A Celery worker on queue (SCHEDULER_CELERY_QUEUE), one process, as tests/jobs/celery_helpers.py starts them."""
    args = ["worker", "--loglevel", "INFO", "--concurrency", "1", "--hostname", "tls@%h"]
    args += ["--without-gossip", "--without-mingle", "--without-heartbeat", "--pidfile="]
    return Process([PYTHON, "-m", "celery", "-A", "bookworm_scheduler", *args], dict(env, SCHEDULER_CELERY_QUEUE=queue))


class Web:
    """gunicorn with the web app (deploy/gunicorn.conf.py, one worker) on a free port."""

    def __init__(self, env):
        self.port = free_port()
        self.process = Process(
            [GUNICORN, "--config", "deploy/gunicorn.conf.py", "--bind", f"127.0.0.1:{self.port}", "-w", "1",
             "bookworm_scheduler.wsgi"],
            env,
        )  # fmt: skip
        wait_for_port("127.0.0.1", self.port)

    def get(self, path: str, *, accept: str = "text/html", headers: dict | None = None) -> tuple[int, str]:
        request = urllib.request.Request(
            f"http://127.0.0.1:{self.port}{path}", headers={"Accept": accept, **(headers or {})}
        )
        try:
            with urllib.request.urlopen(request, timeout=30) as response:
                return response.status, response.read().decode()
        except urllib.error.HTTPError as error:
            return error.code, error.read().decode()

    def health(self) -> tuple[int, dict]:
        status, body = self.get("/health/", accept="application/json")
        return status, json.loads(body)

    def stop(self) -> str:
        return self.process.stop()
