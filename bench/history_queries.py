"""The scheduler's queries on a million history rows, and pruning a million-row backlog (run by hand).

    DATABASE_URL=postgres://postgres@127.0.0.1:5432/bookworm_scheduler DEBUG=1 \
    .venv/bin/python bench/history_queries.py [--rows 1000000] [--backlog 500000] [--runs 3] [--keep-database]

It creates (and drops at the end) its own database, `<name>_bench_history`, migrates it and seeds
it in SQL (one INSERT ... SELECT FROM generate_series each, not the ORM): 1,000,000 finished
occurrences of 200 job names (five of them rare, five whose definition was deleted) over the
last 60 days, one attempt row for each that ran, and the live rows of a busy moment: 50 ready
now, 200 pending retries due in an hour or more, 20 running (5 with an expired lease). Then
VACUUM (ANALYZE), as autovacuum would have done. Measured:

1. EXPLAIN (ANALYZE, BUFFERS) of exactly the SQL the code sends, captured with execute_wrapper
   while the real code runs in a transaction that is rolled back (so the data stays): the next
   due instant, the claim (normal and long-running; again during a burst of 1,000 more ready
   rows), the expired leases, lease renewal, the search by job name (the queryset and the admin
   page itself), `jobs history --job`, and one prune batch (its deferred foreign-key checks made
   immediate so that their cost shows);
2. pruning a backlog: 500,000 more rows 60 to 90 days old make about 1,000,000 older than 30
   days; then store.prune as the scheduler calls it (PRUNE_BATCH rows per transaction,
   PRUNE_BATCHES per call) until done: total time, rows/s, the length of every transaction
   (first statement to after COMMIT), and from a second process (Watch), every 20 ms, the
   pruning backend's transaction age in pg_stat_activity and lock waits in pg_locks, and every
   100 ms the time of the per-tick queries (next due instant, claim) sent meanwhile.

docs/queries.md reports the figures.
"""

import argparse
import functools
import json
import os
import re
import signal
import statistics
import subprocess
import sys
import threading
import time
import uuid
from contextlib import contextmanager
from datetime import timedelta
from io import StringIO
from pathlib import Path

sys.path.insert(0, str(Path(__file__).resolve().parent.parent))
os.environ.setdefault("DJANGO_SETTINGS_MODULE", "bookworm_scheduler.settings")
os.environ.setdefault("DEBUG", "1")
os.environ.setdefault("LOG_LEVEL", "WARNING")


from bench.database import BenchDatabase  # noqa: E402

CONFIGURED_URL = os.environ.get("DATABASE_URL")
DATABASE = BenchDatabase("_bench_history")
DATABASE.use()

import django  # noqa: E402

django.setup()

from django.conf import settings  # noqa: E402
from django.contrib.auth import get_user_model  # noqa: E402
from django.core.management import call_command  # noqa: E402
from django.db import connection, transaction  # noqa: E402
from django.test import Client  # noqa: E402
from django_celery_beat.models import IntervalSchedule, PeriodicTask  # noqa: E402

from bookworm_scheduler.kernel.clock import database_now  # noqa: E402
from jobs.engine import store  # noqa: E402
from jobs.engine.loop import PRUNE_BATCH, PRUNE_BATCHES  # noqa: E402
from jobs.models import Occurrence  # noqa: E402

NAMES = 200
RARE = range(195, 200)  # about 20 rows each
DELETED = range(185, 190)  # history kept by name, definition gone
COMMON_NAME, RARE_NAME, DELETED_NAME = "job-001", "job-197", "job-187"
KEEP = timedelta(days=settings.SCHEDULER_HISTORY_DAYS)
LEASE = timedelta(seconds=settings.SCHEDULER_LEASE_SECONDS)
LIVE_SESSION = uuid.UUID("11111111-1111-1111-1111-111111111111")
DEAD_SESSION = uuid.UUID("dddddddd-dddd-dddd-dddd-dddddddddddd")

