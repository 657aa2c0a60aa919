"""Scheduler throughput, fire lag and idle CPU against the local PostgreSQL (run by hand).

    make bench-scheduler
    # or: DATABASE_URL=postgres://postgres@127.0.0.1:5432/bookworm_scheduler \
    #     .venv/bin/python bench/scheduler_throughput.py [--jobs 1000] [--idle-definitions 10000]

It creates (and drops at the end) its own database, `<name>_bench_scheduler`, and runs real
`manage.py runscheduler` subprocesses against it. Measured:

1. --jobs definitions due at the same instant, each publishing one outbox message, with one
   scheduler instance and with two: occurrences per second from the due instant to the last
   recorded success, and fire lag (due instant to attempt start) p50 and p99;
2. the statements and round trips per occurrence of the same burst on one instance, counted in a
   run of its own from libpq's trace of every connection (bench/traced_manage.py);
3. the fire lag of a lone due job: one definition every second, --lone-samples instants;
4. the CPU time of an idle runscheduler over --idle-seconds with --idle-definitions enabled
   cron definitions (none due during the window), read from /proc;
5. beside it, the PostgreSQL peer: Procrastinate 3.x, one worker with the same concurrency draining
   --jobs deferred jobs that each insert a row, in a database of its own on the same server
   (bench/procrastinate_peer.py, run with .venv-procrastinate/bin/python, which `make
   bench-scheduler` creates from bench/requirements-procrastinate.txt).
"""

import argparse
import json
import os
import random
import signal
import statistics
import subprocess
import sys
import tempfile
import time
from datetime import timedelta
from pathlib import Path

ROOT = Path(__file__).resolve().parent.parent
sys.path.insert(0, str(ROOT))

from bench.database import scheduler_bench  # noqa: E402
from bench.processes import cpu_seconds  # noqa: E402

DATABASE = scheduler_bench("_bench_scheduler")

from django.conf import settings  # noqa: E402
from django.core.management import call_command  # noqa: E402
from django.db import connection  # noqa: E402
from django.utils import timezone  # noqa: E402
from django_celery_beat.models import CrontabSchedule, IntervalSchedule, PeriodicTask  # noqa: E402

from jobs.models import Attempt, Occurrence  # noqa: E402
from outbox.models import OutboxMessage  # noqa: E402


def percentile(values, q):
    ordered = sorted(values)
    return ordered[min(len(ordered) - 1, int(round(q / 100 * (len(ordered) - 1))))]


def start_schedulers(
    count: int, concurrency: int | None = None, trace_dir: str | None = None
) -> list[subprocess.Popen]:
    if trace_dir:
        args = [sys.executable, str(ROOT / "bench" / "traced_manage.py"), trace_dir, "runscheduler"]
    else:
        args = [sys.executable, str(ROOT / "manage.py"), "runscheduler"]
    if concurrency:
        args += ["--concurrency", str(concurrency)]
    env = dict(os.environ, DATABASE_CONN_MAX_AGE="600")
    return [
        subprocess.Popen([*args, "--instance-id", f"bench-{n}"], env=env, stdout=subprocess.DEVNULL)
        for n in range(count)
    ]


def stop(processes) -> None:
    for process in processes:
        process.send_signal(signal.SIGTERM)
    for process in processes:
        process.wait(60)


def reset() -> None:
    Attempt.objects.all().delete()
    Occurrence.objects.all().delete()
    OutboxMessage.objects.all().delete()
    PeriodicTask.objects.all().delete()


