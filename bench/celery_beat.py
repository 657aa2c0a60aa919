"""runscheduler beside celery beat (django-celery-beat's DatabaseScheduler), same run, same rows.

    make bench-beat
    # or: DATABASE_URL=postgres://postgres@127.0.0.1:5432/bookworm_scheduler \
    #     .venv/bin/python bench/celery_beat.py [--definitions 1000,10000] [--instances 1,2,4]
    #         [--minutes 3] [--burst 10000] [--skip-beat] [--skip-scheduler] [--executors inline,celery]
    #         [--profile DIR] [--logs DIR]

It creates (and drops at the end) its own database, `<name>_bench_beat`, and its own RabbitMQ
vhost, `bookworm_bench_beat` (rabbitmqctl add_vhost / delete_vhost), so nothing else on the
broker or in the database skews it. Every scenario starts from fresh definitions, then runs
real subprocesses: `celery -A bookworm_scheduler beat -S django_celery_beat.schedulers:
DatabaseScheduler`, or 1, 2, 4 `manage.py runscheduler`. They run one after the other, never
together.

Definitions: N enabled PeriodicTask rows naming the job bench.noop (bench/beat_tasks.py);
EVERY_MINUTE of them with the crontab `* * * * *`, the others `m * * * *` with m spread over the
60 minutes, so about N/60 fall due each minute. (django-celery-beat 2.9 leaves out of its
schedule crontabs whose numeric hour is more than 2 h away; hour `*` keeps all of them in.)

Measured per scenario, over --minutes whole minutes starting at a minute boundary ~25 s after
the processes started:
- CPU seconds per minute of the scheduling processes (utime + stime from /proc/<pid>/stat;
  summed over the instances), and their peak memory (VmHWM from /proc/<pid>/status);
- dispatch lag, the due instant to the task reaching the broker, p50 / p99 / max;
  beat: a consumer thread in this process records the arrival of each message in the vhost's
  `celery` queue (its periodic_task_name header names the definition);
  runscheduler with the inline executor: there is no message, so "dispatch" is the start of
  the occurrence's first attempt (Attempt.started_at - scheduled_for);
  runscheduler with SCHEDULER_EXECUTOR=celery: the arrival of its message, as for beat;
- the share of the due (definition, instant) pairs dispatched within their minute, and
  duplicates (more than one dispatch of one pair).
Burst: --burst definitions all due at one instant; due instant to the last dispatch.
"""

import argparse
import json
import os
import signal
import statistics
import subprocess
import sys
import threading
import time
from datetime import UTC, datetime, timedelta
from pathlib import Path

ROOT = Path(__file__).resolve().parent.parent
sys.path.insert(0, str(ROOT))
os.environ.setdefault("DJANGO_SETTINGS_MODULE", "bookworm_scheduler.settings")
# Production settings: DEBUG would record every query in memory and slow the hot path.
os.environ.setdefault("DEBUG", "0")
os.environ.setdefault("SECRET_KEY", "benchmark-only")
os.environ.setdefault("LOG_LEVEL", "WARNING")
os.environ["SCHEDULER_JOB_MODULES"] = "bench.beat_tasks"

VHOST = os.environ.get("BENCH_BEAT_VHOST", "bookworm_bench_beat")  # another one lets two runs share a broker
os.environ["RABBITMQ_URL"] = f"amqp://guest:guest@127.0.0.1:5672/{VHOST}"

from bench.database import BenchDatabase  # noqa: E402

DATABASE = BenchDatabase("_bench_beat")
DATABASE.use()

import django  # noqa: E402

DATABASE.recreate()
django.setup()

import pika  # noqa: E402
from django.conf import settings  # noqa: E402
from django.core.management import call_command  # noqa: E402
from django.db import InterfaceError, OperationalError, connection  # noqa: E402
from django.db.models.functions import Now  # noqa: E402
from django_celery_beat.models import CrontabSchedule, PeriodicTask, PeriodicTasks  # noqa: E402

from bench.beat_tasks import NAME as JOB  # noqa: E402
from jobs.engine.store import NOTIFY_CHANNEL  # noqa: E402
from jobs.models import Attempt, Occurrence, PlanningCursor, SchedulerInstance  # noqa: E402

