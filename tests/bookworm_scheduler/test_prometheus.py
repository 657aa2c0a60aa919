"""A real Prometheus (Debian's) scrapes a real web process, runscheduler and relay_outbox with our rules.

It runs deploy/prometheus/prometheus.yml with the targets on this machine and intervals of a
second, and reads its HTTP API: what a real scrape does to our labels (it owns `job` and
`instance`), and which alerts the rules raise, is what this shows and promtool's unit tests cannot.
"""

import base64
import json
import logging
import os
import signal
import subprocess
import sys
import tempfile
import urllib.request
from pathlib import Path

import pytest
import yaml
from django.conf import settings
from django.contrib.auth.models import User
from django.utils import timezone
from django_celery_beat.models import PeriodicTask

from jobs.models import ApiToken
from tests.bookworm_scheduler.test_container import free_port
from tests.jobs.helpers import MANAGE, make_definition, wait_for

logger = logging.getLogger(__name__)

PROMETHEUS = Path(sys.executable).parent / "prometheus"
CONFIG = Path(settings.BASE_DIR) / "deploy" / "prometheus" / "prometheus.yml"
PASSWORD = "a-long-scrape-password"


class Child:
    """A subprocess whose output goes to a temporary file (a pipe no one reads would stop it when full)."""

    def __init__(self, command: list[str], env: dict, cwd: Path | None = None):
        self.log = tempfile.TemporaryFile(mode="w+")
        self.process = subprocess.Popen(command, env=env, cwd=cwd, stdout=self.log, stderr=subprocess.STDOUT, text=True)

    def alive(self) -> bool:
        if self.process.poll() is not None:
            pytest.fail(f"{self.process.args[:3]} exited {self.process.returncode}:\n{self.written()[-4000:]}")
        return True

    def written(self) -> str:
        self.log.seek(0)
        return self.log.read()

    def stop(self, signum=signal.SIGTERM) -> None:
        if self.process.poll() is None:
            self.process.send_signal(signum)
            try:
                self.process.wait(30)
            except subprocess.TimeoutExpired:
                self.process.kill()
                self.process.wait(10)


def get_json(url: str) -> dict:
    with urllib.request.urlopen(url, timeout=5) as response:
        return json.load(response)


class Prometheus:
    """Debian's Prometheus on a free port with deploy/prometheus/prometheus.yml, its targets made local."""

    def __init__(self, folder: Path, targets: dict[str, str], token: str):
        config = yaml.safe_load(CONFIG.read_text())
        config["global"] = {"scrape_interval": "1s", "evaluation_interval": "1s"}
        config["rule_files"] = [str(CONFIG.parent / name) for name in config["rule_files"]]
        for job in config["scrape_configs"]:
            job.pop("dns_sd_configs", None)
            job["static_configs"] = [{"targets": [targets[job["job_name"]]]}]
            if "authorization" in job:
                (folder / "token").write_text(token)
                job["authorization"]["credentials_file"] = str(folder / "token")
        (folder / "prometheus.yml").write_text(yaml.safe_dump(config))
        port = free_port()
        self.base = f"http://127.0.0.1:{port}/api/v1"
        self.child = Child(
            [
                str(PROMETHEUS),
                f"--config.file={folder / 'prometheus.yml'}",
                f"--storage.tsdb.path={folder / 'data'}",
                f"--web.listen-address=127.0.0.1:{port}",
            ],
            env={"PATH": os.environ.get("PATH", "")},
            cwd=folder,
        )

    def get(self, path: str) -> list | dict:
        try:
            answer = get_json(self.base + path)
        except OSError:
            self.child.alive()
            return {}
        assert answer["status"] == "success", answer
        return answer["data"]

    def targets(self) -> dict[str, str]:
        """{scrape job: health} of the active targets."""
        data = self.get("/targets")
        return {target["labels"]["job"]: target["health"] for target in data.get("activeTargets", [])}

    def alerts(self) -> list[dict]:
        """The alerts pending or firing now."""
        return self.get("/alerts").get("alerts", [])

    def evaluations(self) -> str:
        """When the rule group was last evaluated (changes once per evaluation round)."""
        groups = self.get("/rules").get("groups", [])
        return groups[0]["lastEvaluation"] if groups else ""

    def value(self, query: str) -> float | None:
        result = self.get("/query?query=" + urllib.request.quote(query)).get("result", [])
        return float(result[0]["value"][1]) if result else None


@pytest.fixture
def prometheus_env(subprocess_env):
    """The processes' environment: a short lease, so that a silent relay is stale within 15 s."""
    return {
        **subprocess_env,
        "SCHEDULER_JOB_MODULES": "tests.jobs.sample_jobs",
        "SCHEDULER_LEASE_SECONDS": "15",
        "HEALTH_HEARTBEAT_MAX_AGE_SECONDS": "15",
        "METRICS_ADDRESS": "127.0.0.1",
    }