# The job's priority follows from its number k (as a JobPolicy would give it). These fragments
# go into statements with parameters, where a literal % is written %%.
PRIORITY = "CASE WHEN {k} %% 25 = 0 THEN 3 WHEN {k} %% 10 = 0 THEN 2 WHEN {k} %% 7 = 0 THEN 0 ELSE 1 END"
NAME = "'job-' || lpad(({k})::text, 3, '0')"
COLUMNS = (
    "task_id, job_name, scheduled_for, manual, triggered_by, priority, status, run_after, attempts, "
    "scheduler, session, lease_expires_at, started_at, finished_at, reason, created_at"
)
TRACEBACK = (
    "Traceback (most recent call last):\n"
    '  File "/app/jobs/runner.py", line 91, in run\n    result = job(**kwargs)\n'
    '  File "/app/catalog/jobs.py", line 44, in sync_feeds\n    response.raise_for_status()\n'
    "RuntimeError: upstream returned 503\n"
)


# Seeding, in SQL.


def execute(sql: str, params=None) -> int:
    with connection.cursor() as cursor:
        cursor.execute(sql, params)
        return cursor.rowcount


def seed_definitions() -> None:
    """One interval definition per job name, except the deleted ones."""
    hourly, _ = IntervalSchedule.objects.get_or_create(every=1, period=IntervalSchedule.HOURS)
    PeriodicTask.objects.bulk_create(
        PeriodicTask(name=f"job-{k:03d}", task="bench.publish", interval=hourly)
        for k in range(NAMES)
        if k not in DELETED
    )


def seed_history(count: int, *, days_ago: int, until_days_ago: int) -> int:
    """`count` finished occurrences evenly spread from days_ago to until_days_ago, and their attempts.

    Job k is drawn with a skew (job-000 is the most frequent, about 3 %), the RARE jobs with
    probability 1/10,000; 93 % succeeded, 4 % failed, 2 % missed, 1 % skipped.
    """
    now = database_now()
    start = now - timedelta(days=days_ago)
    step = (timedelta(days=days_ago - until_days_ago) - timedelta(seconds=5)) / count
    after = Occurrence.objects.order_by("-id").values_list("id", flat=True).first() or 0
    inserted = execute(
        f"""
        WITH drawn AS (
            SELECT g, %(start)s::timestamptz + (g - 1) * %(step)s::interval AS at,
                   CASE WHEN random() < 0.0001 THEN {RARE.start} + floor(random() * {len(RARE)})
                        ELSE floor({RARE.start} * power(random(), 1.5)) END::int AS k,
                   random() AS u,
                   make_interval(secs => 0.005 + random() * 0.05) AS lag,
                   make_interval(secs => 0.05 + random() * 5) AS took
              FROM generate_series(1, %(count)s) AS g
        ), shaped AS (
            SELECT drawn.*, {NAME.format(k="k")} AS name, {PRIORITY.format(k="k")} AS priority,
                   CASE WHEN u < 0.93 THEN 'succeeded' WHEN u < 0.97 THEN 'failed'
                        WHEN u < 0.99 THEN 'missed' ELSE 'skipped' END AS status,
                   u < 0.97 AS ran, g %% 500 = 0 AS manual,
                   CASE WHEN g %% 2 = 0 THEN 'sched-a' ELSE 'sched-b' END AS scheduler
              FROM drawn
        )
        INSERT INTO jobs_occurrence ({COLUMNS})
        SELECT task.id, s.name, s.at, s.manual, CASE WHEN s.manual THEN 'admin' ELSE '' END, s.priority, s.status,
               s.at, CASE WHEN s.ran THEN 1 ELSE 0 END, CASE WHEN s.ran THEN s.scheduler ELSE '' END,
               CASE WHEN s.ran THEN md5(s.scheduler)::uuid END, NULL,
               CASE WHEN s.ran THEN s.at + s.lag END,
               CASE WHEN s.ran THEN s.at + s.lag + s.took ELSE s.at + s.took * 60 END,
               CASE s.status WHEN 'failed' THEN 'RuntimeError: upstream returned 503'
                             WHEN 'missed' THEN 'missed: fell due while no scheduler was running'
                             WHEN 'skipped' THEN 'definition disabled' ELSE '' END,
               s.at
          FROM shaped AS s LEFT JOIN django_celery_beat_periodictask task ON task.name = s.name
         ORDER BY s.g
        """,
        {"start": start, "step": step, "count": count},
    )
    seed_attempts(after)
    return inserted