EVERY_MINUTE = 10
PROFILE_DIR = ""  # --profile
LOGS_DIR = ""  # --logs
START_BEFORE_BOUNDARY = 25  # seconds: start-up, loading the definitions
TICKS = os.sysconf("SC_CLK_TCK")
STARTED: list[subprocess.Popen] = []  # every process started, stopped at the end whatever happens


def log(message: str) -> None:
    print(f"{datetime.now(UTC):%H:%M:%S} {message}", file=sys.stderr, flush=True)


def rabbitmqctl(*args: str) -> None:
    for _attempt in range(10):  # the node answers "app not running" for a moment now and then
        done = subprocess.run(["rabbitmqctl", "-q", *args], capture_output=True, text=True)
        if done.returncode == 0:
            return
        time.sleep(2)
    raise RuntimeError(f"rabbitmqctl {' '.join(args)}: {done.stderr.strip()}")


def percentile(values, q):
    ordered = sorted(values)
    return ordered[min(len(ordered) - 1, int(round(q / 100 * (len(ordered) - 1))))]


# The broker side: what reached the queue, and when.


def bench_queues() -> list:
    """The queues beat's and the executor's messages land in: the app's default queue(s)."""
    try:
        from bookworm_scheduler.celery import job_queues
    except ImportError:  # before the Celery executor: Celery's default queue
        from kombu import Exchange, Queue

        return [Queue("celery", Exchange("celery", "direct"), routing_key="celery")]
    return list(job_queues(settings.SCHEDULER_CELERY_QUEUE))


class Arrivals:
    """A consumer thread recording the arrival of every message in the bench queues.

    Each message is (arrival time, periodic_task_name header, occurrence id): beat names the
    definition in a header, the Celery executor sends the occurrence id as the task's first
    argument.
    """

    def __init__(self):
        self.messages: list[tuple[float, str | None, int | None]] = []
        self.handed_over: list[int] = []  # occurrence ids not yet taken over by StandInWorkers
        self._ready = threading.Event()
        self._thread = threading.Thread(target=self._consume, daemon=True)
        self._thread.start()
        if not self._ready.wait(30):
            raise RuntimeError("the consumer did not start")

    def _consume(self):
        """Consume until close(); reconnect when the broker goes away (the tests stop it)."""
        self.reconnects, self._closing = 0, False
        while not self._closing:
            try:
                self._connection = pika.BlockingConnection(pika.URLParameters(os.environ["RABBITMQ_URL"]))
                channel = self._channel = self._connection.channel()
                channel.basic_qos(prefetch_count=1000)
                for queue in bench_queues():  # declared as Celery declares them, so its own declarations match
                    channel.exchange_declare(queue.exchange.name, queue.exchange.type, durable=True)
                    channel.queue_declare(queue.name, durable=True, arguments=queue.queue_arguments)
                    channel.queue_bind(queue.name, queue.exchange.name, queue.routing_key)
                    channel.basic_consume(queue.name, self._on_message, auto_ack=True)
                self._ready.set()
                channel.start_consuming()
            except pika.exceptions.AMQPError:
                self.reconnects += 1
                time.sleep(1)

    def _on_message(self, channel, method, properties, body):
        arrived = time.time()
        headers = properties.headers or {}
        name, occurrence = headers.get("periodic_task_name"), None
        if name is None:
            try:
                args = json.loads(body)[0]
                occurrence = int(args[0])
            except (ValueError, TypeError, IndexError, KeyError):
                pass
            else:
                self.handed_over.append(occurrence)
        self.messages.append((arrived, name, occurrence))

    def take(self) -> list[tuple[float, str | None, int | None]]:
        taken, self.messages = self.messages, []
        return taken

    def take_handed_over(self) -> list[int]:
        taken, self.handed_over = self.handed_over, []
        return taken

    def close(self):
        self._closing = True
        try:
            self._connection.add_callback_threadsafe(self._channel.stop_consuming)
        except pika.exceptions.AMQPError:
            pass  # closed already
        self._thread.join(10)


