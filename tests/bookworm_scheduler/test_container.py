"""The container's files: the Dockerfile checked by hadolint, compose.yaml by docker compose's config, the
web process as the image's command starts it, and CPUs counted within a cgroup quota. The image itself,
built and run: test_image.py."""

import http.client
import json
import os
import re
import shutil
import socket
import subprocess
import sys
import tempfile
import urllib.parse
from pathlib import Path

import pytest
import yaml
from django.conf import settings

from tests.jobs.helpers import wait_for

BASE_DIR = Path(settings.BASE_DIR)
BIN = Path(sys.executable).parent
SECRET_KEY = "k3Q9v-container-test-key-7mZ2pX8wL4nR6tY1uB5cD0eF3gH9jK2"


def tool(name: str) -> str:
    """A validator installed by requirements-dev.txt (into the virtualenv) or on PATH."""
    path = shutil.which(name, path=f"{BIN}{os.pathsep}{os.environ.get('PATH', '')}")
    assert path is not None, f"{name} is not installed: `make test` installs requirements-dev.txt"
    return path


def dockerfile_instructions() -> list[tuple[str, str]]:
    """(INSTRUCTION, arguments) of the Dockerfile, continuation lines joined, comments dropped."""
    text = re.sub(r"\\\n", " ", (BASE_DIR / "Dockerfile").read_text())
    lines = [line.strip() for line in text.splitlines() if line.strip() and not line.lstrip().startswith("#")]
    return [(line.split(None, 1)[0].upper(), line.split(None, 1)[1]) for line in lines]


def instructions(kind: str) -> list[str]:
    return [arguments for instruction, arguments in dockerfile_instructions() if instruction == kind]


# Dockerfile.


def test_hadolint_finds_nothing_in_the_dockerfile():
    result = subprocess.run([tool("hadolint"), "Dockerfile"], cwd=BASE_DIR, capture_output=True, text=True, timeout=60)

    assert (result.returncode, result.stdout + result.stderr) == (0, "")


@pytest.mark.unit
def test_the_image_is_a_slim_python_of_a_fixed_version():
    (image,) = instructions("FROM")

    assert re.fullmatch(r"python:3\.11-slim(-\w+)?", image)


@pytest.mark.unit
def test_the_processes_run_as_a_user_that_is_not_root():
    user = instructions("USER")[-1]

    assert user.split(":")[0] not in ("root", "0")
    # USER comes after the last RUN and COPY: nothing the processes run as can rewrite the code.
    kinds = [instruction for instruction, _ in dockerfile_instructions()]
    assert max(i for i, kind in enumerate(kinds) if kind in ("RUN", "COPY")) < kinds.index("USER")


@pytest.mark.unit
def test_the_image_copies_the_code_of_every_app_it_installs():
    copied = {arguments.split()[0] for arguments in instructions("COPY")}
    local_apps = {app for app in settings.INSTALLED_APPS if (BASE_DIR / app).is_dir()}

    assert local_apps == {"jobs", "outbox"}
    assert local_apps | {"bookworm_scheduler", "templates", "manage.py", "deploy/gunicorn.conf.py"} <= copied


@pytest.mark.unit
def test_the_default_command_is_gunicorn_with_the_deploy_config():
    (command,) = instructions("CMD")

    assert json.loads(command) == ["gunicorn", "--config", "deploy/gunicorn.conf.py", "bookworm_scheduler.wsgi"]


# The web process as the image runs it: the Dockerfile's collectstatic and its command (the image itself,
# built and run with its HEALTHCHECK: test_image.py).


@pytest.fixture(scope="module")
def image_settings(tmp_path_factory):
    """Production settings with STATIC_ROOT in a folder of this test's, filled as the Dockerfile fills it."""
    folder = tmp_path_factory.mktemp("image")
    (folder / "image_settings.py").write_text(
        f"from bookworm_scheduler.settings import *  # noqa: F403\nSTATIC_ROOT = {str(folder / 'static')!r}\n"
    )
    env = {
        "PATH": f"{BIN}{os.pathsep}/usr/bin:/bin",
        "PYTHONPATH": f"{folder}{os.pathsep}{BASE_DIR}",
        "DJANGO_SETTINGS_MODULE": "image_settings",
        "DEBUG": "0",
        "SECRET_KEY": SECRET_KEY,
        "ALLOWED_HOSTS": "scheduler.example.com",
        "SECURE_PROXY_SSL_HEADER": "X-Forwarded-Proto",
    }
    result = subprocess.run(
        [sys.executable, "manage.py", "collectstatic", "--noinput"],
        cwd=BASE_DIR,
        env=env,
        capture_output=True,
        text=True,
        timeout=300,
    )
    assert result.returncode == 0, result.stderr
    return env, folder / "static"


