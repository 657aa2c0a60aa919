"""One-off runs (issue 25) against the local PostgreSQL: fire lag, idle CPU, schedule_many, a due burst (run by hand).

    make bench-oneoff
    # or: DATABASE_URL=postgres://postgres@127.0.0.1:5432/bookworm_scheduler \
    #     .venv/bin/python bench/oneoff_runs.py [--burst 10000] [--waiting 100000] [--idle-seconds 60] \
    #         [--measures lone,idle,many,burst,procrastinate]

It creates (and drops at the end) its own database, `<name>_bench_oneoff`, and runs real
`manage.py runscheduler` subprocesses (inline executor) against it. The job is bench.publish
(bench/sample_jobs.py: one outbox message). Measured:

1. lone: the fire lag (attempt start - scheduled_for) of one-off runs scheduled one at a time,
   each due 0.5-1.5 s after it is scheduled, on one idle instance, --lone-samples of them; then,
   on a new instance, the lone cron job of bench/scheduler_throughput.py (one
   definition every second);
2. idle: the CPU of an idle runscheduler over --idle-seconds (its process, and the PostgreSQL
   backends serving it, from /proc), with no one-off run waiting and with --waiting of them due
   in 1 to 2 days; then EXPLAIN (ANALYZE, BUFFERS) of the two reads an idle pass sends about
   ready occurrences: store.next_ready_at (the next due instant) and the claim (sql.claim), and of
   the console's list of upcoming one-off runs (jobs.web.oneoff_admin.upcoming, its first 20);
3. many: schedule_many of --burst runs (each with a payload; then each with a key too) in one
   transaction, in this process, --many-tries times each; the median and the range;
4. burst: --burst one-off runs due at one instant (schedule_many a few seconds ahead) drained by one
   instance: runs per second from the due instant to the last recorded success, lag p50 / p99, CPU
   per run (scheduler + PostgreSQL); beside it in the same run, --cron-jobs cron definitions due at
   one instant (the burst of bench/scheduler_throughput.py);
5. procrastinate: the PostgreSQL peer, Procrastinate 3.x, --burst jobs deferred with
   schedule_at (batch_defer_async), one worker started at their due instant with the same
   concurrency (bench/procrastinate_peer.py --schedule-at-seconds, in .venv-procrastinate).
"""

import argparse
import json
import os
import signal
import statistics
import subprocess
import sys
import time
import uuid
from datetime import timedelta
from pathlib import Path

ROOT = Path(__file__).resolve().parent.parent
sys.path.insert(0, str(ROOT))

from bench.database import scheduler_bench  # noqa: E402
from bench.processes import cpu_seconds  # noqa: E402

DATABASE = scheduler_bench("_bench_oneoff")

from django.conf import settings  # noqa: E402
from django.core.management import call_command  # noqa: E402
from django.db import connection, transaction  # noqa: E402
from django.utils import timezone  # noqa: E402
from django_celery_beat.models import IntervalSchedule, PeriodicTask, PeriodicTasks  # noqa: E402

from jobs import Run, schedule, schedule_many  # noqa: E402
from jobs.engine import sql, store  # noqa: E402
from jobs.models import Attempt, Occurrence  # noqa: E402
from jobs.web.oneoff_admin import UPCOMING_ON_JOB_PAGE, upcoming  # noqa: E402
from outbox.models import OutboxMessage  # noqa: E402

JOB = "bench.publish"


def percentile(values, q):
    ordered = sorted(values)
    return ordered[min(len(ordered) - 1, int(round(q / 100 * (len(ordered) - 1))))]


def start_scheduler(concurrency: int | None = None) -> subprocess.Popen:
    args = [sys.executable, str(ROOT / "manage.py"), "runscheduler", "--instance-id", "bench-oneoff"]
    if concurrency:
        args += ["--concurrency", str(concurrency)]
    env = dict(os.environ, DATABASE_CONN_MAX_AGE="600")
    return subprocess.Popen(args, env=env, stdout=subprocess.DEVNULL)


def stop(process: subprocess.Popen) -> None:
    process.send_signal(signal.SIGTERM)
    process.wait(60)


