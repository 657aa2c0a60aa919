"""The image built for real from a fresh clone (deploy/build-image.sh: mmdebstrap, podman, buildah, no
Docker engine) and the whole service run from it, each process in a container of its own.

Containers are buildah's working containers, run with chroot isolation on the host's network
(podman run needs setrlimit, which this sandbox refuses), against the local PostgreSQL (a
database of this test's) and RabbitMQ. Their commands and environment are compose.yaml's, with
only what the host's network changes: the addresses of PostgreSQL and RabbitMQ and the ports.
"""

import json
import logging
import os
import signal
import subprocess
import tempfile
import time
import urllib.request
import uuid
from pathlib import Path

import psycopg
import pytest
from django.conf import settings

from jobs.seed.contracts import CleanUpSentEmailIntegrationEvent
from tests.bookworm_scheduler.test_container import BASE_DIR, SECRETS, compose, free_port
from tests.jobs.helpers import wait_for
from tests.outbox.helpers import Rabbit

pytestmark = pytest.mark.slow
logger = logging.getLogger(__name__)

TAG = f"localhost/bookworm-scheduler:test-{uuid.uuid4().hex[:8]}"
# What the build binds in, or could leave behind, none of which belongs in the image.
BUILD_LEFTOVERS = ["/etc/pip.conf", "/etc/xdg/pip", "/root/.config/pip", "/root/.cache/pip", "/app/.git", "/.git"]
# Where a process may write: temporary folders (gunicorn's heartbeat files are in /dev/shm).
TEMPORARY = ("/tmp", "/var/tmp", "/dev/shm")


def run(command: list[str], timeout: float = 120, **kwargs) -> subprocess.CompletedProcess:
    return subprocess.run(command, capture_output=True, text=True, timeout=timeout, **kwargs)


@pytest.fixture(scope="module")
def image(tmp_path_factory) -> dict:
    """The image built from a fresh clone of this repository; its configuration (buildah inspect)."""
    clone = tmp_path_factory.mktemp("image") / "clone"
    assert run(["git", "clone", "--quiet", str(BASE_DIR), str(clone)]).returncode == 0
    started = time.monotonic()
    built = run(["bash", "deploy/build-image.sh", TAG], timeout=900, cwd=clone)
    assert built.returncode == 0, built.stdout[-3000:] + built.stderr[-3000:]
    logger.info("built %s in %.0f s", TAG, time.monotonic() - started)
    inspected = json.loads(run(["buildah", "inspect", "--type", "image", TAG]).stdout)
    yield inspected["Docker"]["config"]
    run(["buildah", "rmi", "--force", TAG])


