"""Prometheus: /metrics from the database behind the dashboard's login, the daemons' own metrics, the alert rules."""

import base64
import os
import re
import shutil
import signal
import socket
import subprocess
import sys
import urllib.request
import uuid
from datetime import timedelta
from pathlib import Path

import pytest
import yaml
from django.conf import settings
from django.contrib.auth.models import User
from django.core.cache import cache
from django.db import DatabaseError, transaction
from django.utils import timezone
from prometheus_client import CollectorRegistry, generate_latest
from prometheus_client.parser import text_string_to_metric_families

from bookworm_scheduler import metrics
from bookworm_scheduler.kernel import daemon_metrics
from jobs.engine import scheduler_metrics, store
from jobs.models import ApiToken, Occurrence, SchedulerInstance
from outbox import relay_metrics
from outbox.models import OutboxMessage, RelayInstance
from outbox.publishing import publish
from tests.jobs import sample_jobs  # noqa: F401  (registers the sample jobs)
from tests.jobs.helpers import make_definition, make_scheduler, wait_for
from tests.outbox.helpers import Rabbit, build_relay, make_event_type

ALERTS = Path(settings.BASE_DIR) / "deploy" / "prometheus" / "alerts.yml"
MANAGE = [sys.executable, str(Path(settings.BASE_DIR) / "manage.py")]
PASSWORD = "a-long-password"


@pytest.fixture(autouse=True)
def fresh_cache():
    cache.clear()  # remembered Basic logins
    yield
    cache.clear()


@pytest.fixture
def staff():
    return User.objects.create_user("monitor", password=PASSWORD, is_staff=True)


def basic(username, password=PASSWORD):
    return {"HTTP_AUTHORIZATION": "Basic " + base64.b64encode(f"{username}:{password}".encode()).decode()}


def samples(text: str) -> dict:
    """{(name, sorted labels): value} of an exposition."""
    return {
        (sample.name, tuple(sorted(sample.labels.items()))): sample.value
        for family in text_string_to_metric_families(text)
        for sample in family.samples
    }


def scrape(client, staff) -> dict:
    response = client.get("/metrics", **basic(staff.username))
    assert response.status_code == 200, response.content
    return samples(response.content.decode())


def sample_value(name, **labels) -> float:
    """A daemon's sample: the scheduler's for bookworm_job_*, the relay's for bookworm_outbox_*."""
    registry = relay_metrics.REGISTRY if name.startswith("bookworm_outbox_") else scheduler_metrics.REGISTRY
    return registry.get_sample_value(name, labels) or 0.0


# The web app's /metrics.


@pytest.mark.django_db
def test_metrics_answer_an_anonymous_client_with_a_basic_challenge(client):
    response = client.get("/metrics")

    assert response.status_code == 401
    assert response["WWW-Authenticate"] == 'Basic realm="BookWorm Scheduler", charset="UTF-8"'


@pytest.mark.django_db
def test_metrics_refuse_wrong_credentials_and_users_who_are_not_staff(client, staff):
    User.objects.create_user("reader", password=PASSWORD)

    assert client.get("/metrics", **basic("monitor", "wrong")).status_code == 401
    assert client.get("/metrics", **basic("reader")).status_code == 403


@pytest.mark.django_db
def test_metrics_serve_staff_with_basic_credentials_or_a_session(client, staff):
    response = client.get("/metrics", **basic("monitor"))

    assert response.status_code == 200
    assert response["Content-Type"].startswith("text/plain; version=")
    assert "bookworm_database_up 1.0" in response.content.decode()
    other = type(client)()
    other.force_login(staff)
    assert other.get("/metrics").status_code == 200