def reset() -> None:
    Attempt.objects.all().delete()
    Occurrence.objects.all().delete()
    OutboxMessage.objects.all().delete()
    PeriodicTask.objects.all().delete()
    PeriodicTasks.update_changed()


def cpu_snapshot(process: subprocess.Popen) -> dict:
    """CPU seconds of the scheduler ("s", pid) and of the PostgreSQL backends of the bench's database but
    this script's own ("p", pid); a backend started later counts whole."""
    with connection.cursor() as cursor:
        cursor.execute(
            "SELECT pid FROM pg_stat_activity WHERE datname = current_database() AND pid <> pg_backend_pid()"
        )
        backends = [pid for (pid,) in cursor.fetchall()]
    return {("s", process.pid): cpu_seconds(process.pid)} | {("p", pid): cpu_seconds(pid) for pid in backends}


def cpu_used(before: dict, after: dict) -> dict:
    return {kind: sum(cpu - before.get((k, pid), 0.0) for (k, pid), cpu in after.items() if k == kind) for kind in "sp"}


def lags_ms(limit: int | None = None) -> list[float]:
    pairs = Attempt.objects.order_by("id").values_list("started_at", "occurrence__scheduled_for")
    return [(started - scheduled).total_seconds() * 1000 for started, scheduled in pairs[:limit]]


def summary(lags: list[float]) -> dict:
    return {"samples": len(lags), "lag_p50_ms": statistics.median(lags), "lag_p99_ms": percentile(lags, 99)}


def wait_succeeded(count: int, timeout: float, every: float = 0.05) -> None:
    deadline = time.monotonic() + timeout
    while Occurrence.objects.filter(status="succeeded").count() < count:
        if time.monotonic() > deadline:
            raise SystemExit(f"only {Occurrence.objects.filter(status='succeeded').count()} of {count} succeeded")
        time.sleep(every)


def lone(samples: int) -> dict:
    """One-off runs one at a time, each due 0.5-1.5 s after it is committed; then the lone cron job."""
    reset()
    process = start_scheduler()
    try:
        time.sleep(3)
        for n in range(samples):
            # A fresh fraction of a second each time: due instants not lined up with the poll or lease timers.
            schedule(JOB, at=timezone.now() + timedelta(seconds=0.5 + (n * 0.37) % 1), payload={"n": n})
            wait_succeeded(n + 1, timeout=30, every=0.02)
    finally:
        stop(process)
    oneoff = summary(lags_ms())
    reset()
    process = start_scheduler()
    try:
        time.sleep(3)
        start = timezone.now().replace(microsecond=0) + timedelta(seconds=2)
        interval, _ = IntervalSchedule.objects.get_or_create(every=1, period=IntervalSchedule.SECONDS)
        PeriodicTask.objects.create(name="lone", task=JOB, interval=interval, start_time=start)
        wait_succeeded(samples, timeout=samples + 30, every=0.5)
    finally:
        stop(process)
    return {"oneoff": oneoff, "cron": summary(lags_ms(samples))}


def waiting_runs(count: int) -> None:
    """`count` one-off runs due in 1 to 2 days, spread over that day, inserted 10,000 a transaction."""
    start = timezone.now() + timedelta(days=1)
    for first in range(0, count, 10000):
        with transaction.atomic():
            schedule_many(
                Run(JOB, at=start + timedelta(seconds=86400 * n / count), payload={"n": n})
                for n in range(first, min(first + 10000, count))
            )


def idle_window(seconds: int) -> dict:
    process = start_scheduler()
    try:
        time.sleep(15)  # start-up
        before, started = cpu_snapshot(process), time.monotonic()
        time.sleep(seconds)
        after, elapsed = cpu_snapshot(process), time.monotonic() - started
    finally:
        stop(process)
    used = cpu_used(before, after)
    return {
        "seconds": round(elapsed),
        "scheduler_percent": 100 * used["s"] / elapsed,
        "postgresql_percent": 100 * used["p"] / elapsed,
    }