def due_together(jobs: int, instances: int, concurrency: int | None, trace_dir: str | None = None) -> dict:
    """`jobs` definitions with one instant, all at the same moment a few seconds ahead."""
    reset()
    processes = start_schedulers(instances, concurrency, trace_dir)
    try:
        time.sleep(3)  # started and idle
        due = timezone.now().replace(microsecond=0) + timedelta(seconds=4)
        interval, _ = IntervalSchedule.objects.get_or_create(every=3600, period=IntervalSchedule.SECONDS)
        PeriodicTask.objects.bulk_create(
            PeriodicTask(name=f"due-{n}", task="bench.publish", interval=interval, start_time=due) for n in range(jobs)
        )
        from django_celery_beat.models import PeriodicTasks

        PeriodicTasks.update_changed()
        time.sleep(max((due - timezone.now()).total_seconds() - 0.3, 0))
        before = cpu_snapshot(processes)
        deadline = time.monotonic() + 120
        while Occurrence.objects.filter(status="succeeded").count() < jobs and time.monotonic() < deadline:
            time.sleep(0.2)
        after = cpu_snapshot(processes)
    finally:
        stop(processes)  # also when this script fails (PostgreSQL restarted under it, say): no orphans
    done = Occurrence.objects.filter(status="succeeded")
    assert done.count() == jobs, f"only {done.count()} of {jobs} succeeded"
    assert OutboxMessage.objects.count() == jobs
    last = max(done.values_list("finished_at", flat=True))
    lags = [
        (started - scheduled).total_seconds() * 1000
        for started, scheduled in Attempt.objects.values_list("started_at", "occurrence__scheduled_for")
    ]
    used = {kind: sum(cpu - before.get((k, pid), 0.0) for (k, pid), cpu in after.items() if k == kind) for kind in "sp"}
    return {
        "per_second": jobs / (last - due).total_seconds(),
        "runs_per_second": jobs / (last - min(Attempt.objects.values_list("started_at", flat=True))).total_seconds(),
        "cpu_ms": {"scheduler": 1000 * used["s"] / jobs, "postgresql": 1000 * used["p"] / jobs},
        "lag_p50_ms": statistics.median(lags),
        "lag_p99_ms": percentile(lags, 99),
        "instances": sorted(set(done.values_list("scheduler", flat=True))),
    }


def cpu_snapshot(processes) -> dict:
    """CPU seconds of the schedulers ("s", pid) and of the PostgreSQL backends serving them ("p", pid).

    Backends of the bench's database other than this script's own; one started later counts whole.
    """
    with connection.cursor() as cursor:
        cursor.execute(
            "SELECT pid FROM pg_stat_activity WHERE datname = current_database() AND pid <> pg_backend_pid()"
        )
        backends = [pid for (pid,) in cursor.fetchall()]
    return {("s", p.pid): cpu_seconds(p.pid) for p in processes} | {("p", pid): cpu_seconds(pid) for pid in backends}


def statements_per_occurrence(jobs: int, concurrency: int | None) -> dict:
    """What one instance sends to PostgreSQL for a burst, per occurrence (start-up and idle passes included)."""
    from bench.traced_manage import count_round_trips

    with tempfile.TemporaryDirectory(prefix="bench-trace-") as trace_dir:
        due_together(jobs, 1, concurrency, trace_dir)
        counts = count_round_trips(Path(trace_dir))
    return {kind: count / jobs for kind, count in counts.items()}


def procrastinate_peer(jobs: int, concurrency: int) -> dict:
    python = Path(os.environ.get("PROCRASTINATE_PYTHON", ROOT / ".venv-procrastinate" / "bin" / "python"))
    if not python.exists():
        raise SystemExit(
            f"{python} is missing: `make bench-scheduler` creates it (bench/requirements-procrastinate.txt)"
        )
    database = DATABASE.name.removesuffix("_bench_scheduler") + "_bench_procrastinate"
    result = subprocess.run(
        [str(python), str(ROOT / "bench" / "procrastinate_peer.py"), DATABASE.url, database, "--jobs", str(jobs)]
        + ["--concurrency", str(concurrency)],
        capture_output=True,
        text=True,
        timeout=600,
        check=True,
    )
    return json.loads(result.stdout.strip().splitlines()[-1])


def lone_job_lag(samples: int) -> dict:
    reset()
    processes = start_schedulers(1)
    try:
        time.sleep(3)
        start = timezone.now().replace(microsecond=0) + timedelta(seconds=2)
        interval, _ = IntervalSchedule.objects.get_or_create(every=1, period=IntervalSchedule.SECONDS)
        PeriodicTask.objects.create(name="lone", task="bench.publish", interval=interval, start_time=start)
        deadline = time.monotonic() + samples + 30
        while Occurrence.objects.filter(status="succeeded").count() < samples and time.monotonic() < deadline:
            time.sleep(0.5)
    finally:
        stop(processes)
    lags = [
        (started - scheduled).total_seconds() * 1000
        for started, scheduled in Attempt.objects.values_list("started_at", "occurrence__scheduled_for")[:samples]
    ]
    return {"samples": len(lags), "lag_p50_ms": statistics.median(lags), "lag_p99_ms": percentile(lags, 99)}