@pytest.mark.django_db
def test_metrics_serve_a_staff_users_api_token_read_only_or_not_and_refuse_a_revoked_one(client, staff):
    now = timezone.now()
    row, token = ApiToken.objects.issue(staff, name="prometheus", read_only=True, expires_days=None, now=now)
    response = client.get("/metrics", HTTP_AUTHORIZATION=f"Bearer {token}")
    assert response.status_code == 200 and "bookworm_database_up 1.0" in response.content.decode()
    row.revoked_at = now
    row.save()
    refused = client.get("/metrics", HTTP_AUTHORIZATION=f"Bearer {token}")
    assert (refused.status_code, refused["WWW-Authenticate"]) == (401, 'Bearer realm="BookWorm Scheduler"')
    assert client.get("/metrics", HTTP_AUTHORIZATION="Bearer bws_000000000000_unknown").status_code == 401


@pytest.mark.django_db
def test_metrics_count_runs_of_the_last_hour_by_job_and_status(client, staff, no_seed):
    task = make_definition("nightly", every=3600)
    now = timezone.now()

    def occurrence(status, finished_ago=None, **fields):
        at = now - timedelta(hours=3)
        Occurrence.objects.create(
            task=task,
            job_name="nightly",
            scheduled_for=at,
            run_after=at,
            manual=True,
            status=status,
            finished_at=now - finished_ago if finished_ago is not None else None,
            **fields,
        )

    occurrence("succeeded", timedelta(minutes=5))
    occurrence("succeeded", timedelta(minutes=50))
    occurrence("failed", timedelta(minutes=10))
    occurrence("succeeded", timedelta(minutes=70))  # before the window
    occurrence("scheduled")
    occurrence("running", session=uuid.uuid4(), lease_expires_at=now + timedelta(minutes=1))

    values = scrape(client, staff)

    assert values[("bookworm_job_runs_last_hour", (("job_name", "nightly"), ("status", "succeeded")))] == 2
    assert values[("bookworm_job_runs_last_hour", (("job_name", "nightly"), ("status", "failed")))] == 1
    assert values[("bookworm_job_occurrences", (("job_name", "nightly"), ("status", "scheduled")))] == 1
    assert values[("bookworm_job_occurrences", (("job_name", "nightly"), ("status", "running")))] == 1


@pytest.mark.django_db
def test_metrics_count_live_and_stale_schedulers_and_relays(client, staff, settings):
    settings.SCHEDULER_LEASE_SECONDS = 30
    now = timezone.now()
    for name, seen in [("fresh", now), ("silent", now - timedelta(seconds=25)), ("gone", now - timedelta(hours=1))]:
        SchedulerInstance.objects.create(instance_id=name, host="h", pid=1, version="1", started_at=now, last_seen=seen)
    SchedulerInstance.objects.filter(instance_id="gone").update(state="lost")
    for seen in (now, now - timedelta(seconds=90)):
        RelayInstance.objects.create(instance_id="relay", host="h", pid=1, version="1", started_at=now, last_seen=seen)

    values = scrape(client, staff)

    # SCHEDULER_LEASE_SECONDS is 30: silent for two heartbeats (20 s) is stale.
    assert values[("bookworm_scheduler_instances", (("state", "live"),))] == 1
    assert values[("bookworm_scheduler_instances", (("state", "stale"),))] == 1
    assert values[("bookworm_outbox_relays", (("state", "live"),))] == 1
    assert values[("bookworm_outbox_relays", (("state", "stale"),))] == 1


@pytest.mark.django_db
def test_metrics_count_outbox_rows_by_status_and_the_age_of_the_oldest_pending_one(client, staff):
    event_type = make_event_type()
    with transaction.atomic():
        rows = [publish(event_type()) for _ in range(6)]
    now = timezone.now()
    OutboxMessage.objects.filter(id=rows[0].id).update(created_at=now - timedelta(minutes=10))
    OutboxMessage.objects.filter(id=rows[1].id).update(status="dead")
    OutboxMessage.objects.filter(id=rows[2].id).update(status="delivered", delivered_at=now)

    values = scrape(client, staff)

    assert values[("bookworm_outbox_messages", (("status", "pending"),))] == 4
    assert values[("bookworm_outbox_messages", (("status", "dead"),))] == 1
    assert values[("bookworm_outbox_messages", (("status", "unroutable"),))] == 0
    assert 600 <= values[("bookworm_outbox_oldest_pending_age_seconds", ())] < 3600