def explain(statement: str, params) -> str:
    """EXPLAIN (ANALYZE, BUFFERS) of a statement, in a transaction rolled back (it changes nothing)."""
    with transaction.atomic(), connection.cursor() as cursor:
        cursor.execute("EXPLAIN (ANALYZE, BUFFERS, COSTS OFF) " + statement, params)
        plan = "\n".join(row[0] for row in cursor.fetchall())
        transaction.set_rollback(True)
    return plan


def explain_generic(statement: str, params) -> str:
    """The same, of the generic plan PostgreSQL may keep for a prepared statement after five executions
    (the scheduler's hot statements are prepared: bookworm_scheduler.kernel.db.prepared_cursor)."""
    numbered = statement
    for n in range(1, len(params) + 1):
        numbered = numbered.replace("%s", f"${n}", 1)
    with transaction.atomic(), connection.cursor() as cursor:
        cursor.execute("SET LOCAL plan_cache_mode = force_generic_plan")
        cursor.execute(f"PREPARE bench_generic AS {numbered}")
        placeholders = ", ".join(["%s"] * len(params))
        cursor.execute(f"EXPLAIN (ANALYZE, BUFFERS, COSTS OFF) EXECUTE bench_generic({placeholders})", params)
        plan = "\n".join(row[0] for row in cursor.fetchall())
        cursor.execute("DEALLOCATE bench_generic")
        transaction.set_rollback(True)
    return plan


def ready_plans() -> dict:
    """The plans of what an idle pass reads about ready occurrences (store.next_ready_at, store.claim_ready)."""
    now = timezone.now()
    next_ready = Occurrence.objects.filter(status="scheduled").order_by("run_after").values_list("run_after")[:1]
    query, params = next_ready.query.sql_with_params()
    claim, _, _ = sql.claim(connection.alias, False)
    session = "00000000-0000-0000-0000-000000000000"
    claim_params = ["running", "bench", session, now + timedelta(minutes=5), now, now, 2]
    first_page = upcoming(Occurrence.objects.all())[:UPCOMING_ON_JOB_PAGE].query.sql_with_params()
    return {
        "next_ready_at": explain(query, params),
        "claim": explain(claim, claim_params),
        "claim, generic plan": explain_generic(claim, claim_params),
        "the console's upcoming one-off runs (first 20)": explain(*first_page),
    }


def prepared_claims(calls: int = 20) -> dict:
    """The claim as the scheduler sends it (store.claim_ready, a prepared statement), `calls` times with nothing
    ready: the mean time of a call, and the plans PostgreSQL chose for it (pg_prepared_statements)."""
    session = uuid.uuid4()
    began = time.perf_counter()
    for _ in range(calls):
        claimed = store.claim_ready(
            now=timezone.now(), session=session, scheduler="bench", lease=timedelta(minutes=5), long_running=False
        )
        assert not claimed, "a waiting run was claimed"
    mean_ms = (time.perf_counter() - began) / calls * 1000
    with connection.cursor() as cursor:
        cursor.execute("SELECT generic_plans, custom_plans FROM pg_prepared_statements WHERE statement LIKE 'UPDATE%%'")
        plans = cursor.fetchall()
    return {"calls": calls, "mean_ms": mean_ms, "plans": plans}


def idle(waiting: int, seconds: int) -> dict:
    reset()
    empty = idle_window(seconds)
    began = time.monotonic()
    waiting_runs(waiting)
    inserted = time.monotonic() - began
    with connection.cursor() as cursor:
        cursor.execute(f"VACUUM ANALYZE {Occurrence._meta.db_table}")
    full = idle_window(seconds)
    assert Occurrence.objects.filter(status="scheduled").count() == waiting, "a waiting run was claimed"
    return {
        "empty": empty,
        "waiting": full,
        "insert_s": inserted,
        "plans": ready_plans(),
        "prepared": prepared_claims(),
    }