def seed_attempts(after_id: int) -> int:
    """Attempt 1 of every occurrence after after_id that ran (finished, or failed and waiting to retry)."""
    return execute(
        """
        INSERT INTO jobs_attempt (occurrence_id, number, status, scheduler, started_at, finished_at, duration,
                                  error, traceback)
        SELECT id, 1, CASE WHEN status = 'succeeded' THEN 'succeeded' ELSE 'failed' END, scheduler, started_at,
               COALESCE(finished_at, started_at + interval '1 second'),
               COALESCE(finished_at, started_at + interval '1 second') - started_at,
               reason, CASE WHEN status = 'succeeded' THEN '' ELSE %(traceback)s END
          FROM jobs_occurrence
         WHERE id > %(after)s AND attempts >= 1 AND status <> 'running'
         ORDER BY id
        """,
        {"after": after_id, "traceback": TRACEBACK},
    )


AT = "%(now)s::timestamptz - g * interval '{} second'"
# The columns after task_id and job_name of the live rows, per kind; job k of row g is given with them.
READY = (
    "(g * 7) %% 185",
    f"{AT.format(1)}, false, '', {PRIORITY.format(k='(g * 7) %% 185')}, 'scheduled', {AT.format(1)}, "
    f"0, '', NULL, NULL, NULL, NULL, '', {AT.format(1)}",
)
PENDING_RETRIES = (
    "(g * 11) %% 185",
    f"{AT.format(17.25)}, false, '', {PRIORITY.format(k='(g * 11) %% 185')}, 'scheduled', "
    f"%(now)s::timestamptz + interval '1 hour' + g * interval '9 second', 1, 'sched-a', md5('sched-a')::uuid, "
    f"NULL, {AT.format(17.25)} + interval '10 millisecond', NULL, 'RuntimeError: upstream returned 503', "
    f"{AT.format(17.25)}",
)
RUNNING = (
    "(g * 13) %% 185",
    f"{AT.format(3.5)}, false, '', {PRIORITY.format(k='(g * 13) %% 185')}, 'running', {AT.format(3.5)}, 1, "
    "CASE WHEN g <= 15 THEN 'sched-a' ELSE 'sched-dead' END, "
    "CASE WHEN g <= 15 THEN %(live)s::uuid ELSE %(dead)s::uuid END, "
    "CASE WHEN g <= 15 THEN %(now)s::timestamptz + interval '1 hour' "
    "ELSE %(now)s::timestamptz - interval '5 minutes' END, "
    f"{AT.format(3.5)}, NULL, '', {AT.format(3.5)}",
)


def insert_live(count: int, kind: tuple[str, str]) -> int:
    """`count` live rows of a kind (READY, PENDING_RETRIES, RUNNING), as of the database's now."""
    k, columns = kind
    return execute(
        f"""
        INSERT INTO jobs_occurrence ({COLUMNS})
        SELECT task.id, task.name, {columns}
          FROM generate_series(1, {count}) AS g
          JOIN django_celery_beat_periodictask task ON task.name = {NAME.format(k=k)}
        ON CONFLICT DO NOTHING
        """,
        {"now": database_now(), "live": LIVE_SESSION, "dead": DEAD_SESSION},
    )


def seed_live_rows() -> dict[str, int]:
    """The rows of a busy moment: ready now, pending retries (due in an hour or more), running.

    The future instants are far enough ahead that nothing falls due, and no live lease
    expires, while the queries are measured (no scheduler runs to renew them).
    """
    after = Occurrence.objects.order_by("-id").values_list("id", flat=True).first()
    live = {
        "ready": insert_live(50, READY),
        "pending retries": insert_live(200, PENDING_RETRIES),
        "running": insert_live(20, RUNNING),
    }
    live["attempts of pending retries"] = seed_attempts(after)
    return live


