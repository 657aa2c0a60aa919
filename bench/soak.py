"""Soak test: the real service under faults, checked from the database and a consumer's record.

    make soak                                   # 600 s inline, then 120 s with Celery workers
    make soak SOAK_SECONDS=120 SOAK_CELERY_SECONDS=60   # make test's run
    # or: DATABASE_URL=postgres://postgres@127.0.0.1:5432/bookworm_scheduler \
    #     RABBITMQ_URL=amqp://guest:guest@127.0.0.1:5672/%2F \
    #     .venv/bin/python bench/soak.py --seconds 120 --seed 1 [--report docs/soak-report.json]

On this machine, against the local PostgreSQL and RabbitMQ, in a database of its own
(`<name>_soak`) and a RabbitMQ vhost of its own (`bookworm_soak_<pid>`), it starts three
`manage.py runscheduler` (inline executor; one with its wall clock a minute fast under
libfaketime), two `manage.py relay_outbox`, and a consumer bound as BookWorm's Notification
service binds (queue-named fanout exchange bound to each event's exchange, durable queue),
which records every message it receives. A few hundred definitions (interval schedules down
to every second, cron down to every minute; jobs in bench/soak_jobs.py that fail by a known
rule or run longer than their interval, all publishing through the outbox) run while a fault
injector, at moments drawn from --seed, SIGKILLs and restarts schedulers and relays, pauses a
scheduler past its lease (SIGSTOP/SIGCONT), stops and starts RabbitMQ's app, restarts
PostgreSQL, and (through the admin's code paths: model save()) disables, edits and re-enables
definitions, while manual runs are asked for through jobs.engine.definitions.run_now, and a client
schedules one-off runs with jobs.schedule in transactions of its own (committed or rolled back on
purpose; with payloads, repeated keys, future instants, short expiries and follow-ups:
bench/soak_oneoff.py).

Then it stops injecting, lets the system settle, stops everything and checks, computing the
due instants itself from each definition's schedule and the pauses it made (see
docs/reliability.md for what each check means). It prints a report, writes it as JSON
(--report) and exits 1 when anything was lost, duplicated, stuck or otherwise wrong.

Every process it starts, it stops; every fault it injects, it undoes, even when interrupted
(SIGINT, SIGTERM): paused processes are continued, RabbitMQ's app and PostgreSQL are started
if they were stopped, and the database and the vhost are dropped (the logs stay in --logs).
"""

import argparse
import glob
import json
import os
import platform
import random
import signal
import subprocess
import sys
import tempfile
import threading
import time
from collections import Counter, defaultdict
from datetime import UTC, datetime, timedelta
from pathlib import Path
from urllib.parse import quote, urlsplit, urlunsplit
from zoneinfo import ZoneInfo

ROOT = Path(__file__).resolve().parent.parent
sys.path.insert(0, str(ROOT))
os.environ.setdefault("DJANGO_SETTINGS_MODULE", "bookworm_scheduler.settings")
os.environ.setdefault("DEBUG", "0")  # production settings, as the service runs
os.environ.setdefault("SECRET_KEY", "soak-only")
os.environ.setdefault("LOG_LEVEL", "WARNING")
os.environ["SCHEDULER_JOB_MODULES"] = "bench.soak_jobs"

from bench.database import BenchDatabase  # noqa: E402
from bench.soak_oneoff import ONEOFF_POLICY, OneOffClient  # noqa: E402
from bench.soak_oneoff import check as check_oneoff  # noqa: E402

DATABASE = BenchDatabase("_soak")
DATABASE.use()
VHOST = f"bookworm_soak_{os.getpid()}"
_broker = urlsplit(os.environ.get("RABBITMQ_URL", "amqp://guest:guest@127.0.0.1:5672/%2F"))
RABBITMQ_URL = urlunsplit(_broker._replace(path="/" + quote(VHOST, safe="")))
os.environ["RABBITMQ_URL"] = RABBITMQ_URL

import django  # noqa: E402
import pika  # noqa: E402
import psycopg  # noqa: E402

MANAGE = [sys.executable, str(ROOT / "manage.py")]
LIBFAKETIME = ("/usr/lib/*/faketime/libfaketime.so.1", "/usr/lib/faketime/libfaketime.so.1")
PG_VERSION = sorted(os.listdir("/etc/postgresql"))[0] if os.path.isdir("/etc/postgresql") else ""
LEASE_SECONDS = 6
# A first attempt outside faults (Soak.fault_windows) that starts later than this after its instant fails the run.
LATE_OUTSIDE_FAULTS_SECONDS = 0.5
GRACE_SECONDS = 60
HEALTHY_LAG_SECONDS = 3  # a ready occurrence older than this, or a pending message: not recovered yet
FAST_CLOCK = "+60s"

# The Notification service's endpoints (docs: shared/reference/bookworm-wire-contract.md).
BINDINGS = {
    "notification-clean-up-sent-email": "BookWorm.Contracts:CleanUpSentEmailIntegrationEvent",
    "notification-resend-error-email": "BookWorm.Contracts:ResendErrorEmailIntegrationEvent",
}
BASE_EXCHANGE = "BookWorm.Chassis.EventBus:IntegrationEvent"


class Interrupted(Exception):
    """SIGINT or SIGTERM: stop, undo, clean up."""


def log(message: str) -> None:
    print(f"[soak {time.strftime('%H:%M:%S')}] {message}", flush=True)


def run(args, timeout=180, check=True) -> subprocess.CompletedProcess:
    return subprocess.run(args, capture_output=True, text=True, timeout=timeout, check=check)


def pg_ready() -> bool:
    return run(["pg_isready", "-q", "-h", "127.0.0.1", "-p", "5432"], check=False).returncode == 0


def wait_until(predicate, timeout: float, interval: float = 0.5):
    deadline = time.monotonic() + timeout
    while time.monotonic() < deadline:
        value = predicate()
        if value:
            return value
        time.sleep(interval)
    return None


# --------------------------------------------------------------------------------------------
# Processes


class Service:
    """One process of the service, restartable; output appended to its log file."""

    def __init__(self, name: str, args: list[str], env: dict, logs: Path):
        self.name, self.args, self.env = name, args, env
        self.log_path = logs / f"{name}.log"
        self.process: subprocess.Popen | None = None
        self.paused = False
        self.starts = 0

    def start(self) -> None:
        output = open(self.log_path, "a")  # noqa: SIM115 (the child holds it)
        output.write(f"--- start {self.starts + 1} at {datetime.now(UTC).isoformat()}\n")
        output.flush()
        # A session of its own: a Ctrl-C on make reaches the soak, which stops its children itself.
        self.process = subprocess.Popen(
            self.args, env=self.env, stdout=output, stderr=subprocess.STDOUT, start_new_session=True
        )
        output.close()
        self.starts += 1

    def alive(self) -> bool:
        return self.process is not None and self.process.poll() is None

    def kill(self) -> None:
        """SIGKILL to its process group: a Celery worker's pool processes go with it."""
        if self.alive():
            self.resume()
            self._signal_group(signal.SIGKILL)
        if self.process is not None:
            self.process.wait(30)
            self._signal_group(signal.SIGKILL)

    def _signal_group(self, signum) -> None:
        try:
            os.killpg(self.process.pid, signum)
        except ProcessLookupError:
            pass

    def pause(self) -> None:
        if self.alive():
            self.process.send_signal(signal.SIGSTOP)
            self.paused = True

    def resume(self) -> None:
        if self.paused and self.alive():
            self.process.send_signal(signal.SIGCONT)
        self.paused = False

    def stop(self, timeout: float = 45) -> int | None:
        """SIGTERM, then SIGKILL after timeout; the exit code (None if it had to be killed)."""
        if not self.alive():
            return self.process.returncode if self.process else None
        self.resume()
        self.process.send_signal(signal.SIGTERM)
        try:
            code = self.process.wait(timeout)
        except subprocess.TimeoutExpired:
            self.kill()
            return None
        self._signal_group(signal.SIGKILL)  # a worker's pool process left behind, if any
        return code