def idle_cpu(definitions: int, seconds: int) -> dict:
    """CPU of an idle scheduler with many enabled cron definitions, none due in the window."""
    reset()
    now = timezone.now()
    quiet = {(now + timedelta(minutes=m)).strftime("%H:%M") for m in range(-1, seconds // 60 + 5)}
    crontabs = []
    while len(crontabs) < 200:
        minute, hour = random.randrange(60), random.randrange(24)
        if f"{hour:02d}:{minute:02d}" not in quiet:
            crontabs.append(CrontabSchedule.objects.create(minute=str(minute), hour=str(hour)))
    PeriodicTask.objects.bulk_create(
        PeriodicTask(name=f"idle-{n}", task="bench.publish", crontab=crontabs[n % len(crontabs)])
        for n in range(definitions)
    )
    [process] = start_schedulers(1)
    time.sleep(15)  # start-up: load and compute 10,000 next instants
    before, started = cpu_seconds(process.pid), time.monotonic()
    time.sleep(seconds)
    used, elapsed = cpu_seconds(process.pid) - before, time.monotonic() - started
    stop([process])
    assert not Occurrence.objects.exists(), "something fell due during the idle window"
    return {"definitions": definitions, "seconds": round(elapsed), "cpu_percent": 100 * used / elapsed}


def main():
    parser = argparse.ArgumentParser()
    parser.add_argument("--jobs", type=int, default=1000)
    parser.add_argument("--concurrency", type=int, default=None, help="default: SCHEDULER_CONCURRENCY")
    parser.add_argument("--lone-samples", type=int, default=30)
    parser.add_argument("--idle-definitions", type=int, default=10000)
    parser.add_argument("--idle-seconds", type=int, default=60, help="0: skip the idle measure")
    parser.add_argument(
        "--measures",
        default="burst,procrastinate,statements,lone,idle",
        help="which of burst,procrastinate,statements,lone,idle",
    )
    options = parser.parse_args()
    measures = set(options.measures.split(","))
    call_command("migrate", verbosity=0)
    print(f"load average before: {' '.join(f'{x:.2f}' for x in os.getloadavg())}", flush=True)
    try:
        for instances in (1, 2) if "burst" in measures else ():
            result = due_together(options.jobs, instances, options.concurrency)
            print(
                f"{options.jobs} due together, {instances} instance(s): {result['per_second']:.0f} occurrences/s, "
                f"lag p50 {result['lag_p50_ms']:.0f} ms, p99 {result['lag_p99_ms']:.0f} ms "
                f"(ran on {', '.join(result['instances'])}); first start to last finish "
                f"{result['runs_per_second']:.0f}/s; CPU per "
                f"occurrence: scheduler {result['cpu_ms']['scheduler']:.2f} ms + PostgreSQL "
                f"{result['cpu_ms']['postgresql']:.2f} ms",
                flush=True,
            )
        if "procrastinate" in measures:
            concurrency = options.concurrency or settings.SCHEDULER_CONCURRENCY
            peer = procrastinate_peer(options.jobs, concurrency)
            print(
                f"Procrastinate {peer['version']}, one worker (concurrency {concurrency}) draining {options.jobs} "
                f"deferred jobs that each insert a row: {peer['per_second']:.0f} jobs/s "
                f"(worker start to exit: {peer['per_second_wall']:.0f} jobs/s)",
                flush=True,
            )
        if "statements" in measures:
            per = statements_per_occurrence(options.jobs, options.concurrency)
            detail = ", ".join(f"{kind} {n:.2f}" for kind, n in sorted(per.items(), key=lambda kv: -kv[1])[:8])
            print(
                f"{options.jobs} due together, one instance, traced: {per['statements']:.2f} statements and "
                f"{per['round_trips']:.2f} round trips per occurrence ({detail})",
                flush=True,
            )
        if "lone" in measures:
            result = lone_job_lag(options.lone_samples)
            print(
                f"lone due job, {result['samples']} instants: lag p50 {result['lag_p50_ms']:.1f} ms, "
                f"p99 {result['lag_p99_ms']:.1f} ms",
                flush=True,
            )
        if "idle" in measures and options.idle_seconds:
            result = idle_cpu(options.idle_definitions, options.idle_seconds)
            print(
                f"idle with {result['definitions']} cron definitions over {result['seconds']} s: "
                f"{result['cpu_percent']:.2f} % CPU",
                flush=True,
            )
        print(f"load average after: {' '.join(f'{x:.2f}' for x in os.getloadavg())}", flush=True)
    finally:
        connection.close()
        DATABASE.drop()


if __name__ == "__main__":
    main()