def vacuum_analyze() -> float:
    started = time.perf_counter()
    execute("VACUUM (ANALYZE) jobs_occurrence")
    execute("VACUUM (ANALYZE) jobs_attempt")
    return time.perf_counter() - started


def seed(rows: int) -> None:
    call_command("migrate", verbosity=0)
    seed_definitions()
    started = time.perf_counter()
    count = seed_history(rows, days_ago=60, until_days_ago=0)
    seeded = time.perf_counter() - started
    live = seed_live_rows()
    vacuumed = vacuum_analyze()
    print(f"seeded {count:,} finished occurrences and their attempts in {seeded:.1f} s; live rows: {live}")
    print(f"VACUUM (ANALYZE) in {vacuumed:.1f} s; {describe_table()}")
    print(
        "rows per name: "
        + ", ".join(
            f"{name} {Occurrence.objects.filter(job_name__iexact=name).count():,}"
            for name in ("job-000", COMMON_NAME, RARE_NAME, DELETED_NAME)
        )
    )
    print(f"server: {server_settings()}", flush=True)


def describe_table() -> str:
    with connection.cursor() as cursor:
        cursor.execute(
            "SELECT (SELECT count(*) FROM jobs_occurrence), (SELECT count(*) FROM jobs_attempt), "
            "pg_size_pretty(pg_table_size('jobs_occurrence')), pg_size_pretty(pg_indexes_size('jobs_occurrence')), "
            "pg_size_pretty(pg_total_relation_size('jobs_attempt'))"
        )
        occurrences, attempts, table, indexes, attempt_size = cursor.fetchone()
    return (
        f"jobs_occurrence {occurrences:,} rows ({table} + {indexes} of indexes), "
        f"jobs_attempt {attempts:,} rows ({attempt_size})"
    )


def server_settings() -> str:
    with connection.cursor() as cursor:
        cursor.execute(
            "SELECT name, setting FROM pg_settings WHERE name IN ('server_version', 'shared_buffers', 'work_mem', "
            "'autovacuum', 'random_page_cost', 'synchronous_commit') ORDER BY name"
        )
        return ", ".join(f"{name}={value}" for name, value in cursor.fetchall())


# Capturing what the code sends, and explaining it.


@contextmanager
def rolled_back():
    """A transaction that is rolled back at the end: what happens inside leaves no trace."""
    with transaction.atomic():
        yield
        transaction.set_rollback(True)


def capture(action) -> tuple[object, list[tuple[str, object]]]:
    """Run action in a rolled-back transaction: what it returned, and the statements (with their
    params) it sent to the tables of the jobs app."""
    statements = []

    def record(execute, sql, params, many, context):
        if not many and ('"jobs_' in sql or " jobs_" in sql):
            statements.append((sql, params))
        return execute(sql, params, many, context)

    with connection.execute_wrapper(record), rolled_back():
        result = action()
    return result, statements


def plans_of(statements, *, setup=(), runs: int = 1) -> tuple[list[list[str]], list[list[float]]]:
    """EXPLAIN (ANALYZE, BUFFERS) of each statement, in order in one rolled-back transaction, `runs` times.

    Returns the plans of the last run, and the execution times (ms) of each statement in every run.
    """
    timings = [[] for _ in statements]
    for _ in range(runs):
        plans = []
        with rolled_back(), connection.cursor() as cursor:
            for sql in setup:
                cursor.execute(sql)
            for n, (sql, params) in enumerate(statements):
                cursor.execute("EXPLAIN (ANALYZE, BUFFERS) " + sql, params)
                plan = [row[0] for row in cursor.fetchall()]
                timings[n].append(plan_ms(plan, "Execution Time"))
                plans.append(plan)
    return plans, timings