def free_port() -> int:
    with socket.socket() as probe:
        probe.bind(("127.0.0.1", 0))
        return probe.getsockname()[1]


def get(url: str, **headers):
    """One GET, redirects not followed: a redirect to https://scheduler.example.com must stay a 301 here."""
    parts = urllib.parse.urlsplit(url)
    connection = http.client.HTTPConnection(parts.hostname, parts.port, timeout=5)
    try:
        connection.request("GET", parts.path, headers=headers)
        response = connection.getresponse()
        return response.status, dict(response.getheaders()), response.read()
    finally:
        connection.close()


@pytest.fixture
def gunicorn(image_settings):
    """The image's command on a free port, one worker; yields its base URL."""
    env, _ = image_settings
    port = free_port()
    process = subprocess.Popen(
        [str(BIN / "gunicorn"), *json.loads(instructions("CMD")[0])[1:], "--bind", f"127.0.0.1:{port}", "-w", "1"],
        cwd=BASE_DIR,
        env=env,
        stdout=subprocess.DEVNULL,
        stderr=subprocess.PIPE,
        text=True,
    )
    base = f"http://127.0.0.1:{port}"

    def answering() -> bool:
        if process.poll() is not None:
            pytest.fail(f"gunicorn exited: {process.communicate()[1]}")
        try:
            get(f"{base}/alive")
        except OSError:
            return False
        return True

    try:
        wait_for(answering, timeout=30, interval=0.2)
    except AssertionError:
        process.kill()
        pytest.fail(f"gunicorn did not start within 30 s: {process.communicate()[1]}")
    yield base, port
    process.terminate()
    process.wait(timeout=30)


@pytest.mark.slow
def test_the_web_process_answers_alive_to_any_host_over_plain_http(gunicorn):
    base, _ = gunicorn

    status, _, body = get(f"{base}/alive")

    assert (status, body) == (200, b"alive\n")
    # Everything else checks the host and redirects to HTTPS as production settings ask.
    assert get(f"{base}/tickerq/", Host="scheduler.example.com")[0] == 301
    assert get(f"{base}/tickerq/")[0] == 400


@pytest.mark.slow
def test_whitenoise_serves_the_hashed_static_files_for_a_year(gunicorn, image_settings):
    base, _ = gunicorn
    _, static_root = image_settings
    manifest = json.loads((static_root / "staticfiles.json").read_text())["paths"]
    hashed = manifest["admin/css/base.css"]

    status, headers, body = get(
        f"{base}/static/{hashed}", Host="scheduler.example.com", **{"X-Forwarded-Proto": "https"}
    )

    assert status == 200
    assert body == (static_root / hashed).read_bytes()
    assert "max-age=315360000" in headers["Cache-Control"]


# compose.yaml.

SECRETS = {"SECRET_KEY": "compose-secret-key", "POSTGRES_PASSWORD": "pgpw1234", "RABBITMQ_PASSWORD": "mqpw5678"}


def compose(*args, **env):
    return subprocess.run(
        [tool("docker-compose"), "--project-directory", str(BASE_DIR), "-f", "compose.yaml", *args],
        cwd=BASE_DIR,
        env={"PATH": "/usr/bin:/bin", "HOME": tempfile.gettempdir(), **env},
        capture_output=True,
        text=True,
        timeout=60,
    )


@pytest.fixture(scope="module")
def services():
    result = compose("config", "--format", "json", **SECRETS)
    assert result.returncode == 0, result.stderr
    return json.loads(result.stdout)["services"]


def test_compose_starts_the_database_the_broker_migrate_the_web_two_schedulers_and_a_relay(services):
    assert set(services) == {"postgres", "rabbitmq", "migrate", "web", "scheduler", "relay"}
    assert services["migrate"]["command"] == ["python", "manage.py", "migrate", "--noinput"]
    assert "command" not in services["web"] or services["web"]["command"] is None  # the image's gunicorn
    assert services["scheduler"]["command"] == ["python", "manage.py", "runscheduler"]
    assert services["scheduler"]["deploy"]["replicas"] == 2
    assert services["relay"]["command"] == ["python", "manage.py", "relay_outbox"]
    assert services["rabbitmq"]["image"].endswith("-management")