@pytest.mark.django_db
def test_metrics_say_when_the_database_cannot_be_read(client, staff, monkeypatch):
    def unreadable(self, now):
        raise DatabaseError("the database is gone")

    client.get("/metrics", **basic("monitor"))  # logs in while the database answers
    monkeypatch.setattr(metrics.DatabaseCollector, "families", unreadable)

    values = scrape(client, staff)

    assert values == {("bookworm_database_up", ()): 0}


@pytest.fixture
def no_seed(db):
    from django_celery_beat.models import PeriodicTask

    PeriodicTask.objects.all().delete()


# The daemons' own metrics.


@pytest.mark.django_db(transaction=True)
def test_a_scheduler_counts_its_runs_by_outcome_and_times_them(clock, no_seed):
    before = {
        status: sample_value("bookworm_job_runs_finished_total", job_name="counted", status=status)
        for status in ("succeeded", "failed")
    }
    started = sample_value("bookworm_job_runs_started_total", job_name="counted")
    durations = sample_value("bookworm_job_run_duration_seconds_count", task="test.publish")
    lags = sample_value("bookworm_job_fire_lag_seconds_count")
    good = make_definition("counted", every=60)
    store.trigger(good, now=clock.now, priority=1)
    scheduler = make_scheduler(clock)
    scheduler.planner.refresh()
    scheduler.run_ready(clock.now)
    store.trigger(good, now=clock.now, priority=1)
    scheduler.run_ready(clock.now)

    assert sample_value("bookworm_job_runs_started_total", job_name="counted") - started == 2
    assert (
        sample_value("bookworm_job_runs_finished_total", job_name="counted", status="succeeded") - before["succeeded"]
        == 2
    )
    assert sample_value("bookworm_job_run_duration_seconds_count", task="test.publish") - durations == 2
    assert sample_value("bookworm_job_fire_lag_seconds_count") - lags == 2


@pytest.mark.django_db(transaction=True)
def test_a_retried_attempt_and_a_final_failure_are_told_apart(clock, no_seed):
    task = make_definition("flaky-metrics", "test.fail", every=3600, max_retries=1)
    before = {
        status: sample_value("bookworm_job_runs_finished_total", job_name="flaky-metrics", status=status)
        for status in ("retry_scheduled", "failed")
    }
    lags = sample_value("bookworm_job_fire_lag_seconds_count")
    store.trigger(task, now=clock.now, priority=1)
    scheduler = make_scheduler(clock)
    scheduler.planner.refresh()
    scheduler.run_ready(clock.now)
    scheduler.run_ready(clock.now)

    for status in ("retry_scheduled", "failed"):
        assert (
            sample_value("bookworm_job_runs_finished_total", job_name="flaky-metrics", status=status) - before[status]
            == 1
        )
    assert sample_value("bookworm_job_fire_lag_seconds_count") - lags == 1  # the first attempt only