def explain(statements, *, setup=(), runs: int = 3) -> list[list[str]]:
    """Print the plans of the statements (see plans_of) and their execution times in every run."""
    plans, timings = plans_of(statements, setup=setup, runs=runs)
    for (sql, params), plan, times in zip(statements, plans, timings, strict=True):
        print(f"\n  SQL: {shorten(sql)}\n  params: {shorten(repr(params))}")
        print("  execution ms per run: " + " / ".join(f"{t:.3f}" for t in times))
        print("  " + "\n  ".join(shorten(line) for line in plan))
        check(sql, plan)
    return plans


def shorten(text: str, limit: int = 400) -> str:
    """Long lists of ids (a prune batch's 2,000) cut in the middle."""
    return text if len(text) <= limit else f"{text[: limit - 100]} ... {text[-90:]}"


def plan_ms(plan: list[str], what: str) -> float:
    for line in plan:
        if line.strip().startswith(what):
            return float(re.search(r"([\d.]+) ms", line).group(1))
    return float("nan")


PROBLEMS: list[str] = []


def check(sql: str, plan: list[str]) -> None:
    """Note a sequential scan of jobs_occurrence, and how many rows a filter threw away."""
    text = "\n".join(plan)
    if "Seq Scan on jobs_occurrence" in text:
        PROBLEMS.append(f"sequential scan of jobs_occurrence in: {sql[:120]}")
    removed = sum(int(n) for n in re.findall(r"Rows Removed by (?:Filter|Index Recheck): (\d+)", text))
    indexes = sorted(set(re.findall(r"(?:Index(?: Only)? Scan(?: Backward)? using|Bitmap Index Scan on) (\w+)", text)))
    print(f"  -> indexes: {', '.join(indexes) or 'none'}; rows removed by filters: {removed}")


def section(title: str) -> None:
    print(f"\n=== {title} ===", flush=True)


# The queries (1).


def next_due_instant(runs: int) -> None:
    section("(a) next due instant: store.next_ready_at() (Scheduler.dispatch, every pass)")
    found, statements = capture(store.next_ready_at)
    print(f"  returns {found}")
    explain(statements, runs=runs)


def claim(runs: int, *, title: str = "(b) claim") -> None:
    for long_running, limit in ((False, 2), (True, 1)):
        section(f"{title}, long_running={long_running}, limit={limit}: store.claim_ready -> sql.claim")
        claimed, statements = capture(
            functools.partial(
                store.claim_ready,
                now=database_now(),
                session=uuid.uuid4(),
                scheduler="bench",
                lease=LEASE,
                long_running=long_running,
                limit=limit,
            )
        )
        print(f"  claims (rolled back): {[(o.id, o.priority) for o in claimed]}")
        explain(statements, runs=runs)


def claim_during_a_burst(runs: int) -> None:
    """The claim with 1,000 more ready rows (many instants due at once), which ANALYZE has not seen."""
    with rolled_back():
        inserted = insert_live(1000, READY)
        claim(runs, title=f"(b') claim during a burst ({inserted} more ready rows, rolled back)")


def expired_leases(runs: int) -> None:
    section("(c) expired leases: store.expired_leases(now) (Leases.reap, every lease/3)")
    found, statements = capture(lambda: store.expired_leases(database_now()))
    print(f"  finds {len(found)} expired leases")
    explain(statements, runs=runs)


def renew_leases(runs: int) -> None:
    section("(d) lease renewal: store.renew_leases (Leases.renew, every lease/3)")
    ids = list(Occurrence.objects.filter(status="running", session=LIVE_SESSION).values_list("id", flat=True))
    renewed, statements = capture(
        lambda: store.renew_leases(ids, session=LIVE_SESSION, now=database_now(), lease=LEASE)
    )
    print(f"  renews {renewed} leases (rolled back)")
    explain(statements, runs=runs)