def many(runs: int, tries: int) -> dict:
    """schedule_many of `runs` in one transaction, timed from the call to the commit."""
    reset()
    results = {}
    for keyed in (False, True):
        times = []
        for attempt in range(tries):
            at = timezone.now() + timedelta(days=1)
            batch = [
                Run(JOB, at=at, payload={"order_id": n}, key=f"reminder:{attempt}:{n}" if keyed else None)
                for n in range(runs)
            ]
            began = time.perf_counter()
            with transaction.atomic():
                schedule_many(batch)
            times.append(time.perf_counter() - began)
            assert Occurrence.objects.count() == runs
            Occurrence.objects.all().delete()
        results["keyed" if keyed else "plain"] = times
    return results


def burst(runs: int, concurrency: int | None) -> dict:
    """`runs` one-off runs due at one instant, scheduled a few seconds ahead, drained by one instance."""
    reset()
    process = start_scheduler(concurrency)
    try:
        time.sleep(3)
        due = timezone.now().replace(microsecond=0) + timedelta(seconds=5)
        began = time.monotonic()
        with transaction.atomic():
            schedule_many(Run(JOB, at=due, payload={"n": n}) for n in range(runs))
        scheduled_s = time.monotonic() - began
        time.sleep(max((due - timezone.now()).total_seconds() - 0.3, 0))
        before = cpu_snapshot(process)
        wait_succeeded(runs, timeout=300, every=0.2)
        after = cpu_snapshot(process)
    finally:
        stop(process)
    return drained(runs, due, before, after) | {"scheduled_s": scheduled_s}


def cron_burst(jobs: int, concurrency: int | None) -> dict:
    """`jobs` cron definitions due at one instant (bench/scheduler_throughput.py's burst)."""
    reset()
    process = start_scheduler(concurrency)
    try:
        time.sleep(3)
        due = timezone.now().replace(microsecond=0) + timedelta(seconds=4)
        interval, _ = IntervalSchedule.objects.get_or_create(every=3600, period=IntervalSchedule.SECONDS)
        PeriodicTask.objects.bulk_create(
            PeriodicTask(name=f"due-{n}", task=JOB, interval=interval, start_time=due) for n in range(jobs)
        )
        PeriodicTasks.update_changed()
        time.sleep(max((due - timezone.now()).total_seconds() - 0.3, 0))
        before = cpu_snapshot(process)
        wait_succeeded(jobs, timeout=300, every=0.2)
        after = cpu_snapshot(process)
    finally:
        stop(process)
    return drained(jobs, due, before, after)


def drained(count: int, due, before: dict, after: dict) -> dict:
    done = Occurrence.objects.filter(status="succeeded")
    assert done.count() == count and OutboxMessage.objects.count() == count, "a run missing or doubled"
    last = max(done.values_list("finished_at", flat=True))
    used = cpu_used(before, after)
    return summary(lags_ms()) | {
        "per_second": count / (last - due).total_seconds(),
        "cpu_ms": {"scheduler": 1000 * used["s"] / count, "postgresql": 1000 * used["p"] / count},
    }


def procrastinate_peer(jobs: int, concurrency: int) -> dict:
    python = Path(os.environ.get("PROCRASTINATE_PYTHON", ROOT / ".venv-procrastinate" / "bin" / "python"))
    if not python.exists():
        raise SystemExit(f"{python} is missing: `make bench-oneoff` creates it (bench/requirements-procrastinate.txt)")
    database = DATABASE.name.removesuffix("_bench_oneoff") + "_bench_procrastinate"
    result = subprocess.run(
        [str(python), str(ROOT / "bench" / "procrastinate_peer.py"), DATABASE.url, database, "--jobs", str(jobs)]
        + ["--concurrency", str(concurrency), "--schedule-at-seconds", "5"],
        capture_output=True,
        text=True,
        timeout=900,
        check=True,
    )
    return json.loads(result.stdout.strip().splitlines()[-1])