def test_the_app_runs_one_image_built_here(services):
    app = ("migrate", "web", "scheduler", "relay")

    assert {services[name]["image"] for name in app} == {"bookworm-scheduler:local"}
    assert all(services[name]["build"]["context"] == str(BASE_DIR) for name in app)


def test_no_image_is_untagged_or_latest(services):
    for name, service in services.items():
        repository, _, tag = service["image"].rpartition(":")
        assert repository and tag and tag != "latest", name


def test_the_start_order_follows_health(services):
    def conditions(name):
        return {dependency: spec["condition"] for dependency, spec in services[name]["depends_on"].items()}

    assert services["postgres"]["healthcheck"]["test"][:2] == ["CMD", "pg_isready"]
    assert "check_port_connectivity" in services["rabbitmq"]["healthcheck"]["test"]
    assert conditions("migrate") == {"postgres": "service_healthy"}
    assert conditions("web") == {"migrate": "service_completed_successfully", "rabbitmq": "service_healthy"}
    assert conditions("scheduler") == {"migrate": "service_completed_successfully"}
    assert conditions("relay") == {"migrate": "service_completed_successfully", "rabbitmq": "service_healthy"}
    # /alive is the web's: the other processes of the image have no web server.
    assert all(services[name]["healthcheck"] == {"disable": True} for name in ("migrate", "scheduler", "relay"))
    assert "healthcheck" not in services["web"]


def test_the_secrets_come_from_the_environment_and_none_is_written_in_the_file(services):
    environment = services["web"]["environment"]

    assert environment["SECRET_KEY"] == "compose-secret-key"
    assert environment["DATABASE_URL"] == "postgres://bookworm:pgpw1234@postgres:5432/bookworm"
    assert environment["RABBITMQ_URL"] == "amqp://bookworm:mqpw5678@rabbitmq:5672/%2F"
    assert services["postgres"]["environment"]["POSTGRES_PASSWORD"] == "pgpw1234"
    assert services["rabbitmq"]["environment"]["RABBITMQ_DEFAULT_PASS"] == "mqpw5678"


def test_compose_refuses_to_start_without_each_secret():
    result = compose("config", "--quiet")

    assert result.returncode != 0
    for name in SECRETS:
        assert f"required variable {name} is missing" in result.stderr


# CPUs within a cgroup quota (the quota itself: test_cgroup.py).


def test_the_scheduler_concurrency_defaults_to_the_available_cpus():
    code = (
        "import json, django; from django.conf import settings; django.setup(); "
        "from bookworm_scheduler.kernel.cpus import available_cpus; "
        "print(json.dumps([settings.SCHEDULER_CONCURRENCY, settings.SCHEDULER_LONG_RUNNING_CONCURRENCY, "
        "available_cpus()]))"
    )
    env = {"PATH": "/usr/bin:/bin", "DEBUG": "1", "DJANGO_SETTINGS_MODULE": "bookworm_scheduler.settings"}

    result = subprocess.run(
        [sys.executable, "-c", code], cwd=BASE_DIR, env=env, capture_output=True, text=True, timeout=60
    )

    concurrency, long_running, cpus = json.loads(result.stdout)
    assert concurrency == long_running == cpus


def test_the_schedulers_and_the_relay_serve_metrics_where_the_prometheus_configuration_scrapes(services):
    config = yaml.safe_load((BASE_DIR / "deploy" / "prometheus" / "prometheus.yml").read_text())
    scraped = {
        (job["job_name"], found["names"][0], found["port"])
        for job in config["scrape_configs"]
        for found in job.get("dns_sd_configs", [])
    }

    assert scraped == {("scheduler", "scheduler", 9100), ("relay", "relay", 9101)}
    assert services["scheduler"]["environment"]["SCHEDULER_METRICS_PORT"] == "9100"
    assert services["relay"]["environment"]["RELAY_METRICS_PORT"] == "9101"
    assert [job["static_configs"] for job in config["scrape_configs"] if job["job_name"] == "web"] == [
        [{"targets": ["web:8000"]}]
    ]