def search_by_name(runs: int) -> None:
    for name in (COMMON_NAME.upper(), RARE_NAME):
        section(f"(e) search by job name {name!r}: filter(job_name__iexact=name).order_by(...)[:100]")
        found, statements = capture(
            lambda name=name: list(
                Occurrence.objects.filter(job_name__iexact=name).order_by("-scheduled_for", "-id")[:100]
            )
        )
        print(f"  finds {len(found)}")
        explain(statements, runs=runs)
    section(f"(e') the admin's occurrence list searched for {COMMON_NAME.upper()!r} (search_fields = ['=job_name'])")
    user = get_user_model().objects.create_superuser("bench", password=None)
    client = Client(HTTP_HOST="localhost")
    client.force_login(user)
    response, statements = capture(lambda: client.get("/tickerq/jobs/occurrence/", {"q": COMMON_NAME.upper()}))
    print(f"  HTTP {response.status_code}; {len(statements)} statements on the jobs tables")
    explain(statements, runs=runs)


def job_history(runs: int) -> None:
    for name, how in ((COMMON_NAME, "definition exists: filter(task=...)"), (DELETED_NAME, "deleted: by job_name")):
        section(f"(f) `manage.py jobs history --job {name}` ({how})")
        _, statements = capture(lambda name=name: call_command("jobs", "history", "--job", name, stdout=StringIO()))
        explain(statements, runs=runs)


def prune_batch(runs: int, *, title: str = "(g) one prune batch: store.prune(batches=1) -> prune_batch") -> None:
    section(f"{title} (foreign-key checks made immediate)")
    deleted, statements = capture(lambda: store.prune(database_now(), keep=KEEP, batch=PRUNE_BATCH, batches=1))
    print(f"  deletes (rolled back): {deleted}")
    explain(statements, setup=["SET CONSTRAINTS ALL IMMEDIATE"], runs=runs)


# Pruning a backlog (2).


class TransactionClock:
    """execute_wrapper: each prune transaction's length, from its first statement to after its COMMIT.

    prune_history's first statement in every transaction is the advisory lock; an on_commit
    callback registered then runs right after that transaction commits. Also times the
    statements by kind (an unknown kind by its first words).
    """

    KINDS = [
        ("lock", "pg_try_advisory_xact_lock"),
        ("select ids", 'SELECT "jobs_occurrence"."id" AS "id" FROM'),
        ("delete attempts", 'DELETE FROM "jobs_attempt"'),
        ("delete occurrences", 'DELETE FROM "jobs_occurrence"'),
        ("select rows", 'SELECT "jobs_occurrence"."id", '),
        ("prune instances", '"jobs_schedulerinstance"'),
        ("database_now", "clock_timestamp()"),
    ]

    def __init__(self):
        self.transactions: list[float] = []
        self.statements: dict[str, list[float]] = {kind: [] for kind, _ in self.KINDS}

    def __call__(self, execute, sql, params, many, context):
        started = time.perf_counter()
        if "pg_try_advisory_xact_lock" in sql:
            transaction.on_commit(lambda: self.transactions.append(time.perf_counter() - started))
        try:
            return execute(sql, params, many, context)
        finally:
            kind = next((kind for kind, marker in self.KINDS if marker in sql), " ".join(sql.split()[:4]))
            self.statements.setdefault(kind, []).append(time.perf_counter() - started)