def report(measures: set, options) -> None:
    concurrency = options.concurrency or settings.SCHEDULER_CONCURRENCY
    if "burst" in measures:
        r = burst(options.burst, options.concurrency)
        print(
            f"{options.burst} one-off runs due at one instant, one instance: {r['per_second']:.0f} runs/s, lag p50 "
            f"{r['lag_p50_ms']:.0f} ms, p99 {r['lag_p99_ms']:.0f} ms; CPU per run: scheduler "
            f"{r['cpu_ms']['scheduler']:.2f} ms + PostgreSQL {r['cpu_ms']['postgresql']:.2f} ms "
            f"(scheduled in {r['scheduled_s']:.2f} s)",
            flush=True,
        )
        r = cron_burst(options.cron_jobs, options.concurrency)
        print(
            f"{options.cron_jobs} cron definitions due at one instant, one instance: {r['per_second']:.0f} occ/s, "
            f"lag p50 {r['lag_p50_ms']:.0f} ms, p99 {r['lag_p99_ms']:.0f} ms; CPU per occurrence: scheduler "
            f"{r['cpu_ms']['scheduler']:.2f} ms + PostgreSQL {r['cpu_ms']['postgresql']:.2f} ms",
            flush=True,
        )
    if "procrastinate" in measures:
        peer = procrastinate_peer(options.burst, concurrency)
        print(
            f"Procrastinate {peer['version']}, {options.burst} jobs deferred with schedule_at (batch_defer_async "
            f"{peer['defer_s']:.2f} s), one worker (concurrency {concurrency}) started at their due instant: "
            f"{peer['due_to_last_per_second']:.0f} jobs/s from the due instant to the last finished, "
            f"{peer['per_second']:.0f} jobs/s from the first started",
            flush=True,
        )
    if "many" in measures:
        r = many(options.burst, options.many_tries)
        for kind, times in r.items():
            print(
                f"schedule_many of {options.burst} runs ({kind}) in one transaction, {len(times)} tries: median "
                f"{statistics.median(times):.3f} s ({min(times):.3f}-{max(times):.3f} s)",
                flush=True,
            )
    if "lone" in measures:
        r = lone(options.lone_samples)
        for kind, s in r.items():
            print(
                f"lone {kind} run, {s['samples']} samples: lag p50 {s['lag_p50_ms']:.1f} ms, "
                f"p99 {s['lag_p99_ms']:.1f} ms",
                flush=True,
            )
    if "idle" in measures:
        r = idle(options.waiting, options.idle_seconds)
        for kind, count in (("empty", 0), ("waiting", options.waiting)):
            w = r[kind]
            print(
                f"idle runscheduler, {count} one-off runs waiting, over {w['seconds']} s: scheduler "
                f"{w['scheduler_percent']:.2f} % CPU, its PostgreSQL backends {w['postgresql_percent']:.2f} %",
                flush=True,
            )
        print(f"({options.waiting} waiting runs inserted in {r['insert_s']:.1f} s)", flush=True)
        p = r["prepared"]
        print(
            f"the claim as the scheduler sends it, {p['calls']} calls with {options.waiting} runs waiting: "
            f"{p['mean_ms']:.2f} ms each; (generic, custom) plans of the prepared statement: {p['plans']}",
            flush=True,
        )
        for name, plan in r["plans"].items():
            print(f"plan of {name} with {options.waiting} runs waiting:\n{plan}", flush=True)


def main():
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--burst", type=int, default=10000, help="runs due at one instant, and per schedule_many")
    parser.add_argument("--cron-jobs", type=int, default=1000, help="cron definitions due at one instant")
    parser.add_argument("--concurrency", type=int, default=None, help="default: SCHEDULER_CONCURRENCY")
    parser.add_argument("--lone-samples", type=int, default=30)
    parser.add_argument("--waiting", type=int, default=100000)
    parser.add_argument("--idle-seconds", type=int, default=60)
    parser.add_argument("--many-tries", type=int, default=5)
    parser.add_argument("--measures", default="burst,procrastinate,many,lone,idle")
    options = parser.parse_args()
    measures = set(options.measures.split(","))
    call_command("migrate", verbosity=0)
    print(f"load average before: {' '.join(f'{x:.2f}' for x in os.getloadavg())}", flush=True)
    try:
        report(measures, options)
        print(f"load average after: {' '.join(f'{x:.2f}' for x in os.getloadavg())}", flush=True)
    finally:
        connection.close()
        DATABASE.drop()


if __name__ == "__main__":
    main()