class StandInWorkers:
    """With the Celery executor: takes each handed-over occurrence off the scheduler's hands.

    A scheduler keeps at most SCHEDULER_CELERY_MAX_IN_FLIGHT occurrences handed over that no
    worker has taken over. No Celery worker runs here (it would consume the messages this bench
    times); instead, every 20 ms, one UPDATE marks what arrived in the queue as succeeded and
    NOTIFYs the schedulers, as a worker fleet that takes over at once (jobs.handover.executor.take_over)
    and runs a job of no duration would.
    """

    EVERY = 0.02  # seconds

    def __init__(self, arrivals: Arrivals):
        self.arrivals = arrivals
        self._stop = threading.Event()
        self._thread = threading.Thread(target=self._run, daemon=True)
        self._thread.start()

    def _run(self):
        try:
            while not self._stop.wait(self.EVERY):
                ids = self.arrivals.take_handed_over()
                if not ids:
                    continue
                try:
                    Occurrence.objects.filter(id__in=ids, status=Occurrence.Status.RUNNING).update(
                        status=Occurrence.Status.SUCCEEDED, finished_at=Now(), lease_expires_at=None
                    )
                    with connection.cursor() as cursor:  # as a worker's take_over does: the room is free
                        cursor.execute("SELECT pg_notify(%s, '')", [NOTIFY_CHANNEL])
                except (OperationalError, InterfaceError):
                    connection.close()
        finally:
            connection.close()

    def close(self):
        self._stop.set()
        self._thread.join(10)


# Definitions.


def reset() -> None:
    """No rows of the last scenario, nor their dead tuples: each scenario starts from the same tables
    (autovacuum would otherwise clean up after one scenario in the middle of the next)."""
    models = [Attempt, Occurrence, SchedulerInstance, PeriodicTask, CrontabSchedule, PlanningCursor]
    for model in models[:-1]:
        model.objects.all().delete()
    with connection.cursor() as cursor:
        for model in models:
            cursor.execute(f"VACUUM ANALYZE {connection.ops.quote_name(model._meta.db_table)}")


def create_definitions(count: int, *, burst_minute: int | None = None) -> dict[str, int | None]:
    """count definitions; their minute (None: every minute). With burst_minute, all due at that minute."""
    reset()
    crontabs = {None: CrontabSchedule.objects.create(minute="*", hour="*")}
    for minute in range(60):
        crontabs[minute] = CrontabSchedule.objects.create(minute=str(minute), hour="*")
    minutes = {}
    for n in range(count):
        if burst_minute is not None:
            minutes[f"bench-{n:05d}"] = burst_minute
        else:
            minutes[f"bench-{n:05d}"] = None if n < EVERY_MINUTE else n % 60
    PeriodicTask.objects.bulk_create(
        (PeriodicTask(name=name, task=JOB, crontab=crontabs[minute]) for name, minute in minutes.items()),
        batch_size=2000,
    )
    PeriodicTasks.update_changed()
    return minutes


def due_pairs(minutes: dict[str, int | None], start: datetime, count: int) -> set[tuple[str, datetime]]:
    """The (definition, instant) pairs due at the count minute boundaries from start."""
    pairs = set()
    for k in range(count):
        instant = start + timedelta(minutes=k)
        for name, minute in minutes.items():
            if minute is None or minute == instant.minute:
                pairs.add((name, instant))
    return pairs


# Processes.


def beat_processes(_instances: int, _executor: str) -> list[subprocess.Popen]:
    command = [
        str(Path(sys.executable).parent / "celery"),
        "-A",
        "bookworm_scheduler",
        "beat",
        "-S",
        "django_celery_beat.schedulers:DatabaseScheduler",
        "--loglevel",
        "WARNING",
        "--pidfile=",
    ]
    STARTED.append(subprocess.Popen(command, cwd=ROOT, env=dict(os.environ), stdout=subprocess.DEVNULL))
    return STARTED[-1:]