class Watch:
    """What another process sees while the backlog is pruned (run as `--watch PID` by start_watch).

    Every 20 ms: the pruning backend's transaction age and lock count, and lock waits anywhere
    in the database; every 100 ms, the per-tick queries as a scheduler sends them (the next due
    instant, and a claim of 2, rolled back): their time in PostgreSQL (EXPLAIN ANALYZE of the
    statements the code sent) and as this process saw them. A process of its own, so that it
    neither waits for the GIL of the pruning thread nor makes it wait.
    """

    def __init__(self, pruning_pid: int):
        self.pid = pruning_pid
        self.oldest_transaction = 0.0
        self.most_locks = 0
        self.waits: list[str] = []
        self.samples = 0
        self.tick_ms: list[float] = []
        self.tick_server_ms: list[float] = []

    def run(self, stop: threading.Event) -> None:
        self.tick()  # connects
        self.tick_ms.clear()
        self.tick_server_ms.clear()
        print("ready", flush=True)
        while not stop.wait(0.02):
            self.sample()
            if self.samples % 5 == 0:
                self.tick()
        print(json.dumps(self.__dict__), flush=True)

    def sample(self):
        with connection.cursor() as cursor:
            cursor.execute(
                "SELECT extract(epoch FROM clock_timestamp() - xact_start), "
                "(SELECT count(*) FROM pg_locks l WHERE l.pid = a.pid) FROM pg_stat_activity a WHERE a.pid = %s",
                [self.pid],
            )
            age, locks = cursor.fetchone() or (None, 0)
            cursor.execute(
                "SELECT l.pid, l.locktype, l.mode, l.relation::regclass::text FROM pg_locks l "
                "WHERE NOT l.granted AND l.database = (SELECT oid FROM pg_database WHERE datname = current_database())"
            )
            self.waits += [str(row) for row in cursor.fetchall()]
        self.samples += 1
        self.oldest_transaction = max(self.oldest_transaction, float(age or 0))
        self.most_locks = max(self.most_locks, locks)

    def tick(self):
        def queries():
            store.next_ready_at()
            store.claim_ready(
                now=database_now(), session=uuid.uuid4(), scheduler="watch", lease=LEASE, long_running=False, limit=2
            )

        started = time.perf_counter()
        _, statements = capture(queries)
        self.tick_ms.append((time.perf_counter() - started) * 1000)
        _, timings = plans_of(statements)
        self.tick_server_ms.append(sum(times[0] for times in timings))


def watch(pruning_pid: int) -> None:
    """The watcher process: samples until SIGTERM, then prints what it saw as one JSON line."""
    stop = threading.Event()
    signal.signal(signal.SIGTERM, lambda *_: stop.set())
    try:
        Watch(pruning_pid).run(stop)
    finally:
        connection.close()


def start_watch() -> subprocess.Popen:
    with connection.cursor() as cursor:
        cursor.execute("SELECT pg_backend_pid()")
        pid = cursor.fetchone()[0]
    env = {k: v for k, v in os.environ.items() if k != "DATABASE_URL"}
    if CONFIGURED_URL is not None:
        env["DATABASE_URL"] = CONFIGURED_URL  # the child derives the same benchmark database from it
    process = subprocess.Popen(
        [sys.executable, __file__, "--watch", str(pid)], env=env, stdout=subprocess.PIPE, text=True
    )
    assert process.stdout.readline().strip() == "ready", "the watcher did not start"
    return process


def stop_watch(process: subprocess.Popen) -> dict:
    process.send_signal(signal.SIGTERM)
    out, _ = process.communicate(timeout=60)
    return json.loads(out.strip().splitlines()[-1])