@pytest.mark.django_db(transaction=True)
def test_a_relay_counts_published_confirmed_and_returned_messages_and_their_latency(monkeypatch):
    monkeypatch.setattr(relay_metrics, "measure_latency", True)
    rabbit, relay = Rabbit(), build_relay()
    routed, unbound = make_event_type(), make_event_type()
    rabbit.exchanges += [routed.exchange(), unbound.exchange()]
    rabbit.bind_queue(routed.exchange())
    names = [
        "bookworm_outbox_messages_published_total",
        "bookworm_outbox_messages_confirmed_total",
        "bookworm_outbox_messages_returned_total",
        "bookworm_outbox_publish_latency_seconds_count",
    ]
    before = {name: sample_value(name) for name in names}
    with transaction.atomic():
        publish(routed())
        publish(routed())
        publish(unbound())
    relay.broker.connect()
    try:
        assert sample_value("bookworm_outbox_broker_connected") == 1
        assert relay.deliver_batch(relay.clock()) == 3
    finally:
        relay.broker.close()
        rabbit.close()

    assert {name: sample_value(name) - before[name] for name in names} == {
        "bookworm_outbox_messages_published_total": 3,
        "bookworm_outbox_messages_confirmed_total": 2,
        "bookworm_outbox_messages_returned_total": 1,
        "bookworm_outbox_publish_latency_seconds_count": 2,
    }
    assert sample_value("bookworm_outbox_broker_connected") == 0
    assert sample_value("bookworm_outbox_relay_last_batch_timestamp_seconds") > 0


def served_names(registry) -> set[str]:
    """The families a daemon's registry serves over HTTP."""
    server = daemon_metrics.serve(0, "127.0.0.1", registry)
    try:
        with urllib.request.urlopen(f"http://127.0.0.1:{server.server_address[1]}/metrics", timeout=10) as response:
            text = response.read().decode()
    finally:
        server.shutdown()
        server.server_close()
    return {family.name for family in text_string_to_metric_families(text)}


def test_each_daemon_serves_its_own_families_and_its_process_but_not_the_others():
    scheduler, relay = served_names(scheduler_metrics.REGISTRY), served_names(relay_metrics.REGISTRY)

    assert {"bookworm_job_runs_started", "bookworm_job_fire_lag_seconds", "bookworm_scheduler_pool_slots"} <= scheduler
    assert {"bookworm_outbox_messages_published", "bookworm_outbox_relay_last_batch_timestamp_seconds"} <= relay
    assert not {name for name in scheduler if name.startswith("bookworm_outbox_")}
    assert not {name for name in relay if name.startswith(("bookworm_job_", "bookworm_scheduler_"))}
    assert {"process_cpu_seconds", "process_resident_memory_bytes", "python_info"} <= scheduler & relay


@pytest.mark.parametrize(
    "command, variable", [("runscheduler", "SCHEDULER_METRICS_PORT"), ("relay_outbox", "RELAY_METRICS_PORT")]
)
def test_a_daemon_whose_metrics_port_is_taken_stops_with_one_line_naming_the_setting(command, variable):
    with socket.socket() as taken:
        taken.bind(("127.0.0.1", 0))
        taken.listen()
        port = taken.getsockname()[1]
        env = {**os.environ, "DEBUG": "1", variable: str(port), "METRICS_ADDRESS": "127.0.0.1"}
        result = subprocess.run([*MANAGE, command, "--once"], env=env, capture_output=True, text=True, timeout=60)

    assert result.returncode == 1
    assert result.stderr.strip().splitlines()[-1].startswith(f"CommandError: {variable}: cannot serve metrics:")


@pytest.mark.slow
def test_a_running_relay_serves_its_metrics(subprocess_env):
    with socket.socket() as probe:
        probe.bind(("127.0.0.1", 0))
        port = probe.getsockname()[1]
    env = {**subprocess_env, "RELAY_METRICS_PORT": str(port), "METRICS_ADDRESS": "127.0.0.1"}
    relay = subprocess.Popen([*MANAGE, "relay_outbox"], env=env, stdout=subprocess.PIPE, stderr=subprocess.PIPE)
    try:
        # Its last batch is stamped at start; the broker's gauge once it has connected.
        values = wait_for(lambda: connected(scrape_process(port)), timeout=30)
    finally:
        relay.send_signal(signal.SIGTERM)
        relay.communicate(timeout=30)

    assert values["bookworm_outbox_broker_connected"] == 1
    assert values["bookworm_outbox_relay_last_batch_timestamp_seconds"] > 0