def scheduler_processes(instances: int, executor: str) -> list[subprocess.Popen]:
    env = dict(os.environ, DATABASE_CONN_MAX_AGE="600")
    if executor != "inline":
        env["SCHEDULER_EXECUTOR"] = executor
    python = [sys.executable]
    if PROFILE_DIR:  # --profile: each instance under cProfile, its stats written when it stops
        python += ["-m", "cProfile", "-o", str(Path(PROFILE_DIR) / f"runscheduler-{executor}-{instances}-{{n}}.prof")]
    processes = [
        subprocess.Popen(
            [arg.format(n=n) for arg in python]
            + [str(ROOT / "manage.py"), "runscheduler", "--instance-id", f"bench-{n}"],
            env=env,
            stdout=subprocess.DEVNULL,
            stderr=open(Path(LOGS_DIR) / f"runscheduler-{executor}-{instances}-{n}.log", "w") if LOGS_DIR else None,
        )
        for n in range(instances)
    ]
    STARTED.extend(processes)
    return processes


def cpu_seconds(process) -> float:
    fields = Path(f"/proc/{process.pid}/stat").read_text().rsplit(")", 1)[1].split()
    return (int(fields[11]) + int(fields[12])) / TICKS  # utime + stime


def peak_memory_mb(process) -> float:
    for line in Path(f"/proc/{process.pid}/status").read_text().splitlines():
        if line.startswith("VmHWM:"):
            return int(line.split()[1]) / 1024
    return float("nan")


def stop(processes) -> None:
    for process in processes:
        process.send_signal(signal.SIGTERM)
    for process in processes:
        try:
            process.wait(60)
        except subprocess.TimeoutExpired:
            process.kill()
            process.wait()


def sleep_until(instant: datetime) -> None:
    delay = (instant - datetime.now(UTC)).total_seconds()
    if delay > 0:
        time.sleep(delay)


def first_boundary() -> datetime:
    """The first minute boundary at least START_BEFORE_BOUNDARY (+5 s to set up) from now."""
    soon = datetime.now(UTC) + timedelta(seconds=START_BEFORE_BOUNDARY + 5)
    return soon.replace(second=0, microsecond=0) + timedelta(minutes=1)


# Dispatches: (definition name, arrival) pairs, from the broker or from the attempts.


def broker_dispatches(arrivals: Arrivals) -> list[tuple[str, datetime]]:
    messages = arrivals.take()
    occurrences = [occurrence for _, _, occurrence in messages if occurrence is not None]
    names = dict(Occurrence.objects.filter(id__in=occurrences).values_list("id", "task__name"))
    return [
        (name or names.get(occurrence), datetime.fromtimestamp(arrived, UTC))
        for arrived, name, occurrence in messages
        if name or occurrence in names
    ]


def attempt_dispatches() -> list[tuple[str, datetime]]:
    """Inline executor: the start of each occurrence's first attempt (no message is sent)."""
    return list(
        Attempt.objects.filter(number=1).values_list("occurrence__task__name", "started_at").order_by("started_at")
    )


def match(dispatches, expected: set[tuple[str, datetime]]) -> tuple[dict, int]:
    """Each dispatch against the latest expected instant of its definition at or before it."""
    instants_of: dict[str, list[datetime]] = {}
    for name, instant in expected:
        instants_of.setdefault(name, []).append(instant)
    for instants in instants_of.values():
        instants.sort()
    first: dict[tuple[str, datetime], datetime] = {}
    duplicates = 0
    for name, arrived in dispatches:
        candidates = [i for i in instants_of.get(name, ()) if i <= arrived]
        if not candidates:
            continue  # before the window (start-up) or not ours
        pair = (name, candidates[-1])
        if pair in first:
            duplicates += 1
            first[pair] = min(first[pair], arrived)
        else:
            first[pair] = arrived
    return first, duplicates


def lag_summary(first: dict, expected: set) -> dict:
    lags = [(first[pair] - pair[1]).total_seconds() * 1000 for pair in expected if pair in first]
    within = sum(1 for pair in expected if pair in first and first[pair] < pair[1] + timedelta(minutes=1))
    return {
        "due": len(expected),
        "dispatched": len(lags),
        "within_minute": within / len(expected) if expected else float("nan"),
        "lag_p50_ms": statistics.median(lags) if lags else float("nan"),
        "lag_p99_ms": percentile(lags, 99) if lags else float("nan"),
        "lag_max_ms": max(lags) if lags else float("nan"),
    }


# Scenarios.


def services_epoch(arrivals: Arrivals):
    """Changes when PostgreSQL restarts or the consumer had to reconnect to RabbitMQ; None: down now."""
    try:
        return postmaster_started(), arrivals.reconnects
    except (OperationalError, InterfaceError):
        return None