def prune_backlog(rows: int, runs: int) -> None:
    section(f"pruning a backlog: {rows:,} more rows 60 to 90 days old")
    started = time.perf_counter()
    seed_history(rows, days_ago=90, until_days_ago=60)
    print(f"  seeded in {time.perf_counter() - started:.1f} s; VACUUM (ANALYZE) in {vacuum_analyze():.1f} s")
    print(f"  {describe_table()}")
    backlog = Occurrence.objects.finished_before(database_now() - KEEP).count()
    print(f"  finished before now - {KEEP.days} days: {backlog:,}", flush=True)

    watcher = start_watch()
    clock = TransactionClock()
    total, calls = 0, 0
    started = time.perf_counter()
    with connection.execute_wrapper(clock):
        more = True
        while more:
            deleted, more = store.prune(database_now(), keep=KEEP, batch=PRUNE_BATCH, batches=PRUNE_BATCHES)
            total += deleted
            calls += 1
    elapsed = time.perf_counter() - started
    seen = stop_watch(watcher)

    lengths = sorted(t * 1000 for t in clock.transactions)
    print(
        f"  pruned {total:,} occurrences (and their attempts) in {elapsed:.1f} s: {total / elapsed:,.0f} rows/s; "
        f"{calls} calls of store.prune(batch={PRUNE_BATCH}, batches={PRUNE_BATCHES}), {len(lengths)} transactions"
    )
    print(
        f"  transaction length ms: median {statistics.median(lengths):.0f}, p99 {percentile(lengths, 99):.0f}, "
        f"longest {lengths[-1]:.0f}"
    )
    for kind, durations in clock.statements.items():
        if durations:
            ms = [d * 1000 for d in durations]
            print(
                f"  {kind}: {len(ms)} statements, median {statistics.median(ms):.1f} ms, max {max(ms):.1f} ms, "
                f"first ten {statistics.mean(ms[:10]):.1f} ms, last ten {statistics.mean(ms[-10:]):.1f} ms"
            )
    print(
        f"  watched {seen['samples']} times: oldest transaction of the pruner {seen['oldest_transaction'] * 1000:.0f} "
        f"ms, most locks it held {seen['most_locks']}, lock waits seen {len(seen['waits'])} {seen['waits'][:5]}"
    )
    for where, times in (("in PostgreSQL", seen["tick_server_ms"]), ("seen by the client", seen["tick_ms"])):
        print(
            f"  per-tick queries from another process meanwhile (next_ready_at + claim), {where}: {len(times)} times, "
            f"median {statistics.median(times):.2f} ms, p99 {percentile(times, 99):.2f} ms, max {max(times):.2f} ms"
        )
    left = Occurrence.objects.finished_before(database_now() - KEEP).count()
    print(f"  left older than {KEEP.days} days: {left}; {describe_table()}; {dead_tuples()}", flush=True)

    prune_batch(runs, title="(g') the prune batch once the backlog is gone, before VACUUM")
    print(f"\n  VACUUM (ANALYZE) in {vacuum_analyze():.1f} s")
    prune_batch(runs, title="(g'') the prune batch once the backlog is gone, after VACUUM")


def dead_tuples() -> str:
    with connection.cursor() as cursor:
        cursor.execute("SELECT pg_stat_force_next_flush()")
    with connection.cursor() as cursor:
        cursor.execute(
            "SELECT n_live_tup, n_dead_tup, last_autovacuum FROM pg_stat_user_tables WHERE relname = 'jobs_occurrence'"
        )
        live, dead, autovacuum = cursor.fetchone()
    return f"live {live:,}, dead {dead:,} row versions, last autovacuum {autovacuum}"


def percentile(values, q):
    ordered = sorted(values)
    return ordered[min(len(ordered) - 1, int(round(q / 100 * (len(ordered) - 1))))]


def main():
    parser = argparse.ArgumentParser()
    parser.add_argument("--rows", type=int, default=1_000_000, help="history rows over the last 60 days")
    parser.add_argument("--backlog", type=int, default=500_000, help="rows 60 to 90 days old added before pruning")
    parser.add_argument("--runs", type=int, default=3, help="EXPLAIN ANALYZE runs per statement")
    parser.add_argument("--keep-database", action="store_true", help=f"leave {DATABASE.name} for inspection")
    parser.add_argument("--watch", type=int, metavar="PID", help=argparse.SUPPRESS)  # see start_watch
    options = parser.parse_args()
    if options.watch:
        return watch(options.watch)
    DATABASE.recreate()
    try:
        seed(options.rows)
        next_due_instant(options.runs)
        claim(options.runs)
        claim_during_a_burst(options.runs)
        expired_leases(options.runs)
        renew_leases(options.runs)
        search_by_name(options.runs)
        job_history(options.runs)
        prune_batch(options.runs)
        prune_backlog(options.backlog, options.runs)
        section("problems")
        print("\n".join(PROBLEMS) or "no sequential scan of jobs_occurrence")
    finally:
        connection.close()
        if not options.keep_database:
            DATABASE.drop()


if __name__ == "__main__":
    main()