# --------------------------------------------------------------------------------------------
# The consumer


class Consumer(threading.Thread):
    """Binds as the Notification service does and records every message; reconnects after outages."""

    def __init__(self, record_path: Path):
        super().__init__(name="consumer", daemon=True)
        self.received: list[dict] = []
        self.invalid: list[str] = []
        self.depth = None  # messages left in the queues, as last seen
        self.connected_at = 0.0
        self.reconnects = 0
        self.stopping = threading.Event()
        self.lock = threading.Lock()
        self.record = open(record_path, "a")  # noqa: SIM115
        self.ready = threading.Event()

    def declare(self, channel) -> None:
        for queue, exchange in BINDINGS.items():
            channel.exchange_declare(exchange, exchange_type="fanout", durable=True)
            channel.exchange_declare(BASE_EXCHANGE, exchange_type="fanout", durable=True)
            channel.exchange_bind(destination=BASE_EXCHANGE, source=exchange)
            channel.exchange_declare(queue, exchange_type="fanout", durable=True)
            channel.queue_declare(queue, durable=True)
            channel.exchange_bind(destination=queue, source=exchange)
            channel.queue_bind(queue, queue)

    def on_message(self, channel, method, properties, body, queue: str) -> None:
        now = time.time()
        try:
            envelope = json.loads(body)
        except ValueError:
            envelope = {}
        message_id = envelope.get("messageId")
        urn = "urn:message:" + BINDINGS[queue]
        problems = []
        if not message_id:
            problems.append("no messageId")
        if properties.message_id != message_id:
            problems.append(f"AMQP message_id {properties.message_id} != envelope messageId {message_id}")
        if urn.lower() not in [t.lower() for t in envelope.get("messageType", [])]:
            problems.append(f"messageType lacks {urn}")
        if properties.content_type != "application/vnd.masstransit+json":
            problems.append(f"content type {properties.content_type}")
        headers = envelope.get("headers") or {}
        entry = {
            "messageId": message_id,
            "queue": queue,
            "received": now,
            "redelivered": bool(method.redelivered),
            "occurrence": headers.get("soakOccurrence"),
            "attempt": headers.get("soakAttempt"),
        }
        if "soakPayload" in headers:  # a one-off run's (bench/soak_jobs.soak_oneoff)
            entry.update(
                payload=headers["soakPayload"], parent=headers["soakParent"], parentStatus=headers["soakParentStatus"]
            )
        with self.lock:
            self.received.append(entry)
            if problems:
                self.invalid.append(f"{message_id}: {'; '.join(problems)}")
        self.record.write(json.dumps(entry) + "\n")
        channel.basic_ack(method.delivery_tag)  # after recording: a lost ack means a redelivery, not a loss

    def run(self) -> None:
        parameters = pika.URLParameters(RABBITMQ_URL)
        parameters.heartbeat = 10
        parameters.blocked_connection_timeout = 30
        while not self.stopping.is_set():
            try:
                connection = pika.BlockingConnection(parameters)
                channel = connection.channel()
                self.declare(channel)
                channel.basic_qos(prefetch_count=20)
                for queue in BINDINGS:
                    channel.basic_consume(
                        queue, lambda ch, m, p, b, q=queue: self.on_message(ch, m, p, b, q), auto_ack=False
                    )
                self.connected_at = time.time()
                self.ready.set()
                last_depth = 0.0
                while not self.stopping.is_set():
                    connection.process_data_events(time_limit=0.2)
                    if time.monotonic() - last_depth > 1:
                        self.depth = sum(channel.queue_declare(q, passive=True).method.message_count for q in BINDINGS)
                        last_depth = time.monotonic()
                connection.close()
            except (pika.exceptions.AMQPError, OSError, ValueError):
                self.reconnects += 1
                self.depth = None
                self.stopping.wait(1)

    def snapshot(self) -> list[dict]:
        with self.lock:
            return list(self.received)


# --------------------------------------------------------------------------------------------
# Health sampling and recovery


class Monitor(threading.Thread):
    """Samples the database twice a second: overdue ready occurrences, unreaped leases, outbox age."""

    SQL = f"""
        SELECT extract(epoch FROM clock_timestamp()),
          (SELECT count(*) FROM jobs_occurrence
            WHERE status = 'scheduled' AND run_after < clock_timestamp() - interval '{HEALTHY_LAG_SECONDS} seconds'),
          (SELECT count(*) FROM jobs_occurrence WHERE status = 'running' AND lease_expires_at < clock_timestamp()),
          (SELECT coalesce(extract(epoch FROM clock_timestamp() - min(created_at)), 0)
             FROM outbox_outboxmessage WHERE status = 'pending')
    """

    def __init__(self, consumer: Consumer):
        super().__init__(name="monitor", daemon=True)
        self.consumer = consumer
        self.samples: list[tuple[float, bool]] = []
        self.probes: list[dict] = []  # recovery probes: fault, undone_at, stranded claims
        self.stopping = threading.Event()
        self.lock = threading.Lock()

    def probe(self, kind: str, started: float, undone: float, stranded: list[tuple[int, str]] = ()) -> None:
        with self.lock:
            self.probes.append(dict(kind=kind, started=started, undone=undone, stranded=list(stranded), recovered=None))

    def run(self) -> None:
        connection = None
        while not self.stopping.is_set():
            try:
                if connection is None or connection.closed:
                    connection = psycopg.connect(DATABASE.url, autocommit=True, connect_timeout=3)
                now, overdue, unreaped, pending_age = connection.execute(self.SQL).fetchone()
                healthy = overdue == 0 and unreaped == 0 and float(pending_age) < HEALTHY_LAG_SECONDS
                self.samples.append((float(now), healthy))
                with self.lock:
                    open_probes = [p for p in self.probes if p["recovered"] is None and p["undone"] <= float(now)]
                for probe in open_probes:
                    if not healthy:
                        continue
                    if probe["stranded"]:
                        ids = [i for i, _ in probe["stranded"]]
                        sessions = {str(s) for _, s in probe["stranded"]}
                        rows = connection.execute(
                            "SELECT session::text FROM jobs_occurrence WHERE id = ANY(%s) AND status = 'running'",
                            [ids],
                        ).fetchall()
                        if any(session in sessions for (session,) in rows):
                            continue
                    if probe["kind"] == "rabbitmq_stop" and self.consumer.connected_at < probe["started"]:
                        continue
                    probe["recovered"] = float(now)
            except psycopg.Error:
                connection = None
            self.stopping.wait(0.5)


# --------------------------------------------------------------------------------------------
# Schedules, computed here (not with the service's code) for the check


def cron_field_matches(field: str, value: int) -> bool:
    for part in field.split(","):
        step = 1
        if "/" in part:
            part, step = part.split("/")
            step = int(step)
        if part == "*":
            low, high = 0, 59
        elif "-" in part:
            low, high = map(int, part.split("-"))
        else:
            low = high = int(part)
        if low <= value <= high and (value - low) % step == 0:
            return True
    return False