class Container:
    """A working container of the image running one command (buildah run); its output in a temporary file."""

    def __init__(self, name: str, env: dict[str, str]):
        self.name = f"bw-{name}-{uuid.uuid4().hex[:6]}"
        made = run(["buildah", "from", "--pull-never", "--name", self.name, TAG])
        assert made.returncode == 0, made.stderr
        self.env = env
        self.log = tempfile.TemporaryFile(mode="w+")
        self.process = None

    def command(self, command: list[str]) -> list[str]:
        env = [f"--env={key}={value}" for key, value in self.env.items()]
        return ["buildah", "run", "--isolation", "chroot", "--network", "host", *env, self.name, "--", *command]

    def start(self, command: list[str]) -> "Container":
        self.process = subprocess.Popen(
            self.command(command), stdout=self.log, stderr=subprocess.STDOUT, text=True, start_new_session=True
        )
        return self

    def exec(self, command: list[str], timeout: float = 120) -> subprocess.CompletedProcess:
        """Another process in this container (as `docker exec`), to its end."""
        return run(self.command(command), timeout=timeout)

    def written(self) -> str:
        self.log.seek(0)
        return self.log.read()

    def inside(self) -> int:
        """The pid of the command buildah started: the first process below `buildah run` that is not buildah's."""
        pending = [self.process.pid]
        while pending:
            pid = pending.pop(0)
            try:
                program = os.readlink(f"/proc/{pid}/exe")  # buildah's runtime runs from memfds: "/memfd:buildah-..."
                # buildah's processes are Go's: any of their threads may have forked the next one.
                tasks = Path(f"/proc/{pid}/task").iterdir()
                children = [int(child) for task in tasks for child in (task / "children").read_text().split()]
            except OSError:
                continue
            if pid != self.process.pid and not program.startswith("/memfd:"):
                return pid
            pending += children
        raise AssertionError(f"{self.name}: its process is gone; its log:\n{self.written()[-3000:]}")

    def stop(self, timeout: float) -> int:
        """SIGTERM to the container's process, as `docker stop`; its exit status, which must come within timeout."""
        os.kill(self.inside(), signal.SIGTERM)
        try:
            return self.process.wait(timeout)
        except subprocess.TimeoutExpired:
            os.killpg(self.process.pid, signal.SIGKILL)
            self.process.wait(10)
            raise AssertionError(
                f"{self.name} still ran {timeout} s after SIGTERM:\n{self.written()[-3000:]}"
            ) from None

    def alive(self) -> bool:
        if self.process.poll() is not None:
            pytest.fail(f"{self.name} exited {self.process.returncode}:\n{self.written()[-3000:]}")
        return True

    def changes(self) -> list[str]:
        """What the container changed in the image's file system (podman diff): 'A /path', 'C /path', ..."""
        return run(["podman", "diff", self.name]).stdout.split("\n")

    def remove(self) -> None:
        if self.process is not None and self.process.poll() is None:
            os.killpg(self.process.pid, signal.SIGKILL)
            self.process.wait(10)
        run(["buildah", "rm", self.name])


@pytest.fixture
def database_url():
    """A database of this test's own, empty: the image's migrate makes its tables."""
    name = f"bw_image_{uuid.uuid4().hex[:8]}"
    admin = "postgres://postgres@127.0.0.1:5432/postgres"
    with psycopg.connect(admin, autocommit=True) as connection:
        connection.execute(f'CREATE DATABASE "{name}"')
    yield f"postgres://postgres@127.0.0.1:5432/{name}"
    with psycopg.connect(admin, autocommit=True) as connection:
        connection.execute(f'DROP DATABASE "{name}" WITH (FORCE)')


@pytest.fixture
def services() -> dict:
    result = compose("config", "--format", "json", **SECRETS)
    assert result.returncode == 0, result.stderr
    return json.loads(result.stdout)["services"]


@pytest.fixture
def containers():
    made = []

    def make(name: str, env: dict[str, str]) -> Container:
        made.append(Container(name, env))
        return made[-1]

    yield make
    for container in made:
        container.remove()


def seconds(duration: str | None, default: float) -> float:
    """compose's "40s" (stop_grace_period) in seconds."""
    return float(duration.rstrip("s")) if duration else default