def connected(values: dict | None) -> dict | None:
    """The relay's samples once it has connected to the broker; None before."""
    return values if values and values.get("bookworm_outbox_broker_connected") == 1 else None


def scrape_process(port: int) -> dict | None:
    """{sample name: value} of the unlabelled samples a process serves once it has done a pass; None before."""
    try:
        with urllib.request.urlopen(f"http://127.0.0.1:{port}/metrics", timeout=5) as response:
            text = response.read().decode()
    except OSError:
        return None
    values = {name: value for (name, labels), value in samples(text).items() if not labels}
    return values if values.get("bookworm_outbox_relay_last_batch_timestamp_seconds") else None


# The alert rules.


def limited_registry(root: Path) -> CollectorRegistry:
    """A registry whose cgroup collector reads cgroup v2 files with a memory limit and a CPU quota."""
    (root / "memory.max").write_text("1073741824\n")
    (root / "cpu.max").write_text("150000 100000\n")
    (root / "cpu.stat").write_text("usage_usec 900000\nnr_periods 10\nnr_throttled 4\nthrottled_usec 250000\n")
    registry = CollectorRegistry()
    registry.register(daemon_metrics.CgroupCollector(root))
    return registry


def exposed_names(text: str) -> set[str]:
    """Every series name an exposition can have: families, their samples, and a histogram's or counter's parts."""
    names = set()
    for family in text_string_to_metric_families(text):
        names.add(family.name)
        names.update(sample.name for sample in family.samples)
        suffixes = {"counter": ["_total"], "histogram": ["_bucket", "_count", "_sum"]}.get(family.type, [])
        names.update(family.name + suffix for suffix in suffixes)
    return names


@pytest.mark.django_db
def test_every_alert_rule_is_complete_and_uses_only_metrics_we_expose(client, staff, tmp_path):
    groups = yaml.safe_load(ALERTS.read_text())["groups"]
    rules = [rule for group in groups for rule in group["rules"]]
    exposed = exposed_names(client.get("/metrics", **basic("monitor")).content.decode())
    for registry in (scheduler_metrics.REGISTRY, relay_metrics.REGISTRY):
        exposed |= exposed_names(generate_latest(registry).decode())
    # The cgroup's series exist only under a limit, which this machine may not have.
    exposed |= exposed_names(generate_latest(limited_registry(tmp_path)).decode())

    assert {rule["alert"] for rule in rules} >= {
        "BookwormJobFailed",
        "BookwormJobFailureRateHigh",
        "BookwormSchedulerDown",
        "BookwormSchedulerStale",
        "BookwormRelayDown",
        "BookwormRelayStale",
        "BookwormOutboxGrowing",
        "BookwormSchedulerLagGrowing",
        "BookwormMemoryNearLimit",
        "BookwormCpuThrottled",
    }
    for rule in rules:
        assert set(rule) == {"alert", "expr", "for", "labels", "annotations"}, rule["alert"]
        assert rule["labels"]["severity"] in ("warning", "critical"), rule["alert"]
        assert {"summary", "description"} <= set(rule["annotations"]), rule["alert"]
        used = set(re.findall(r"\b(?:bookworm|process)_[a-z_]+", rule["expr"]))
        assert used and used <= exposed, (rule["alert"], used - exposed)


def test_the_alert_rules_pass_promtool_and_its_unit_tests():
    promtool = shutil.which("promtool", path=f"{Path(sys.executable).parent}{os.pathsep}{os.environ.get('PATH', '')}")
    assert promtool is not None, "promtool is missing: `make test` unpacks it from Debian's prometheus package"
    for command in (["check", "rules", ALERTS.name], ["test", "rules", ALERTS.with_suffix(".test.yml").name]):
        result = subprocess.run([promtool, *command], cwd=ALERTS.parent, capture_output=True, text=True, timeout=60)
        assert result.returncode == 0, result.stdout + result.stderr