def steady(side: str, definitions: int, instances: int, executor: str, minutes: int, arrivals: Arrivals) -> dict:
    """Figures over `minutes` whole minutes during which neither PostgreSQL nor RabbitMQ restarted.

    The host is shared, and the project's own tests restart PostgreSQL (test_runscheduler) and
    stop RabbitMQ (test_relay_process): a minute they cut is left out, and one more measured,
    up to twice as many minutes in all.
    """
    connection.close()
    names = create_definitions(definitions)
    start = first_boundary()
    sleep_until(start - timedelta(seconds=START_BEFORE_BOUNDARY))
    arrivals.take()
    workers = StandInWorkers(arrivals) if side == "scheduler" and executor == "celery" else None
    processes = (beat_processes if side == "beat" else scheduler_processes)(instances, executor)
    clean, cpu, boundary = [], 0.0, start
    try:
        sleep_until(boundary - timedelta(seconds=0.2))
        cpu_before, epoch = sum(cpu_seconds(p) for p in processes), services_epoch(arrivals)
        while len(clean) < minutes and boundary < start + timedelta(minutes=2 * minutes):
            sleep_until(boundary + timedelta(seconds=59.8))
            cpu_after, epoch_after = sum(cpu_seconds(p) for p in processes), services_epoch(arrivals)
            if epoch is not None and epoch_after == epoch:
                clean.append(boundary)
                cpu += cpu_after - cpu_before
            else:
                log(f"PostgreSQL or RabbitMQ restarted in the minute from {boundary:%H:%M} (not this bench): left out")
            boundary += timedelta(minutes=1)
            cpu_before, epoch = cpu_after, epoch_after
        time.sleep(3)  # the last minute's stragglers
        memory = max(peak_memory_mb(p) for p in processes)
    finally:
        stop(processes)
        if workers:
            workers.close()
    time.sleep(1)
    connection.close()  # a fresh one after minutes of waiting
    measured_minutes = (boundary - start) // timedelta(minutes=1)
    expected = {pair for pair in due_pairs(names, start, measured_minutes) if pair[1] in clean}
    uses_broker = side == "beat" or executor != "inline"
    dispatches = broker_dispatches(arrivals) if uses_broker else attempt_dispatches()
    # Matched against the instants a minute either side too: start-up and next-minute dispatches are no duplicates.
    first, duplicates = match(dispatches, due_pairs(names, start - timedelta(minutes=1), measured_minutes + 2))
    first = {pair: arrived for pair, arrived in first.items() if pair in expected}
    planned = [
        (created - scheduled).total_seconds() * 1000
        for created, scheduled in Occurrence.objects.values_list("created_at", "scheduled_for")
        if scheduled in clean
    ]
    return {
        "minutes": len(clean),
        "left_out": measured_minutes - len(clean),
        "planned_p50_ms": statistics.median(planned) if planned else float("nan"),
        "cpu_s_per_min": cpu / len(clean) if clean else float("nan"),
        "peak_mb": memory,
        "duplicates": duplicates,
        **lag_summary(first, expected),
    }