def test_the_image_runs_the_service_as_compose_starts_it(image, services, containers, database_url):
    def environment(service: str, **changes) -> dict[str, str]:
        """compose's environment of the service, with the host network's addresses and ports."""
        env = {key: str(value) for key, value in services[service]["environment"].items()}
        env.update(DATABASE_URL=database_url, RABBITMQ_URL=settings.RABBITMQ_URL, **changes)
        return env

    migrate = containers("migrate", environment("migrate"))
    migrated = migrate.exec(services["migrate"]["command"], timeout=300)
    assert migrated.returncode == 0, migrated.stdout + migrated.stderr

    port = free_port()
    web = containers("web", environment("web", PORT=str(port))).start(image["Cmd"])
    schedulers = [
        containers(f"scheduler-{n}", environment("scheduler", SCHEDULER_METRICS_PORT=str(free_port())))
        for n in range(services["scheduler"]["deploy"]["replicas"])
    ]
    for scheduler in schedulers:
        scheduler.start(services["scheduler"]["command"])
    relay = containers("relay", environment("relay", RELAY_METRICS_PORT=str(free_port())))
    relay.start(services["relay"]["command"])
    every = [web, *schedulers, relay]

    def healthy() -> dict | None:
        """/health/'s JSON once every check passes (500 until the schedulers and the relay have beaten)."""
        for container in every:
            container.alive()
        try:
            with urllib.request.urlopen(f"http://127.0.0.1:{port}/health/?format=json", timeout=5) as response:
                return json.load(response)
        except OSError:
            return None

    assert wait_for(healthy, timeout=90, interval=0.5) == {
        "database": "OK",
        "broker": "OK",
        "schedulers": "OK",
        "relays": "OK",
        "outbox_backlog": "OK",
        "migrations": "OK",
    }

    # The image's HEALTHCHECK, run inside the web container as the engine runs it.
    kind, *healthcheck = image["Healthcheck"]["Test"]
    assert kind == "CMD"
    assert web.exec(healthcheck, timeout=30).returncode == 0

    # A job run now (the CLI, in a container of its own) publishes its event to RabbitMQ.
    rabbit = Rabbit()
    try:
        queue = rabbit.bind_queue(CleanUpSentEmailIntegrationEvent.exchange())
        trigger = containers("trigger", environment("scheduler"))
        triggered = trigger.exec(["python", "manage.py", "jobs", "trigger", "CleanUpSentEmailJob"])
        assert triggered.returncode == 0, triggered.stdout + triggered.stderr
        [(properties, envelope)] = rabbit.receive(queue, 1, timeout=60)
    finally:
        rabbit.close()
    assert envelope["messageType"] == [
        "urn:message:BookWorm.Contracts:CleanUpSentEmailIntegrationEvent",
        "urn:message:BookWorm.Chassis.EventBus:IntegrationEvent",
    ]
    assert properties.message_id == envelope["messageId"]

    # SIGTERM: each process exits 0 within its stop grace period (docker's 10 s where compose sets none).
    for container, service in [(relay, "relay"), *[(s, "scheduler") for s in schedulers], (web, "web")]:
        grace = seconds(services[service].get("stop_grace_period"), 10)
        assert container.stop(grace) == 0, f"{container.name}:\n{container.written()[-3000:]}"
    assert web.exec(healthcheck, timeout=30).returncode != 0

    # Nothing wrote outside a temporary folder: the code belongs to root, the processes do not.
    for container in [migrate, *every]:
        changed = [line.split(" ", 1)[1] for line in container.changes() if line.strip()]
        outside = [path for path in changed if not path.startswith(TEMPORARY) and path not in TEMPORARY]
        assert outside == [], container.name
    for container in every:
        assert "Traceback" not in container.written(), container.written()[-3000:]
        assert "Permission denied" not in container.written(), container.written()[-3000:]


def test_the_image_runs_as_a_user_that_owns_none_of_it_and_holds_no_build_leftovers(image, containers):
    assert image["User"] == "10001:10001"
    assert not any(variable.startswith("SECRET_KEY=") for variable in image["Env"])
    container = containers("inspect", {})
    mounted = Path(run(["buildah", "mount", container.name]).stdout.strip())
    try:
        owned = [str(path) for path in (mounted / "app").rglob("*") if path.lstat().st_uid != 0]
        writable = [str(path) for path in (mounted / "app").rglob("*") if path.lstat().st_mode & 0o022]
        leftovers = [path for path in BUILD_LEFTOVERS if (mounted / path.lstrip("/")).exists()]
    finally:
        run(["buildah", "umount", container.name])
    size = json.loads(run(["podman", "image", "inspect", TAG]).stdout)[0]["Size"]
    logger.info("image %s: %.0f MB", TAG, size / 1e6)

    assert (owned, writable, leftovers) == ([], [], [])