@pytest.mark.slow
def test_a_real_prometheus_scrapes_every_process_and_raises_only_the_alerts_that_are_due(prometheus_env, tmp_path):
    PeriodicTask.objects.all().delete()  # the seed jobs' events would have no queue: unroutable
    scraper = User.objects.create_user("prometheus", is_staff=True)
    _, token = ApiToken.objects.issue(scraper, name="prometheus", read_only=True, expires_days=None, now=timezone.now())
    User.objects.create_superuser("operator", password=PASSWORD)
    make_definition("NightlyReportJob", "test.fail", cron="0 3 1 1 *", max_retries=0)
    web_port, scheduler_port, relay_port = free_port(), free_port(), free_port()
    children = {
        "web": Child(
            [
                str(Path(sys.executable).parent / "gunicorn"),
                "--config",
                "deploy/gunicorn.conf.py",
                "bookworm_scheduler.wsgi",
                "--bind",
                f"127.0.0.1:{web_port}",
                "--workers",
                "1",
            ],
            prometheus_env,
            cwd=settings.BASE_DIR,
        ),
        "scheduler": Child(
            [*MANAGE, "runscheduler", "--instance-id", "scheduler-1"],
            {**prometheus_env, "SCHEDULER_METRICS_PORT": str(scheduler_port)},
        ),
        "relay": Child([*MANAGE, "relay_outbox"], {**prometheus_env, "RELAY_METRICS_PORT": str(relay_port)}),
    }
    prometheus = Prometheus(
        tmp_path,
        {
            "web": f"127.0.0.1:{web_port}",
            "scheduler": f"127.0.0.1:{scheduler_port}",
            "relay": f"127.0.0.1:{relay_port}",
        },
        token,
    )
    try:
        # Every target is up, and the web app sees one live scheduler and one live relay.
        wait_for(lambda: prometheus.targets() == {"web": "up", "scheduler": "up", "relay": "up"}, timeout=60)
        for name, child in children.items():
            assert child.alive(), name
        wait_for(lambda: prometheus.value('bookworm_scheduler_instances{state="live"}') == 1, timeout=30)
        wait_for(lambda: prometheus.value('bookworm_outbox_relays{state="live"}') == 1, timeout=30)

        # Healthy and idle: no alert pending or firing for three evaluation rounds and more.
        rounds, seen = set(), []
        first = prometheus.evaluations()
        wait_for(lambda: prometheus.evaluations() != first, timeout=10)  # a round over the processes as they are

        def quiet_rounds() -> bool:
            seen.extend(prometheus.alerts())
            rounds.add(prometheus.evaluations())
            return len(rounds) >= 4

        wait_for(quiet_rounds, timeout=30, interval=0.2)
        logger.info("alerts of an idle deployment: %s", json.dumps(seen))
        assert seen == []
        rules = prometheus.get("/rules")["groups"][0]["rules"]
        assert {rule["name"]: rule["health"] for rule in rules if rule["health"] != "ok"} == {}

        # A job that fails for good: BookwormJobFailed fires, naming it.
        credentials = base64.b64encode(f"operator:{PASSWORD}".encode()).decode()
        request = urllib.request.Request(
            f"http://127.0.0.1:{web_port}/tickerq/api/jobs/NightlyReportJob/trigger",
            method="POST",
            headers={"Authorization": f"Basic {credentials}", "Content-Type": "application/json"},
        )
        with urllib.request.urlopen(request, timeout=10) as response:
            assert response.status == 201

        def failed_alert() -> dict | None:
            return next(
                (alert for alert in prometheus.alerts() if alert["labels"]["alertname"] == "BookwormJobFailed"), None
            )

        alert = wait_for(failed_alert, timeout=30, interval=0.2)
        logger.info("alerts after a job failed for good: %s", json.dumps(prometheus.alerts()))
        assert (alert["state"], alert["labels"]) == (
            "firing",
            {"alertname": "BookwormJobFailed", "job_name": "NightlyReportJob", "severity": "warning"},
        )
        assert alert["annotations"]["summary"] == "Job NightlyReportJob failed"
        assert {alert["labels"]["alertname"] for alert in prometheus.alerts()} == {"BookwormJobFailed"}

        # The only relay killed: a relay alert goes pending once its heartbeat is 15 s old.
        children["relay"].stop(signal.SIGKILL)

        def relay_alerts() -> dict[str, str]:
            names = {"BookwormRelayDown", "BookwormRelayStale"}
            return {
                a["labels"]["alertname"]: a["state"] for a in prometheus.alerts() if a["labels"]["alertname"] in names
            }

        pending = wait_for(relay_alerts, timeout=60, interval=0.5)
        logger.info("alerts after the relay was killed: %s", json.dumps(prometheus.alerts()))
        assert set(pending.values()) == {"pending"}
        assert prometheus.targets()["relay"] == "down"
    finally:
        prometheus.child.stop()
        for child in children.values():
            child.stop()


@pytest.mark.unit
def test_the_readme_shows_the_scrape_configuration_this_test_runs():
    readme = (Path(settings.BASE_DIR) / "README.md").read_text()
    [block] = [block for block in readme.split("```yaml\n")[1:] if block.startswith("scrape_configs:")]

    shown = yaml.safe_load(block.split("```")[0])
    assert shown["scrape_configs"] == yaml.safe_load(CONFIG.read_text())["scrape_configs"]