def burst(side: str, definitions: int, instances: int, executor: str, arrivals: Arrivals, timeout: int) -> dict:
    connection.close()
    # The rows first, the instant after: creating 10,000 of them can outlast the margin of
    # first_boundary() on a loaded host, and a definition created after its instant is not due
    # before the next hour (runscheduler plans from a definition's creation): none was dispatched.
    names = create_definitions(definitions, burst_minute=0)
    start = first_boundary()
    CrontabSchedule.objects.filter(minute="0", hour="*").update(minute=str(start.minute))
    PeriodicTasks.update_changed()
    names = dict.fromkeys(names, start.minute)
    expected = due_pairs(names, start, 1)
    sleep_until(start - timedelta(seconds=START_BEFORE_BOUNDARY))
    arrivals.take()
    uses_broker = side == "beat" or executor != "inline"
    workers = StandInWorkers(arrivals) if side == "scheduler" and executor == "celery" else None
    processes = (beat_processes if side == "beat" else scheduler_processes)(instances, executor)
    collected: list[tuple[str, datetime]] = []
    try:
        sleep_until(start - timedelta(seconds=0.2))
        cpu_before = sum(cpu_seconds(p) for p in processes)
        deadline = start + timedelta(seconds=timeout)
        while datetime.now(UTC) < deadline:
            time.sleep(1)
            if uses_broker:
                collected += broker_dispatches(arrivals)
                count = len(collected)
            else:
                count = Attempt.objects.filter(number=1).count()
            if count >= definitions:
                break
        cpu = sum(cpu_seconds(p) for p in processes) - cpu_before
        memory = max(peak_memory_mb(p) for p in processes)
    finally:
        stop(processes)
        if workers:
            workers.close()
    time.sleep(1)
    connection.close()
    if uses_broker:
        collected += broker_dispatches(arrivals)
    else:
        collected = attempt_dispatches()
    first, duplicates = match(collected, due_pairs(names, start - timedelta(minutes=1), 3))
    first = {pair: arrived for pair, arrived in first.items() if pair in expected}
    summary = lag_summary(first, expected)
    planned = sorted(
        (created - start).total_seconds()
        for created in Occurrence.objects.filter(scheduled_for=start).values_list("created_at", flat=True)
    )
    last = max(first.values(), default=start)
    return {
        "cpu_s": cpu,
        "peak_mb": memory,
        "duplicates": duplicates,
        "all_dispatched_s": (last - start).total_seconds() if summary["dispatched"] == definitions else float("nan"),
        "within_10s": sum(1 for t in first.values() if t <= start + timedelta(seconds=10)),
        "planned_s": (planned[len(planned) // 2], planned[-1]) if planned else (float("nan"),) * 2,
        **summary,
    }


def postmaster_started() -> datetime:
    connection.close()
    with connection.cursor() as cursor:
        cursor.execute("SELECT pg_postmaster_start_time()")
        return cursor.fetchone()[0]


def measured(arrivals, scenario, *args, tries: int = 3) -> dict:
    """The scenario's figures, from a run during which PostgreSQL was not restarted.

    The host is shared, and the project's own tests restart PostgreSQL (test_runscheduler) and
    stop RabbitMQ (test_relay_process): a run they cut is thrown away and the scenario run
    again, up to `tries` times; the last one's figures are then kept, marked "restarted".
    """
    result = {}
    for _ in range(tries):
        try:
            before, reconnects = postmaster_started(), arrivals.reconnects
            result = scenario(*args)
            if postmaster_started() == before and arrivals.reconnects == reconnects:
                return result
            log("PostgreSQL or RabbitMQ was restarted during the scenario (not by this bench): run again")
            result["restarted"] = True
        except (OperationalError, InterfaceError) as exc:
            log(f"database error, scenario run again: {str(exc).splitlines()[0]}")
            connection.close()
            time.sleep(10)
    return result


def retried(scenario, *args, tries: int = 3) -> dict:
    """The scenario, run again when the database went away under the bench itself (a restart)."""
    for attempt in range(tries):
        try:
            return scenario(*args)
        except (OperationalError, InterfaceError) as exc:
            if attempt == tries - 1:
                raise
            log(f"database error, scenario run again: {str(exc).splitlines()[0]}")
            connection.close()
            time.sleep(10)


def describe(side: str, instances: int, executor: str) -> str:
    if side == "beat":
        return "celery beat (DatabaseScheduler)"
    return f"runscheduler x{instances} ({executor})"


def main():
    parser = argparse.ArgumentParser()
    parser.add_argument("--definitions", default="1000,10000", help="comma-separated counts")
    parser.add_argument("--instances", default="1,2,4", help="runscheduler instances, comma-separated")
    parser.add_argument(
        "--executors",
        default="inline,celery" if hasattr(settings, "SCHEDULER_EXECUTOR") else "inline",
        help="inline and/or celery (SCHEDULER_EXECUTOR)",
    )
    parser.add_argument("--minutes", type=int, default=3, help="whole minutes measured per scenario")
    parser.add_argument("--burst", type=int, default=10000, help="definitions due at one instant (0: none)")
    parser.add_argument("--burst-timeout", type=int, default=120, help="seconds after the instant")
    parser.add_argument("--skip-beat", action="store_true")
    parser.add_argument("--skip-scheduler", action="store_true")
    parser.add_argument("--skip-steady", action="store_true")
    parser.add_argument("--profile", default="", help="a directory: run each runscheduler under cProfile, stats there")
    parser.add_argument(
        "--logs", default="", help="a directory: each runscheduler's log there (set LOG_LEVEL=INFO for every hand-over)"
    )
    options = parser.parse_args()
    global PROFILE_DIR, LOGS_DIR
    PROFILE_DIR, LOGS_DIR = options.profile, options.logs
    # Stopped by a signal, it still stops its processes and drops its database and vhost (finally).
    signal.signal(signal.SIGINT, signal.default_int_handler)
    signal.signal(signal.SIGTERM, lambda *_: sys.exit("stopped"))
    counts = [int(c) for c in options.definitions.split(",") if c]
    sides = ([] if options.skip_beat else [("beat", 1, "-")]) + (
        []
        if options.skip_scheduler
        else [
            ("scheduler", int(n), executor)
            for executor in options.executors.split(",")
            for n in options.instances.split(",")
        ]
    )
    subprocess.run(["rabbitmqctl", "-q", "delete_vhost", VHOST], capture_output=True)  # left by a crashed run
    rabbitmqctl("add_vhost", VHOST)
    rabbitmqctl("set_permissions", "-p", VHOST, "guest", ".*", ".*", ".*")
    call_command("migrate", verbosity=0)
    arrivals = Arrivals()
    log(f"database {DATABASE.name}, vhost {VHOST}; {os.cpu_count()} CPUs, load {os.getloadavg()[0]:.2f}")
    try:
        if not options.skip_steady:
            for count in counts:
                for side, instances, executor in sides:
                    log(f"{count} definitions, {describe(side, instances, executor)}, {options.minutes} min ...")
                    r = retried(steady, side, count, instances, executor, options.minutes, arrivals)
                    print(
                        f"{count:>6} definitions | {describe(side, instances, executor):<32} | "
                        f"CPU {r['cpu_s_per_min']:.2f} s/min | peak {r['peak_mb']:.0f} MB | "
                        f"lag p50 {r['lag_p50_ms']:.0f} ms, p99 {r['lag_p99_ms']:.0f} ms, "
                        f"max {r['lag_max_ms']:.0f} ms | {r['dispatched']}/{r['due']} dispatched, "
                        f"{100 * r['within_minute']:.2f} % within the minute | "
                        f"duplicates {r['duplicates']} | occurrence rows written p50 {r['planned_p50_ms']:.0f} ms "
                        f"after the instant | load {os.getloadavg()[0]:.2f}"
                        f" | {r['minutes']} clean minutes, {r['left_out']} left out (restarts)",
                        flush=True,
                    )
        if options.burst:
            for side, instances, executor in sides:
                log(f"burst of {options.burst}, {describe(side, instances, executor)} ...")
                r = measured(arrivals, burst, side, options.burst, instances, executor, arrivals, options.burst_timeout)
                print(
                    f"burst {options.burst} | {describe(side, instances, executor):<32} | "
                    f"all dispatched after {r['all_dispatched_s']:.1f} s | {r['within_10s']} within 10 s | "
                    f"{r['dispatched']}/{r['due']} dispatched | lag p50 {r['lag_p50_ms']:.0f} ms, "
                    f"p99 {r['lag_p99_ms']:.0f} ms, max {r['lag_max_ms']:.0f} ms | CPU {r['cpu_s']:.1f} s | "
                    f"peak {r['peak_mb']:.0f} MB | duplicates {r['duplicates']} | occurrence rows written "
                    f"p50 {r['planned_s'][0]:.1f} s, max {r['planned_s'][1]:.1f} s after the instant | "
                    f"load {os.getloadavg()[0]:.2f}"
                    f"{' | PostgreSQL or RabbitMQ RESTARTED during it' if r.get('restarted') else ''}",
                    flush=True,
                )
    finally:
        stop([process for process in STARTED if process.poll() is None])
        arrivals.close()
        connection.close()
        DATABASE.drop()
        rabbitmqctl("delete_vhost", VHOST)


if __name__ == "__main__":
    main()