def crontab_of(schedule: dict):
    """The CrontabSchedule row of a soak schedule {"cron": "m h dom mon dow", "zone": ...}."""
    from django_celery_beat.models import CrontabSchedule

    minute, hour, dom, month, dow = schedule["cron"].split()
    return CrontabSchedule.objects.get_or_create(
        minute=minute, hour=hour, day_of_month=dom, month_of_year=month, day_of_week=dow, timezone=schedule["zone"]
    )[0]


def schedule_instants(schedule: dict, after: datetime, until: datetime) -> list[datetime]:
    """Instants of schedule in (after, until]: an interval grid from the epoch, or a cron expression."""
    if after >= until:
        return []
    if schedule["kind"] == "interval":
        every = schedule["every"]
        first = (int(after.timestamp()) // every + 1) * every
        return [datetime.fromtimestamp(t, UTC) for t in range(first, int(until.timestamp()) + 1, every)]
    minute, hour, dom, month, dow = schedule["cron"].split()
    assert (dom, month, dow) == ("*", "*", "*"), "the soak's check knows minute and hour fields only"
    zone = ZoneInfo(schedule["zone"])
    instant = after.replace(second=0, microsecond=0) + timedelta(minutes=1)
    found = []
    while instant <= until:
        local = instant.astimezone(zone)
        if cron_field_matches(minute, local.minute) and cron_field_matches(hour, local.hour):
            found.append(instant)
        instant += timedelta(minutes=1)
    return found


# --------------------------------------------------------------------------------------------
# The soak


class Soak:
    def __init__(self, options):
        self.options = options
        self.seconds = options.seconds
        self.rng = random.Random(options.seed)
        self.logs = Path(options.logs or tempfile.mkdtemp(prefix=f"soak-{options.seed}-"))
        self.logs.mkdir(parents=True, exist_ok=True)
        self.schedulers: dict[str, Service] = {}
        self.relays: dict[str, Service] = {}
        self.workers: dict[str, Service] = {}
        self.rabbit_stopped = False
        self.postgres_down = False
        self.vhost_made = False
        self.database_made = False
        self.faults: list[dict] = []  # what was injected: kind, target, started, undone (epoch seconds)
        self.toggles: dict[int, list[dict]] = defaultdict(list)  # per definition: disable/edit/enable times
        self.manual: list[int] = []  # occurrences asked for with run_now
        self.definitions: dict[int, dict] = {}  # id -> name, job, schedule, created (cursor), policy
        self.stop_admin = threading.Event()
        self.admin_errors: list[str] = []
        self.clock_offset = None
        self.passed = False

    # ---- setup

    def setup(self) -> None:
        log(f"logs in {self.logs}")
        self.vhost_made = True  # before: an interrupted add_vhost may have made it
        run(["rabbitmqctl", "add_vhost", VHOST])
        run(["rabbitmqctl", "set_permissions", "-p", VHOST, _broker.username or "guest", ".*", ".*", ".*"])
        self.database_made = True
        DATABASE.recreate()
        django.setup()
        from django.core.management import call_command

        call_command("migrate", verbosity=0)
        self.create_definitions()
        self.consumer = Consumer(self.logs / "consumer.jsonl")
        self.consumer.start()
        if not self.consumer.ready.wait(30):
            raise RuntimeError("the consumer could not bind its queues")
        self.monitor = Monitor(self.consumer)
        self.monitor.start()

    def create_definitions(self) -> None:
        from django_celery_beat.models import IntervalSchedule, PeriodicTask

        from jobs.models import JobPolicy, PlanningCursor

        rng = random.Random(self.options.seed * 1000 + 7)
        plan = []  # (count, job, schedule, policy, kwargs)
        plan += [(10, "soak.publish", {"kind": "interval", "every": 1}, dict(max_retries=1), {})]
        plan += [(20, "soak.publish", {"kind": "interval", "every": 5}, dict(max_retries=1), {})]
        plan += [
            (
                30,
                "soak.flaky",
                {"kind": "interval", "every": 10},
                dict(max_retries=2, retry_intervals=[1, 2]),
                {"every": 4, "always_every": 13},
            )
        ]
        plan += [(4, "soak.slow", {"kind": "interval", "every": 2}, dict(max_retries=1), {"seconds": 3})]
        plan += [(4, "soak.slow", {"kind": "interval", "every": 3}, dict(max_retries=1, priority=3), {"seconds": 5})]
        plan += [(120, "soak.publish", {"kind": "cron", "cron": "* * * * *", "zone": "UTC"}, dict(max_retries=1), {})]
        plan += [
            (
                40,
                "soak.publish",
                {"kind": "cron", "cron": "*/2 * * * *", "zone": "Europe/Paris"},
                dict(max_retries=1),
                {},
            )
        ]
        plan += [
            (
                40,
                "soak.flaky",
                {"kind": "cron", "cron": "* * * * *", "zone": "Asia/Kolkata"},
                dict(max_retries=1, retry_intervals=[2]),
                {"every": 3, "always_every": 11},
            )
        ]
        misfires = ["run_once", "run_all", "skip"]
        for count, job, schedule, policy, kwargs in plan:
            for n in range(max(1, round(count * self.options.scale))):
                name = f"soak-{job.split('.')[1]}-{schedule.get('every') or schedule['cron'].replace(' ', '')}-{n}"
                if schedule["kind"] == "interval":
                    fields = {
                        "interval": IntervalSchedule.objects.get_or_create(every=schedule["every"], period="seconds")[0]
                    }
                else:
                    fields = {"crontab": crontab_of(schedule)}
                event = rng.choice(["clean", "resend"])
                task = PeriodicTask.objects.create(
                    name=name, task=job, kwargs=json.dumps({**kwargs, "event": event}), **fields
                )
                JobPolicy.objects.create(task=task, misfire_policy=rng.choice(misfires), **policy)
                rule = {key: kwargs[key] for key in ("every", "always_every") if key in kwargs}
                self.definitions[task.id] = dict(name=name, job=job, schedule=schedule, policy=policy, rule=rule)
        # The seed definitions that `migrate` created are checked too (their cron is hourly and daily).
        for task in PeriodicTask.objects.exclude(id__in=list(self.definitions)).select_related("crontab"):
            crontab = task.crontab
            cron = " ".join(
                [crontab.minute, crontab.hour, crontab.day_of_month, crontab.month_of_year, crontab.day_of_week]
            )
            self.definitions[task.id] = dict(
                name=task.name, job=task.task, schedule={"kind": "cron", "cron": cron, "zone": str(crontab.timezone)}
            )
        for task_id, planned_through in PlanningCursor.objects.values_list("task_id", "planned_through"):
            self.definitions[task_id]["created"] = planned_through
        log(f"{len(self.definitions)} definitions")

    def service_env(self, **extra) -> dict:
        return dict(
            os.environ,
            DATABASE_URL=DATABASE.url,
            RABBITMQ_URL=RABBITMQ_URL,
            LOG_FORMAT="json",
            LOG_LEVEL="INFO",
            DATABASE_CONN_MAX_AGE="600",
            SCHEDULER_EXECUTOR=self.options.executor,
            SCHEDULER_LEASE_SECONDS=str(LEASE_SECONDS),
            SCHEDULER_MISFIRE_GRACE_SECONDS=str(GRACE_SECONDS),
            SCHEDULER_CONCURRENCY="6",
            SCHEDULER_LONG_RUNNING_CONCURRENCY="3",
            SCHEDULER_SHUTDOWN_TIMEOUT_SECONDS="15",
            OUTBOX_POLL_SECONDS="0.5",
            OUTBOX_RETRY_MAX_SECONDS="8",
            OUTBOX_CONFIRM_TIMEOUT_SECONDS="10",
            **extra,
        )

    def fast_clock_env(self) -> dict:
        found = sorted(path for pattern in LIBFAKETIME for path in glob.glob(pattern))
        if not found:
            raise RuntimeError("libfaketime not found: make system-packages (Debian's faketime)")
        env = self.service_env(LD_PRELOAD=found[0], FAKETIME=FAST_CLOCK, FAKETIME_DONT_FAKE_MONOTONIC="1")
        probe = (
            "import os, time, psycopg\n"
            "with psycopg.connect(os.environ['DATABASE_URL']) as c:\n"
            "    (db,) = c.execute('SELECT extract(epoch FROM clock_timestamp())').fetchone()\n"
            "print(time.time() - float(db))\n"
        )
        result = subprocess.run([sys.executable, "-c", probe], env=env, capture_output=True, text=True, timeout=30)
        if result.returncode != 0:
            raise RuntimeError(f"a process under libfaketime cannot reach PostgreSQL: {result.stderr}")
        self.clock_offset = round(float(result.stdout), 1)
        if abs(self.clock_offset - 60) > 5:
            raise RuntimeError(f"libfaketime did not shift the clock by a minute: {self.clock_offset} s")
        return env

    def start_services(self) -> None:
        for name in ("scheduler-a", "scheduler-b"):
            args = [*MANAGE, "runscheduler", "--instance-id", name]
            self.schedulers[name] = Service(name, args, self.service_env(), self.logs)
        args = [*MANAGE, "runscheduler", "--instance-id", "scheduler-fast"]
        self.schedulers["scheduler-fast"] = Service("scheduler-fast", args, self.fast_clock_env(), self.logs)
        for name in ("relay-1", "relay-2"):
            self.relays[name] = Service(name, [*MANAGE, "relay_outbox"], self.service_env(), self.logs)
        if self.options.executor == "celery":
            for name in ("worker-1", "worker-2"):
                args = [sys.executable, "-m", "celery", "-A", "bookworm_scheduler", "worker", "--loglevel", "INFO"]
                args += ["-Q", "bookworm.jobs,bookworm.jobs.long", "--concurrency", "3", "--hostname", f"{name}@%h"]
                args += ["--without-gossip", "--without-mingle", "--without-heartbeat"]
                self.workers[name] = Service(name, args, self.service_env(), self.logs)
        for service in self.services():
            service.start()
        from jobs.models import SchedulerInstance

        if not wait_until(lambda: SchedulerInstance.objects.filter(state="running").count() >= 3, 60):
            raise RuntimeError(f"the schedulers did not start: see {self.logs}")
        for worker in self.workers.values():
            if not wait_until(lambda w=worker: " ready." in w.log_path.read_text(errors="replace"), 60):
                raise RuntimeError(f"{worker.name} did not start: see {worker.log_path}")
        workers = f", {len(self.workers)} Celery workers" if self.workers else ""
        log(f"3 schedulers (one a minute fast; executor {self.options.executor}){workers} and 2 relays running")

    def services(self) -> list[Service]:
        return [*self.schedulers.values(), *self.workers.values(), *self.relays.values()]

    # ---- database helpers that survive a PostgreSQL restart

    def db(self, function, timeout: float = 90):
        from django.db import InterfaceError, OperationalError, connection

        deadline = time.monotonic() + timeout
        while True:
            try:
                return function()
            except (OperationalError, InterfaceError):
                connection.close()
                if time.monotonic() > deadline:
                    raise
                time.sleep(0.5)

    def db_now(self) -> datetime:
        from django.db import connection

        def now():
            with connection.cursor() as cursor:
                cursor.execute("SELECT clock_timestamp()")
                return cursor.fetchone()[0]

        return self.db(now)

    # ---- the admin's code paths: manual runs, disable / edit / enable

    def admin_loop(self) -> None:
        from django.db import connection
        from django_celery_beat.models import IntervalSchedule, PeriodicTask

        from jobs.engine.definitions import run_now

        rng = random.Random(self.options.seed * 1000 + 11)
        ids = [i for i, d in self.definitions.items() if d["job"].startswith("soak.") and d["job"] != "soak.slow"]
        next_toggle = time.monotonic() + rng.uniform(5, 12)
        try:
            while not self.stop_admin.is_set():
                if time.monotonic() >= next_toggle:
                    task_id = rng.choice(ids)
                    self.toggle(task_id, rng, PeriodicTask, IntervalSchedule)
                    next_toggle = time.monotonic() + rng.uniform(4, 12)
                chosen = rng.choice(ids)
                occurrence = self.db(lambda chosen=chosen: run_now(PeriodicTask.objects.get(id=chosen), by="soak"))
                self.manual.append(occurrence.id)
                self.stop_admin.wait(rng.uniform(1, 3))
        except Exception as exc:  # reported, and the soak fails
            self.admin_errors.append(f"{type(exc).__name__}: {exc}")
        finally:
            connection.close()

    def toggle(self, task_id, rng, PeriodicTask, IntervalSchedule) -> None:
        """Disable (the admin's action: enabled=False, save), edit the schedule (save()), wait, enable."""
        definition = self.definitions[task_id]
        record = {"before": dict(definition["schedule"]), "disable": [self.db_now()]}

        def set_enabled(value):
            task = PeriodicTask.objects.get(id=task_id)
            task.enabled = value
            task.save(update_fields=["enabled"])

        self.db(lambda: set_enabled(False))
        record["disable"].append(self.db_now())
        schedule = dict(definition["schedule"])
        if rng.random() < 0.6:
            if schedule["kind"] == "interval":
                schedule["every"] = {1: 2, 2: 1, 5: 7, 7: 5, 10: 6, 6: 10}.get(schedule["every"], schedule["every"])
            else:
                schedule["cron"] = "*/2 * * * *" if schedule["cron"] == "* * * * *" else "* * * * *"

            def edit():
                task = PeriodicTask.objects.get(id=task_id)
                if schedule["kind"] == "interval":
                    task.interval = IntervalSchedule.objects.get_or_create(every=schedule["every"], period="seconds")[0]
                else:
                    task.crontab = crontab_of(schedule)
                task.save()

            self.db(edit)
            record["edit"] = schedule
        self.stop_admin.wait(rng.uniform(3, 25))
        record["enable"] = [self.db_now()]
        self.db(lambda: set_enabled(True))
        record["enable"].append(self.db_now())
        definition["schedule"] = schedule
        self.toggles[task_id].append(record)

    # ---- faults

    def fault_plan(self) -> list[tuple[float, str]]:
        """(seconds after the start, kind), drawn from the seed; at most one at a time."""
        d = self.seconds
        counts = {
            "kill_scheduler": max(1, d // 60),
            "kill_relay": max(1, d // 60),
            "pause_scheduler": max(1, d // 120),
            "pause_relay": max(1, d // 300),
            "rabbitmq_stop": max(1, d // 300),
            "postgres_restart": max(1, d // 300),
        }
        if self.options.executor == "celery":
            counts["kill_worker"] = max(1, d // 60)
        kinds = [kind for kind, count in counts.items() if kind not in self.options.without for _ in range(count)]
        self.rng.shuffle(kinds)
        # Evenly spread slots, each moved at random within its own: reproducible, and never overlapping.
        start, end = 10.0, max(20.0, d - 15.0)
        slot = (end - start) / len(kinds)
        return [(start + i * slot + self.rng.uniform(0, slot * 0.3), kind) for i, kind in enumerate(kinds)]

    def inject(self, kind: str) -> None:
        from jobs.models import Occurrence

        started = time.time()
        stranded = []
        if kind in ("kill_scheduler", "pause_scheduler"):
            name = self.rng.choice(sorted(self.schedulers))
            service = self.schedulers[name]
            if kind == "kill_scheduler":
                service.kill()
                stranded = self.db(
                    lambda: list(
                        Occurrence.objects.filter(status="running", scheduler=name).values_list("id", "session")
                    )
                )
                service.start()
            else:
                service.pause()
                stranded = self.db(
                    lambda: list(
                        Occurrence.objects.filter(status="running", scheduler=name).values_list("id", "session")
                    )
                )
                time.sleep(LEASE_SECONDS + 4)  # past its lease: another scheduler reaps its claims
                service.resume()
        elif kind in ("kill_relay", "pause_relay"):
            name = self.rng.choice(sorted(self.relays))
            service = self.relays[name]
            if kind == "kill_relay":
                service.kill()
                service.start()
            else:
                service.pause()
                time.sleep(LEASE_SECONDS + 4)
                service.resume()
        elif kind == "kill_worker":
            name = self.rng.choice(sorted(self.workers))
            self.workers[name].kill()
            self.workers[name].start()
        elif kind == "rabbitmq_stop":
            name = "rabbitmq"
            self.rabbit_stopped = True  # before: an interrupted stop_app may have stopped it
            run(["rabbitmqctl", "stop_app"])
            time.sleep(self.rng.uniform(5, 10))
            self.start_rabbit()
        elif kind == "postgres_restart":
            name = "postgresql"
            self.oneoff.before_outage()  # due and expiring while no scheduler can reach the database
            self.postgres_down = True
            run(["pg_ctlcluster", "--skip-systemctl-redirect", PG_VERSION, "main", "restart", "--", "-m", "fast"])
            wait_until(pg_ready, 60)
            self.postgres_down = not pg_ready()
        undone = time.time()
        self.faults.append(dict(kind=kind, target=name, started=started, undone=undone, stranded=len(stranded)))
        self.monitor.probe(kind, started, undone, stranded)
        log(
            f"fault {kind} on {name}: {undone - started:.1f} s"
            + (f", {len(stranded)} claims stranded" if stranded else "")
        )

    def start_rabbit(self) -> None:
        run(["rabbitmqctl", "start_app"])
        run(["rabbitmqctl", "await_startup", "--timeout", "120"])
        self.rabbit_stopped = False

    # ---- the run

    def soak(self) -> None:
        self.started = time.time()
        admin = threading.Thread(target=self.admin_loop, name="admin", daemon=True)
        admin.start()
        self.oneoff = OneOffClient(self, self.options.seed)
        self.oneoff.start()
        plan = self.fault_plan()
        log(f"soaking {self.seconds} s, seed {self.options.seed}: {len(plan)} faults planned")
        for at, kind in plan:
            delay = self.started + at - time.time()
            if delay > 0:
                time.sleep(delay)
            self.inject(kind)
            for service in self.services():
                if not service.alive():
                    raise RuntimeError(f"{service.name} exited by itself: see {service.log_path}")
        time.sleep(max(0.0, self.started + self.seconds - time.time()))
        self.stop_admin.set()
        self.oneoff.stopping.set()
        admin.join(60)
        self.oneoff.join(60)
        self.injection_ended = time.time()
        self.cutoff = self.db_now()
        log("faults stopped; settling")

    def settle(self) -> dict:
        from jobs.models import Occurrence
        from outbox.models import OutboxMessage

        begun = time.time()
        cutoff = self.cutoff

        def caught_up():
            late = Occurrence.objects.filter(status__in=["scheduled", "running"])
            return (
                not late.filter(scheduled_for__lte=cutoff).exists()
                and not late.filter(id__in=self.manual).exists()
                and not late.filter(task__isnull=True).exclude(job="").exists()  # one-off runs and follow-ups
            )

        wait_until(lambda: self.db(caught_up), 180)
        jobs_settled = time.time() - begun
        codes = {name: service.stop() for name, service in self.schedulers.items()}
        codes.update({name: service.stop() for name, service in self.workers.items()})

        def delivered():
            return not OutboxMessage.objects.filter(status="pending").exists()

        wait_until(lambda: self.db(delivered), 180)
        total = self.db(lambda: OutboxMessage.objects.filter(status="delivered").count())
        wait_until(
            lambda: self.consumer.depth == 0 and len({r["messageId"] for r in self.consumer.snapshot()}) >= total, 120
        )
        codes.update({name: service.stop() for name, service in self.relays.items()})
        time.sleep(1)
        self.consumer.stopping.set()
        self.consumer.join(10)
        self.monitor.stopping.set()
        self.monitor.join(10)
        log(f"settled in {time.time() - begun:.0f} s")
        return {
            "jobs_settled_seconds": round(jobs_settled, 1),
            "seconds": round(time.time() - begun, 1),
            "exit_codes": codes,
        }

    # ---- cleanup: always

    def cleanup(self) -> None:
        """Undo every fault and remove everything the soak made; each step even if another failed."""

        def step(what: str, action) -> None:
            try:
                action()
            except Exception as exc:  # keep cleaning up, and say what is left
                log(f"cleanup: could not {what}: {type(exc).__name__}: {exc}")

        self.stop_admin.set()
        if hasattr(self, "oneoff"):
            self.oneoff.stopping.set()
        for service in self.services():
            step(f"stop {service.name}", lambda s=service: s.stop(timeout=20))
        if self.rabbit_stopped:
            log("cleanup: starting RabbitMQ's app again")
            step("start RabbitMQ's app", self.start_rabbit)
        if self.postgres_down or not pg_ready():
            log("cleanup: starting PostgreSQL again")
            step(
                "start PostgreSQL",
                lambda: run(["pg_ctlcluster", "--skip-systemctl-redirect", PG_VERSION, "main", "start"], check=False),
            )
            wait_until(pg_ready, 60)
        for thread in ("consumer", "monitor"):
            if hasattr(self, thread):
                getattr(self, thread).stopping.set()
        if self.vhost_made:
            step(f"delete the vhost {VHOST}", lambda: run(["rabbitmqctl", "delete_vhost", VHOST]))
        if self.database_made and self.options.keep_database and not self.passed:
            log(f"cleanup: keeping the database {DATABASE.name} (--keep-database): drop it when done")
        elif self.database_made:
            step(f"drop the database {DATABASE.name}", DATABASE.drop)

    # ---- the checks

    def check(self, settle: dict) -> dict:
        from bench.soak_jobs import flaky_fails
        from jobs.models import Attempt, Occurrence
        from outbox.models import OutboxMessage

        problems: dict[str, list[str]] = defaultdict(list)
        cutoff = self.cutoff
        occurrences = list(
            Occurrence.objects.values(
                "id",
                "task_id",
                "job",
                "scheduled_for",
                "manual",
                "status",
                "attempts",
                "reason",
                "started_at",
                "finished_at",
            )
        )
        attempts = defaultdict(list)
        for attempt in Attempt.objects.order_by("number").values(
            "occurrence_id", "number", "status", "error", "started_at", "finished_at", "scheduler"
        ):
            attempts[attempt["occurrence_id"]].append(attempt)
        by_id = {o["id"]: o for o in occurrences}

        # 1. One row per (definition, instant); expected instants accounted for; none while disabled.
        rows = defaultdict(list)
        for o in occurrences:
            if not o["manual"]:
                rows[o["task_id"]].append(o)
        duplicated = 0
        due = ran = missed = skipped = 0
        unaccounted = 0
        for task_id, definition in self.definitions.items():
            instants = Counter(o["scheduled_for"] for o in rows[task_id])
            for instant, count in instants.items():
                if count > 1:
                    duplicated += count - 1
                    problems["duplicate occurrence rows"].append(f"{definition['name']} @ {instant.isoformat()}")
            expected, forbidden, fuzzy = self.expected_instants(task_id, definition, cutoff)
            mine = {o["scheduled_for"]: o for o in rows[task_id]}
            for instant in expected:
                due += 1
                o = mine.get(instant)
                if o is None:
                    unaccounted += 1
                    problems["due instants with no row (neither run nor recorded)"].append(
                        f"{definition['name']} (id {task_id}) @ {instant.isoformat()}; {self.evidence(task_id)}"
                    )
                elif o["status"] in ("succeeded", "failed"):
                    ran += 1
                elif o["status"] == "missed":
                    missed += 1
                elif o["status"] == "skipped":
                    skipped += 1
            for instant, o in mine.items():
                if instant > cutoff:
                    continue
                if any(low < instant <= high for low, high in forbidden):
                    problems["instants that fell while disabled but ran or were recorded"].append(
                        f"{definition['name']} @ {instant.isoformat()} ({o['status']})"
                    )
                elif instant not in expected and not any(low < instant <= high for low, high in fuzzy):
                    problems["rows at instants that were never due"].append(
                        f"{definition['name']} @ {instant.isoformat()} ({o['status']})"
                    )
                if o["status"] in ("missed", "skipped") and not o["reason"]:
                    problems["missed or skipped without a reason"].append(f"occurrence {o['id']}")
                if o["status"] == "missed" and not self.in_outage(instant):
                    problems["missed outside a total scheduler outage"].append(
                        f"occurrence {o['id']} {definition['name']} @ {instant.isoformat()}: {o['reason']}"
                    )
                if o["status"] == "skipped" and "disabled" not in o["reason"]:
                    problems["skipped for another reason than a disable"].append(f"occurrence {o['id']}: {o['reason']}")
        # 2. Nothing stuck: nothing running at all; nothing due before the cutoff still waiting.
        stuck = [o for o in occurrences if o["status"] == "running"]
        stuck += [
            o for o in occurrences if o["status"] == "scheduled" and (o["manual"] or o["scheduled_for"] <= cutoff)
        ]
        for o in stuck:
            problems["stuck occurrences"].append(f"occurrence {o['id']} {o['status']} since {o['scheduled_for']}")
        # 3. Manual runs: each ran once (or was skipped with a reason).
        manual_ran = sum(1 for i in self.manual if by_id.get(i, {}).get("status") in ("succeeded", "failed"))
        for i in self.manual:
            if i not in by_id:
                problems["manual runs with no row"].append(str(i))
        # 4. Attempts: numbered 1..n, as many as the occurrence counts, retried as the policy says.
        retried = planned_failures = 0
        for o in occurrences:
            numbers = [a["number"] for a in attempts[o["id"]]]
            if o["status"] in ("succeeded", "failed") and numbers != list(range(1, o["attempts"] + 1)):
                problems["attempts not numbered 1..n"].append(f"occurrence {o['id']}: {numbers} of {o['attempts']}")
                continue
            definition = self.definitions.get(o["task_id"]) or {}
            if o["task_id"] is None and o["job"] == "soak.oneoff":
                definition = {"policy": ONEOFF_POLICY}  # its job's policy (bench/soak_jobs.soak_oneoff)
            policy = definition.get("policy") or {}
            retries, intervals = policy.get("max_retries", 0), policy.get("retry_intervals", [])
            history = attempts[o["id"]]
            if len(history) > retries + 1:
                problems["more attempts than the policy allows"].append(f"occurrence {o['id']}: {len(history)}")
            for k, attempt in enumerate(history, start=1):
                if k < len(history):
                    retried += 1
                    if attempt["status"] != "failed":
                        problems["retried after a success"].append(f"occurrence {o['id']} attempt {k}")
                    wait = intervals[min(k, len(intervals)) - 1] if intervals else 0
                    gap = (history[k]["started_at"] - attempt["finished_at"]).total_seconds()
                    if gap < wait - 0.05:
                        problems["retried sooner than the policy's interval"].append(
                            f"occurrence {o['id']} attempt {k + 1}: {gap:.2f} s after, policy {wait} s"
                        )
                if definition.get("job") == "soak.flaky":
                    if flaky_fails(o["id"], k, **definition["rule"]):
                        planned_failures += 1
                        # A fault may fail the attempt first (a reaped claim): failed all the same.
                        if attempt["status"] != "failed":
                            problems["a planned failure did not fail"].append(f"occurrence {o['id']} attempt {k}")
                    elif attempt["status"] == "failed" and "planned failure" in attempt["error"]:
                        problems["an unplanned planned failure"].append(f"occurrence {o['id']} attempt {k}")
            if o["status"] == "failed" and history and len(history) < retries + 1:
                problems["failed before its retries were used"].append(
                    f"occurrence {o['id']}: {len(history)} of {retries + 1} attempts: {history[-1]['error'][:120]}"
                )
        # 5. Events: exactly one per succeeded run, none of another; every one received; duplicates same id.
        outbox = list(OutboxMessage.objects.values("message_id", "origin", "status", "last_error", "created_at"))
        committed = {str(m["message_id"]): m for m in outbox}
        per_origin = Counter(m["origin"] for m in outbox if m["origin"].startswith("occurrence:"))
        for o in occurrences:
            count = per_origin.get(f"occurrence:{o['id']}", 0)
            expected_events = (
                1
                if o["status"] == "succeeded"
                and o["task_id"] in self.definitions
                and self.definitions[o["task_id"]]["job"].startswith("soak.")
                else None
            )
            if count > 1:
                duplicated += count - 1
                problems["occurrences that committed more than one run"].append(f"occurrence {o['id']}: {count} events")
            if expected_events == 1 and count == 0:
                problems["succeeded runs without their event"].append(f"occurrence {o['id']}")
            if count and o["status"] != "succeeded":
                problems["events of runs that did not commit"].append(f"occurrence {o['id']} ({o['status']})")
        for m in outbox:
            if m["status"] != "delivered":
                problems[f"outbox rows left {m['status']}" + ("" if m["last_error"] else " without a cause")].append(
                    f"{m['message_id']}: {m['last_error'][:120]}"
                )
        received = self.consumer.snapshot()
        received_ids = Counter(r["messageId"] for r in received)
        lost = [mid for mid in committed if mid not in received_ids]
        for mid in lost[:50]:
            problems["committed events the consumer never received"].append(mid)
        phantom = [mid for mid in received_ids if mid not in committed]
        for mid in phantom[:50]:
            problems["received events that were never committed"].append(mid)
        ids_per_occurrence = defaultdict(set)
        for r in received:
            if r["occurrence"] is not None:
                ids_per_occurrence[r["occurrence"]].add(r["messageId"])
        for occurrence, ids in ids_per_occurrence.items():
            if len(ids) > 1:
                problems["one run delivered under several messageIds"].append(f"occurrence {occurrence}: {sorted(ids)}")
        problems["envelopes the consumer would reject"].extend(self.consumer.invalid[:50])
        duplicate_deliveries = sum(count - 1 for count in received_ids.values())

        windows = self.fault_windows()

        def during_faults(epoch: float) -> bool:
            return any(low <= epoch <= high for low, high in windows)

        lags, fault_lags, calm_lags, slow_lags, late = [], [], [], [], []
        for o in occurrences:
            history = attempts[o["id"]]
            if o["manual"] or not history or o["task_id"] not in self.definitions:
                continue
            if o["scheduled_for"] <= self.definitions[o["task_id"]]["created"] + timedelta(seconds=15):
                continue  # start-up: the schedulers began after the definitions
            lag = (history[0]["started_at"] - o["scheduled_for"]).total_seconds()
            lags.append(lag)
            if during_faults(o["scheduled_for"].timestamp()):
                fault_lags.append(lag)
                continue
            if o["scheduled_for"] > cutoff:
                continue  # settling: the schedulers are stopped one after another
            if self.definitions[o["task_id"]]["job"] == "soak.slow":
                # Its runs outlast its interval and fill the long-running slots: after a fault, its
                # instants wait for a slot (capacity), which is not what this check is about.
                slow_lags.append(lag)
                continue
            calm_lags.append(lag)
            if lag > LATE_OUTSIDE_FAULTS_SECONDS:
                name = self.definitions[o["task_id"]]["name"]
                late.append(
                    f"{name} @ {o['scheduled_for'].isoformat()}: started {lag:.3f} s late "
                    f"by {history[0]['scheduler'] or '?'}"
                )
        # The inline executor's first attempts start in the scheduler; a Celery worker's when it
        # takes the hand-over, which on this machine runs behind at full scale (docs/reliability.md).
        title = f"instants outside faults that started more than {LATE_OUTSIDE_FAULTS_SECONDS} s late"
        if self.options.executor == "inline":
            problems[title].extend(late)
        first_received = {}
        for r in received:
            first_received.setdefault(r["messageId"], r["received"])
        latencies, fault_latencies = [], []
        for mid, m in committed.items():
            if mid in first_received:
                latency = first_received[mid] - m["created_at"].timestamp()
                latencies.append(latency)
                if during_faults(m["created_at"].timestamp()):
                    fault_latencies.append(latency)
        recovery = defaultdict(list)
        for probe in self.monitor.probes:
            recovered = probe["recovered"]
            recovery[probe["kind"]].append(None if recovered is None else round(recovered - probe["undone"], 1))
            if recovered is None:
                problems["faults the system did not recover from"].append(probe["kind"])
        problems["admin code path errors"].extend(self.admin_errors)
        oneoff = check_oneoff(self.oneoff, attempts, outbox, received, problems)
        warnings = self.warnings(attempts)
        if self.options.executor != "inline":
            warnings[title].extend(late)

        def pct(values, q):
            if not values:
                return None
            ordered = sorted(values)
            return round(ordered[min(len(ordered) - 1, int(round(q / 100 * (len(ordered) - 1))))], 3)

        statuses = Counter(o["status"] for o in occurrences)
        figures = {
            "occurrences_due": due,
            "occurrences_ran": ran,
            "occurrences_missed": missed,
            "occurrences_skipped": skipped,
            "occurrences_unaccounted": unaccounted,
            "occurrences_duplicated": duplicated,
            "occurrences_stuck": len(stuck),
            "occurrences_by_status": dict(statuses),
            "manual_runs": len(self.manual),
            "manual_runs_ran": manual_ran,
            "attempts_retried": retried,
            "planned_failures": planned_failures,
            "events_committed": len(committed),
            "events_delivered": len([mid for mid in committed if mid in received_ids]),
            "deliveries_received": len(received),
            "duplicate_deliveries": duplicate_deliveries,
            "events_lost": len(lost),
            "outbox_by_status": dict(Counter(m["status"] for m in outbox)),
            "fire_lag_seconds": {"p50": pct(lags, 50), "p99": pct(lags, 99), "max": pct(lags, 100)},
            "fire_lag_max_during_faults_seconds": pct(fault_lags, 100),
            "fire_lag_outside_faults_seconds": {
                "p50": pct(calm_lags, 50),
                "p99": pct(calm_lags, 99),
                "max": pct(calm_lags, 100),
                "instants": len(calm_lags),
                "late": len(late),
                "soak_slow_max": pct(slow_lags, 100),
            },
            "event_latency_seconds": {"p50": pct(latencies, 50), "p99": pct(latencies, 99), "max": pct(latencies, 100)},
            "event_latency_max_during_faults_seconds": pct(fault_latencies, 100),
            "recovery_seconds_after_undo": {k: v for k, v in recovery.items()},
            "consumer_reconnects": self.consumer.reconnects,
            **oneoff,
        }
        return {
            "figures": figures,
            "problems": {k: v for k, v in problems.items() if v},
            "warnings": {k: v for k, v in warnings.items() if v},
        }

    def fault_windows(self) -> list[tuple[float, float]]:
        """When faults were active, from the soak's own fault log (epoch seconds): from a second
        before each fault's start (an instant just due when a scheduler died or froze) to its undo
        or its recovery, whichever came later (self.monitor's probe of it), plus the lease and 2 s
        (claims of a killed or paused scheduler are reaped after the lease; a restarted process
        starts up on the same CPUs)."""
        recovered = {(p["kind"], p["started"]): p["recovered"] for p in self.monitor.probes}
        windows = []
        for fault in self.faults:
            end = max(fault["undone"], recovered.get((fault["kind"], fault["started"])) or fault["undone"])
            windows.append((fault["started"] - 1, end + LEASE_SECONDS + 2))
        return windows

    def warnings(self, attempts: dict) -> dict[str, list[str]]:
        """What the invariants allow but a healthy service should not do: reported, not failed."""
        warnings = defaultdict(list)
        # A claim reaped ("presumed dead") from a scheduler the soak neither killed nor paused then.
        faulted = [
            (fault["target"], fault["started"] - 1, fault["undone"] + LEASE_SECONDS + 2)
            for fault in self.faults
            if fault["kind"] in ("kill_scheduler", "pause_scheduler", "kill_worker")
        ]
        for occurrence_id, history in attempts.items():
            for attempt in history:
                if "presumed dead" not in attempt["error"]:
                    continue
                started, finished = attempt["started_at"].timestamp(), attempt["finished_at"].timestamp()
                scheduler = attempt["error"].split("scheduler ", 1)[-1].split(" ", 1)[0]
                # A Celery worker's claims carry its pool process's name (celery@host/pid), not the soak's.
                names = {scheduler, "worker" if scheduler.startswith("celery@") else scheduler}
                targets = [("worker" if t.startswith("worker-") else t, low, high) for t, low, high in faulted]
                if not any(t in names and low <= finished and started <= high for t, low, high in targets):
                    warnings["attempts reaped from a scheduler that was neither killed nor paused"].append(
                        f"occurrence {occurrence_id} attempt {attempt['number']}: {attempt['error'][:160]}"
                    )
        # Errors the processes logged as their own bugs.
        for service in self.services():
            for line in service.log_path.read_text(errors="replace").splitlines():
                if '"worker_error"' in line or '"run_error"' in line or "Invalid argument" in line:
                    try:
                        event = json.loads(line)
                        tail = (event.get("exc_info") or "").strip().splitlines()[-1:]
                        text = f"{event.get('message')}: {tail[0] if tail else ''}"
                    except ValueError:
                        text = line[:200]
                    warnings[f"errors logged by {service.name}"].append(text)
        return warnings

    def evidence(self, task_id: int) -> str:
        """What the soak did to a definition and where its planning cursor stands: for a failure's report."""
        from jobs.models import PlanningCursor

        cursor = PlanningCursor.objects.filter(task_id=task_id).values().first()
        toggles = [
            {k: [t.isoformat() for t in v] if k in ("disable", "enable") else v for k, v in record.items()}
            for record in self.toggles.get(task_id, [])
        ]
        return f"toggles {toggles}; cursor {cursor}; created {self.definitions[task_id]['created'].isoformat()}"

    def expected_instants(self, task_id: int, definition: dict, cutoff: datetime):
        """Due instants in the window (from the definition's creation to the cutoff), pause windows, edges."""
        events = self.toggles.get(task_id, [])
        schedule = events[0]["before"] if events else definition["schedule"]
        expected, forbidden, fuzzy = set(), [], []
        start = definition["created"]
        for record in events:
            d0, d1 = record["disable"]
            e0, e1 = record["enable"]
            expected.update(schedule_instants(schedule, start, d0))
            fuzzy += [(d0, d1), (e0, e1)]
            forbidden.append((d1, e0))
            schedule = record.get("edit", schedule)
            start = e1
        expected.update(schedule_instants(schedule, start, cutoff))
        return expected, forbidden, fuzzy

    def in_outage(self, instant: datetime) -> bool:
        """Whether instant fell when no scheduler could plan (PostgreSQL down) plus the misfire grace."""
        for fault in self.faults:
            if fault["kind"] == "postgres_restart":
                if fault["started"] - GRACE_SECONDS <= instant.timestamp() <= fault["undone"] + 1:
                    return True
        return False


def report_text(report: dict) -> str:
    f = report["figures"]
    lines = [
        f"soak: {report['seconds']} s of faults, seed {report['seed']}, executor {report['executor']}, "
        f"{report['runtime_seconds']:.0f} s in all",
        "faults injected: " + ", ".join(f"{k} {v}" for k, v in sorted(report["faults"].items())),
        f"occurrences due {f['occurrences_due']}: ran {f['occurrences_ran']}, missed {f['occurrences_missed']}, "
        f"skipped {f['occurrences_skipped']}, unaccounted {f['occurrences_unaccounted']}, "
        f"duplicated {f['occurrences_duplicated']}, stuck {f['occurrences_stuck']}",
        f"manual runs {f['manual_runs']} (ran {f['manual_runs_ran']}); retried attempts {f['attempts_retried']}, "
        f"planned failures {f['planned_failures']}",
        f"events committed {f['events_committed']}, delivered {f['events_delivered']}, "
        f"duplicate deliveries {f['duplicate_deliveries']}, lost {f['events_lost']}",
        f"fire lag p50 {f['fire_lag_seconds']['p50']} s, p99 {f['fire_lag_seconds']['p99']} s, "
        f"worst while faults were active {f['fire_lag_max_during_faults_seconds']} s",
        "fire lag outside faults ({instants} instants): p50 {p50} s, p99 {p99} s, max {max} s; "
        "{late} more than {limit} s late (soak.slow, waiting for slots, not checked: max {soak_slow_max} s)".format(
            **f["fire_lag_outside_faults_seconds"], limit=LATE_OUTSIDE_FAULTS_SECONDS
        ),
        f"event latency p50 {f['event_latency_seconds']['p50']} s, p99 {f['event_latency_seconds']['p99']} s, "
        f"worst while faults were active {f['event_latency_max_during_faults_seconds']} s",
        f"one-off runs asked {f['oneoff_asked']}: committed {f['oneoff_committed']}, rolled back "
        f"{f['oneoff_rolled_back']}, cut short {f['oneoff_cut_short']} (held open across a restart "
        f"{f['oneoff_held_across_a_restart']}, cut short {f['oneoff_held_cut_short']}); "
        "key repeats given the live run "
        f"{f['oneoff_key_repeats_given_the_live_run']}; expired {f['oneoff_expired']} (in an outage "
        f"{f['oneoff_expired_of_those_due_in_an_outage']}; expiring that ran "
        f"{f['oneoff_expiring_that_ran']}); follow-ups expected {f['oneoff_follow_ups_expected']}, created "
        f"{f['oneoff_follow_ups_created']}; by status {f['oneoff_by_status']}",
        "recovery after undo (s): "
        + ", ".join(f"{k} {v}" for k, v in sorted(f["recovery_seconds_after_undo"].items())),
    ]
    if report["problems"]:
        lines.append("PROBLEMS:")
        for title, items in report["problems"].items():
            lines.append(f"  {title}: {len(items)}")
            lines.extend(f"    {item}" for item in items[:10])
    if report.get("warnings"):
        lines.append("warnings (allowed by the invariants, worth a look):")
        for title, items in report["warnings"].items():
            lines.append(f"  {title}: {len(items)}")
            lines.extend(f"    {item}" for item in items[:10])
    lines.append("result: " + ("PASS" if report["passed"] else "FAIL"))
    return "\n".join(lines)


def main() -> int:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("--seconds", type=int, default=int(os.environ.get("SOAK_SECONDS", "600")))
    parser.add_argument("--seed", type=int, default=int(os.environ.get("SOAK_SEED", "1")))
    parser.add_argument("--report", default=str(ROOT / "docs" / "soak-report.json"))
    parser.add_argument("--logs", default=None, help="folder for the processes' logs (default: a new temporary one)")
    parser.add_argument(
        "--without", default="", help="comma-separated fault kinds not to inject, e.g. rabbitmq_stop,postgres_restart"
    )
    parser.add_argument(
        "--executor",
        choices=["inline", "celery"],
        default="inline",
        help="celery: the schedulers hand occurrences to two Celery workers, which the soak also SIGKILLs",
    )
    parser.add_argument(
        "--keep-database", action="store_true", help="keep the soak's database when a check failed, to look into it"
    )
    parser.add_argument(
        "--scale", type=float, default=1.0, help="multiplies the number of definitions of each kind (at least 1 each)"
    )
    options = parser.parse_args()
    options.without = {kind for kind in options.without.split(",") if kind}
    if options.seconds < 30:
        parser.error("--seconds must be at least 30")

    def interrupt(signum, frame):
        raise Interrupted(signal.Signals(signum).name)

    signal.signal(signal.SIGTERM, interrupt)
    signal.signal(signal.SIGINT, interrupt)
    begun = time.time()
    soak = Soak(options)
    report = None
    try:
        soak.setup()
        soak.start_services()
        soak.soak()
        settle = soak.settle()
        result = soak.check(settle)
        faults = Counter(fault["kind"] for fault in soak.faults)
        faults["definition_toggle"] = sum(len(v) for v in soak.toggles.values())
        faults["definition_edit"] = sum(1 for v in soak.toggles.values() for r in v if "edit" in r)
        f = result["figures"]
        passed = not result["problems"] and f["events_lost"] == 0 and f["occurrences_duplicated"] == 0
        soak.passed = passed
        report = {
            "seed": options.seed,
            "seconds": options.seconds,
            "executor": options.executor,
            "date": datetime.now(UTC).isoformat(timespec="seconds"),
            "machine": f"{platform.node()} {platform.machine()}, {os.cpu_count()} CPUs, {platform.platform()}",
            "fast_scheduler_clock_offset_seconds": soak.clock_offset,
            "definitions": len(soak.definitions),
            "faults": dict(faults),
            "fault_log": soak.faults,
            "definition_toggles": {
                soak.definitions[task_id]["name"]: records for task_id, records in soak.toggles.items()
            },
            "cutoff": soak.cutoff,
            "settle": settle,
            **result,
            "passed": passed,
            "logs": str(soak.logs),
        }
    except Interrupted as why:
        log(f"interrupted ({why}): undoing faults and cleaning up")
        return 130
    finally:
        # Signals during cleanup must not cut it short.
        signal.signal(signal.SIGTERM, signal.SIG_IGN)
        signal.signal(signal.SIGINT, signal.SIG_IGN)
        soak.cleanup()
    report["runtime_seconds"] = round(time.time() - begun, 1)
    Path(options.report).write_text(json.dumps(report, indent=2, default=str) + "\n")
    print(report_text(report), flush=True)
    return 0 if report["passed"] else 1


if __name__ == "__main__":
    sys.exit(main())
