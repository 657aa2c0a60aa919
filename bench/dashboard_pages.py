"""Every dashboard page and API call, timed through a real server on a million rows each (run by hand).

    make bench-dashboard
    # = DATABASE_URL=postgres://postgres@127.0.0.1:5432/bookworm_scheduler \
    #   .venv/bin/python bench/dashboard_pages.py [--occurrences 1000000] [--messages 1000000] [--runs 30]

It creates (and drops at the end, also on error) its own database, `<name>_bench_dashboard`,
migrates it and seeds it in SQL (INSERT ... SELECT FROM generate_series, not the ORM): 1,000
cron definitions (the triggers give each its planning cursor), 1,000,000 occurrences over the
last 30 days spread over them with a skew (job-0000 has about 1 % of them, five rare names about
20 each), mostly succeeded, some failed, missed or skipped, one attempt for each that ran (the
failed ones with an error and a traceback), a few live rows (running, scheduled), 1,000,000
outbox rows (mostly delivered; pending, dead and unroutable ones; four exchanges, one of them
rare; most with origin "occurrence:<id>"), a few scheduler instances, 100,000 audit entries (Django's
admin log, by bulk_create), then VACUUM (ANALYZE).

Then it starts gunicorn (2 workers, production settings: DEBUG off) on a free port of
127.0.0.1 against that database, as behind a TLS proxy (X-Forwarded-Proto: https), logs in
through the admin's login form with its CSRF token, requests every page --warm times to warm
each worker's caches, and times each page --runs times (the pages in turn) from connecting to
the last byte of the answer: p50 and p95 per page, each p95 over the goal (200 ms) marked.

Last, in this process (django.test.Client after one warm-up request, the statements timed
with an execute_wrapper), every page again: its time here, its queries, their total time and
the slowest; for each page over the goal, its three slowest statements, the EXPLAIN (ANALYZE,
BUFFERS) of the slowest, and a cProfile of one request (our code first, then the functions
with the most time of their own), for pages whose time is not in the database.

The shared PostgreSQL server is restarted by tests/jobs/test_runscheduler.py and bench/soak.py:
a step that fails while it restarts (the seeding, the timing, the measures in process) is done
again, up to three times, and the timing also when a restart emptied the caches without failing
a request.

docs/benchmarks.md ("Dashboard") reports the figures.
"""

import argparse
import cProfile
import hashlib
import http.client
import io
import os
import pstats
import re
import signal
import socket
import statistics
import subprocess
import sys
import tempfile
import time
import uuid
from datetime import timedelta
from http.cookies import SimpleCookie
from pathlib import Path
from typing import NamedTuple
from urllib.parse import urlencode, urlsplit, urlunsplit

ROOT = Path(__file__).resolve().parent.parent
sys.path.insert(0, str(ROOT))
os.environ.setdefault("DJANGO_SETTINGS_MODULE", "bookworm_scheduler.settings")
# Production settings, as the dashboard is served: DEBUG would record every query in memory.
os.environ["DEBUG"] = "0"
os.environ.setdefault("SECRET_KEY", "benchmark-only")
os.environ["ALLOWED_HOSTS"] = "127.0.0.1"
os.environ.setdefault("LOG_LEVEL", "WARNING")
os.environ["SCHEDULER_JOB_MODULES"] = "bench.sample_jobs"  # the job the seeded definitions run
# As behind the TLS proxy of a deployment: every request says X-Forwarded-Proto: https (PROXY),
# so the HTTPS redirect lets it through and the secure cookies and CSRF checks are those of HTTPS.
os.environ["SECURE_PROXY_SSL_HEADER"] = "X-Forwarded-Proto"
PROXY = {"X-Forwarded-Proto": "https"}


from bench.database import BenchDatabase  # noqa: E402

DATABASE = BenchDatabase("_bench_dashboard")
DATABASE.use()

import django  # noqa: E402
import psycopg  # noqa: E402

django.setup()

from django.contrib.admin.models import CHANGE, LogEntry  # noqa: E402
from django.contrib.auth import get_user_model  # noqa: E402
from django.contrib.contenttypes.models import ContentType  # noqa: E402
from django.core.management import call_command  # noqa: E402
from django.db import DatabaseError, connection  # noqa: E402
from django.test import Client  # noqa: E402
from django_celery_beat.models import CrontabSchedule, PeriodicTask  # noqa: E402

from bookworm_scheduler.kernel.clock import database_now  # noqa: E402
from jobs.models import JobPolicy, Occurrence, SchedulerInstance  # noqa: E402
from outbox.models import OutboxMessage  # noqa: E402

GOAL_MS = 200.0
AUDIT_ENTRIES = 100_000  # the Audit page's rows: a year of a busy console's actions
USERNAME, PASSWORD = "bench", "bench-dashboard-password"

JOBS = 1000
RARE = range(995, 1000)  # about 20 rows each in a million
COMMON_NAME, RARE_NAME = "job-0000", "job-0997"
NAME = "'job-' || lpad(({k})::text, 4, '0')"
# The job's priority follows from its number k (as a JobPolicy would give it); % doubled for params.
PRIORITY = "CASE WHEN {k} %% 25 = 0 THEN 3 WHEN {k} %% 10 = 0 THEN 2 WHEN {k} %% 7 = 0 THEN 0 ELSE 1 END"


def priority_of(k: int) -> int:
    """PRIORITY in Python."""
    return 3 if k % 25 == 0 else 2 if k % 10 == 0 else 0 if k % 7 == 0 else 1


ZONES = ["UTC", "Europe/Paris", "America/New_York", "Asia/Tokyo"]

# Scheduler instances: two alive, one stopped 20 days ago (it ran the oldest third of the
# history), one lost. Their sessions are md5(instance_id) as uuids, as the history rows have them.
LIVE_SCHEDULERS = ("sched-a", "sched-b")
OLD_SCHEDULER = "sched-old"
SCHEDULERS = (*LIVE_SCHEDULERS, OLD_SCHEDULER, "sched-lost")

COMMON_EXCHANGE = "BookWorm.Contracts:ResendErrorEmailIntegrationEvent"
RARE_EXCHANGE = "BookWorm.Legacy:RetiredIntegrationEvent"  # no longer in the code: found by ?exchange=
TRACEBACK = (
    "Traceback (most recent call last):\n"
    '  File "/app/jobs/runner.py", line 91, in run\n    result = job(**kwargs)\n'
    '  File "/app/catalog/jobs.py", line 44, in sync_feeds\n    response.raise_for_status()\n'
    "RuntimeError: upstream returned 503\n"
)
ERROR = "RuntimeError: upstream returned 503"


def session_of(instance_id: str) -> uuid.UUID:
    """md5(instance_id)::uuid, as PostgreSQL computes it for the seeded history rows."""
    return uuid.UUID(hashlib.md5(instance_id.encode()).hexdigest())


# Seeding, in SQL.


def execute(sql: str, params=None) -> int:
    with connection.cursor() as cursor:
        cursor.execute(sql, params)
        return cursor.rowcount


def seed_definitions() -> None:
    """JOBS cron definitions over 60 crontabs in four zones, one in twenty disabled, a policy for one in ten.

    The row trigger jobs_cursor_follow_definition gives each its planning cursor.
    """
    crontabs = [
        CrontabSchedule.objects.create(
            minute=str(c),
            hour="*" if c % 2 == 0 else str(c % 24),
            day_of_week="1-5" if c % 5 == 0 else "*",
            timezone=ZONES[c % len(ZONES)],
        )
        for c in range(60)
    ]
    PeriodicTask.objects.bulk_create(
        PeriodicTask(
            name=f"job-{k:04d}", task="bench.publish", crontab=crontabs[k % len(crontabs)], enabled=k % 20 != 19
        )
        for k in range(JOBS)
    )
    JobPolicy.objects.bulk_create(
        JobPolicy(task=task, priority=priority_of(k), max_retries=3, retry_intervals=[30, 60, 300], timeout_seconds=600)
        for task in PeriodicTask.objects.filter(name__startswith="job-")
        if (k := int(task.name[4:])) % 10 == 0
    )


def seed_schedulers(now) -> None:
    states = {"sched-a": "running", "sched-b": "running", OLD_SCHEDULER: "stopped", "sched-lost": "lost"}
    seen = {
        "sched-a": now,
        "sched-b": now,
        OLD_SCHEDULER: now - timedelta(days=20),
        "sched-lost": now - timedelta(hours=2),
    }
    for n, instance_id in enumerate(SCHEDULERS):
        SchedulerInstance.objects.create(
            session=session_of(instance_id),
            instance_id=instance_id,
            host=f"host-{n}",
            pid=1000 + n,
            version="bench",
            started_at=seen[instance_id] - timedelta(days=10),
            last_seen=seen[instance_id],
            state=states[instance_id],
            stopped_at=None if states[instance_id] == "running" else seen[instance_id],
        )


COLUMNS = (
    "task_id, job_name, scheduled_for, manual, triggered_by, priority, status, run_after, attempts, "
    "scheduler, session, lease_expires_at, started_at, finished_at, reason, created_at"
)


def seed_history(count: int, now) -> int:
    """`count` finished occurrences evenly spread over the 30 days before now.

    Job k is drawn with a skew (job-0000 about 1 %), the RARE jobs with probability 1/10,000;
    95 % succeeded, 3 % failed, 1 % missed, 1 % skipped; one in 500 manual. The oldest third
    ran on sched-old, the rest alternately on sched-a and sched-b.
    """
    start = now - timedelta(days=30)
    step = (timedelta(days=30) - timedelta(minutes=5)) / count
    return execute(
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
                   CASE WHEN u < 0.95 THEN 'succeeded' WHEN u < 0.98 THEN 'failed'
                        WHEN u < 0.99 THEN 'missed' ELSE 'skipped' END AS status,
                   u < 0.98 AS ran, g %% 500 = 0 AS manual,
                   CASE WHEN g <= %(count)s / 3 THEN '{OLD_SCHEDULER}'
                        WHEN g %% 2 = 0 THEN 'sched-a' ELSE 'sched-b' END AS scheduler
              FROM drawn
        )
        INSERT INTO jobs_occurrence ({COLUMNS})
        SELECT task.id, s.name, s.at, s.manual, CASE WHEN s.manual THEN 'admin' ELSE '' END, s.priority, s.status,
               s.at, CASE WHEN s.ran THEN 1 ELSE 0 END, CASE WHEN s.ran THEN s.scheduler ELSE '' END,
               CASE WHEN s.ran THEN md5(s.scheduler)::uuid END, NULL,
               CASE WHEN s.ran THEN s.at + s.lag END,
               CASE WHEN s.ran THEN s.at + s.lag + s.took ELSE s.at + s.took * 60 END,
               CASE s.status WHEN 'failed' THEN '{ERROR}'
                             WHEN 'missed' THEN 'missed: fell due while no scheduler was running'
                             WHEN 'skipped' THEN 'definition disabled' ELSE '' END,
               s.at
          FROM shaped AS s JOIN django_celery_beat_periodictask task ON task.name = s.name
         ORDER BY s.g
        """,
        {"start": start, "step": step, "count": count},
    )


def seed_live(now) -> int:
    """The rows of a busy moment: 20 running on the live schedulers, 100 due within the next hour."""
    running = execute(
        f"""
        INSERT INTO jobs_occurrence ({COLUMNS})
        SELECT task.id, task.name, %(now)s::timestamptz - g * interval '3 second', false, '',
               {PRIORITY.format(k="(g * 13) %% 990")}, 'running', %(now)s::timestamptz - g * interval '3 second', 1,
               CASE WHEN g %% 2 = 0 THEN 'sched-a' ELSE 'sched-b' END,
               md5(CASE WHEN g %% 2 = 0 THEN 'sched-a' ELSE 'sched-b' END)::uuid,
               %(now)s::timestamptz + interval '1 hour',
               %(now)s::timestamptz - g * interval '3 second' + interval '10 ms',
               NULL, '', %(now)s::timestamptz - g * interval '3 second'
          FROM generate_series(1, 20) AS g
          JOIN django_celery_beat_periodictask task ON task.name = {NAME.format(k="(g * 13) %% 990")}
        """,
        {"now": now},
    )
    scheduled = execute(
        f"""
        INSERT INTO jobs_occurrence ({COLUMNS})
        SELECT task.id, task.name, %(now)s::timestamptz + g * interval '36 second', false, '',
               {PRIORITY.format(k="(g * 7) %% 990")}, 'scheduled', %(now)s::timestamptz + g * interval '36 second', 0,
               '', NULL, NULL, NULL, NULL, '', %(now)s
          FROM generate_series(1, 100) AS g
          JOIN django_celery_beat_periodictask task ON task.name = {NAME.format(k="(g * 7) %% 990")}
        """,
        {"now": now},
    )
    return running + scheduled


def seed_attempts() -> int:
    """Attempt 1 of every occurrence that ran to its end; the failed ones with an error and a traceback."""
    return execute(
        """
        INSERT INTO jobs_attempt (occurrence_id, number, status, scheduler, started_at, finished_at, duration,
                                  error, traceback)
        SELECT id, 1, status, scheduler, started_at, finished_at, finished_at - started_at,
               reason, CASE WHEN status = 'failed' THEN %(traceback)s ELSE '' END
          FROM jobs_occurrence
         WHERE status IN ('succeeded', 'failed') AND attempts >= 1
         ORDER BY id
        """,
        {"traceback": TRACEBACK},
    )


def seed_outbox(count: int, now) -> int:
    """`count` messages over the same 30 days. Four in five are published by the succeeded
    occurrence of the same rank (origin "occurrence:<id>", created when it finished); 60 %
    ResendErrorEmail, 30 % BenchRan, the rest CleanUpSentEmail but for one in 10,000 of a type
    since removed from the code. The newest 2,000 are pending (the relay behind), 0.3 % dead,
    0.2 % unroutable, the rest delivered."""
    start = now - timedelta(days=30)
    step = (timedelta(days=30) - timedelta(minutes=5)) / count
    first = Occurrence.objects.order_by("id").values_list("id", flat=True).first() or 0
    return execute(
        f"""
        WITH drawn AS (
            SELECT g, %(start)s::timestamptz + (g - 1) * %(step)s::interval AS at, random() AS u, random() AS v
              FROM generate_series(1, %(count)s) AS g
        ), shaped AS (
            SELECT d.g, COALESCE(o.finished_at, d.at) AS at,
                   CASE WHEN o.id IS NULL THEN '' ELSE 'occurrence:' || o.id END AS origin,
                   CASE WHEN d.u < 0.6 THEN '{COMMON_EXCHANGE}'
                        WHEN d.u < 0.9 THEN 'BookWorm.Bench:BenchRanEvent'
                        WHEN d.u < 0.9999 THEN 'BookWorm.Contracts:CleanUpSentEmailIntegrationEvent'
                        ELSE '{RARE_EXCHANGE}' END AS exchange,
                   CASE WHEN d.g > %(count)s - 2000 THEN 'pending'
                        WHEN d.v < 0.003 THEN 'dead' WHEN d.v < 0.005 THEN 'unroutable'
                        ELSE 'delivered' END AS status
              FROM drawn AS d
              LEFT JOIN jobs_occurrence AS o
                ON o.id = %(first)s + d.g - 1 AND o.status = 'succeeded' AND d.g %% 5 <> 0
        )
        INSERT INTO outbox_outboxmessage (message_id, correlation_id, message_types, exchange, body, headers,
                                          created_at, status, attempts, available_at, last_error, delivered_at,
                                          origin)
        SELECT gen_random_uuid(), NULL,
               jsonb_build_array('urn:message:' || s.exchange,
                                 'urn:message:BookWorm.Chassis.EventBus:IntegrationEvent'),
               s.exchange,
               jsonb_build_object('id', gen_random_uuid(),
                                  'creationDate', to_char(s.at AT TIME ZONE 'UTC', 'YYYY-MM-DD"T"HH24:MI:SS.US"Z"')),
               '{{}}'::jsonb, s.at, s.status,
               CASE s.status WHEN 'delivered' THEN 1 WHEN 'dead' THEN 10 WHEN 'unroutable' THEN 1 ELSE 0 END,
               s.at,
               CASE s.status WHEN 'dead' THEN 'ConnectionRefusedError: [Errno 111] Connection refused'
                             WHEN 'unroutable' THEN '312 NO_ROUTE' ELSE '' END,
               CASE WHEN s.status = 'delivered' THEN s.at + interval '8 ms' END,
               s.origin
          FROM shaped AS s
         ORDER BY s.g
        """,
        {"start": start, "step": step, "count": count, "first": first},
    )


def vacuum_analyze() -> None:
    for table in (
        "django_celery_beat_periodictask",
        "jobs_planningcursor",
        "jobs_jobpolicy",
        "jobs_schedulerinstance",
        "jobs_occurrence",
        "jobs_attempt",
        "outbox_outboxmessage",
    ):
        execute(f"VACUUM (ANALYZE) {table}")


def seed_audit(user, count: int) -> int:
    """Audit entries as a busy console's: manual runs of the definitions, from the three ways in."""
    task_type = ContentType.objects.get_for_model(PeriodicTask)
    tasks = list(PeriodicTask.objects.values_list("id", "name")[:100])
    vias = ["", " from the API", " from the command line by OS user ops"]
    LogEntry.objects.bulk_create(
        (
            LogEntry(
                user=user,
                content_type=task_type,
                object_id=str(tasks[i % len(tasks)][0]),
                object_repr=tasks[i % len(tasks)][1],
                action_flag=CHANGE,
                change_message=f"Ran now{vias[i % 3]}: occurrence {i}",
            )
            for i in range(count)
        ),
        batch_size=5000,
    )
    return count


def seed(occurrences: int, messages: int) -> None:
    started = time.perf_counter()
    DATABASE.recreate()
    call_command("migrate", verbosity=0)
    now = database_now()
    seed_definitions()
    seed_schedulers(now)
    history = seed_history(occurrences, now)
    live = seed_live(now)
    attempts = seed_attempts()
    outbox = seed_outbox(messages, now)
    user = get_user_model().objects.create_superuser(USERNAME, password=PASSWORD)
    audited = seed_audit(user, AUDIT_ENTRIES)
    seeded = time.perf_counter() - started
    vacuum_analyze()
    # Production serves the admin's static files through whitenoise from the collected copies
    # and their manifest, as the Dockerfile makes them (STATIC_ROOT, ignored by git).
    call_command("collectstatic", interactive=False, verbosity=0)
    print(
        f"seeded {PeriodicTask.objects.count():,} definitions, {history:,} finished and {live} live occurrences, "
        f"{attempts:,} attempts, {outbox:,} outbox messages, {audited:,} audit entries in {seeded:.0f} s; "
        f"VACUUM (ANALYZE) in {time.perf_counter() - started - seeded:.0f} s",
        flush=True,
    )
    print(f"  {sizes()}", flush=True)


def sizes() -> str:
    with connection.cursor() as cursor:
        cursor.execute(
            "SELECT relname, pg_size_pretty(pg_total_relation_size(oid)) FROM pg_class "
            "WHERE relname IN ('jobs_occurrence', 'jobs_attempt', 'outbox_outboxmessage') ORDER BY relname"
        )
        return ", ".join(f"{name} {size} with indexes" for name, size in cursor.fetchall())


# The pages.


def pages() -> list[tuple[str, str, dict, str | None]]:
    """(label, path, extra headers, a text the answer must hold) of every page and API call timed."""
    common = PeriodicTask.objects.get(name=COMMON_NAME)
    failed = Occurrence.objects.filter(status="failed").order_by("-scheduled_for", "-id").first()
    message = OutboxMessage.objects.exclude(origin="").filter(status="delivered").order_by("-id").first()
    succeeded_id = int(message.origin.partition(":")[2])
    history = "/tickerq/jobs/occurrence/"
    outbox = "/tickerq/outbox/outboxmessage/"
    htmx = {"HX-Request": "true"}
    return [
        ("index (overview)", "/tickerq/", {}, "overview"),
        ("overview fragment (htmx)", "/tickerq/overview/", htmx, "overview-grid"),
        ("jobs list", "/tickerq/django_celery_beat/periodictask/", {}, "job-0"),
        ("job change form", f"/tickerq/django_celery_beat/periodictask/{common.id}/change/", {}, COMMON_NAME),
        ("history", history, {}, "job-0"),
        ("history, status failed (3 %)", history + "?status__exact=failed", {}, "failed"),
        ("history, status skipped (1 %)", history + "?status__exact=skipped", {}, "skipped"),
        ("history, kind manual (0.2 %)", history + "?kind=manual", {}, "job-0"),
        (f"history, job {COMMON_NAME} (?job=id)", history + f"?job={common.id}", {}, COMMON_NAME),
        ("history, scheduler sched-a", history + "?scheduler=sched-a", {}, "sched-a"),
        (f"history, scheduler {OLD_SCHEDULER} (stopped 20 d ago)", history + f"?scheduler={OLD_SCHEDULER}", {}, None),
        ("history, last 24 hours (?when=day)", history + "?when=day", {}, "job-0"),
        (f"history, search {COMMON_NAME} (common)", history + "?" + urlencode({"q": COMMON_NAME}), {}, COMMON_NAME),
        (f"history, search {RARE_NAME} (rare)", history + "?" + urlencode({"q": RARE_NAME}), {}, RARE_NAME),
        ("history, page 50", history + "?p=50", {}, "job-0"),
        (
            "occurrence detail (succeeded, its event)",
            f"{history}{succeeded_id}/change/",
            {},
            str(message.message_id),
        ),
        ("occurrence detail (failed, traceback)", f"{history}{failed.id}/change/", {}, "raise_for_status()"),
        ("outbox", outbox, {}, "delivered"),
        ("outbox, status dead", outbox + "?status__exact=dead", {}, "dead"),
        ("outbox, status pending", outbox + "?status__exact=pending", {}, "pending"),
        ("outbox, type common", outbox + "?" + urlencode({"exchange": COMMON_EXCHANGE}), {}, COMMON_EXCHANGE),
        ("outbox, type rare (not in code)", outbox + "?" + urlencode({"exchange": RARE_EXCHANGE}), {}, RARE_EXCHANGE),
        ("outbox detail", f"{outbox}{message.id}/change/", {}, f"occurrence:{succeeded_id}"),
        ("schedulers", "/tickerq/jobs/schedulerinstance/", {}, "sched-a"),
        ("API jobs", "/tickerq/api/jobs/", {}, COMMON_NAME),
        ("API history ?limit=100", "/tickerq/api/history/?limit=100", {}, '"job"'),
        (f"API history ?job={COMMON_NAME}", f"/tickerq/api/history/?job={COMMON_NAME}&limit=100", {}, COMMON_NAME),
        (f"API history ?job={RARE_NAME}", f"/tickerq/api/history/?job={RARE_NAME}&limit=100", {}, RARE_NAME),
        ("API history ?status=failed", "/tickerq/api/history/?status=failed&limit=100", {}, "failed"),
        ("API outbox", "/tickerq/api/outbox/", {}, "oldest_pending_age_seconds"),
        ("API occurrence (failed)", f"/tickerq/api/occurrences/{failed.id}", {}, '"attempts"'),
        ("API OpenAPI description", "/tickerq/api/openapi.json", {}, '"openapi"'),
        ("history refresh (htmx)", history, htmx, "history-results"),
        (f"audit ({AUDIT_ENTRIES:,} entries)", "/tickerq/admin/logentry/", {}, "Ran now"),
        ("audit, from the API", "/tickerq/admin/logentry/?from=API", {}, "from the API"),
    ]


# A browser: one connection per request (gunicorn's sync workers close it), the session's cookies.


class Browser:
    def __init__(self, port: int):
        self.port = port
        self.cookies: dict[str, str] = {}

    def request(self, method: str, path: str, *, body: bytes | None = None, headers=None):
        """(status, headers, body, seconds from connecting to the last byte read)."""
        headers = {**PROXY, **(headers or {})}
        if self.cookies:
            headers["Cookie"] = "; ".join(f"{k}={v}" for k, v in self.cookies.items())
        started = time.perf_counter()
        conn = http.client.HTTPConnection("127.0.0.1", self.port, timeout=60)
        try:
            conn.request(method, path, body=body, headers=headers)
            response = conn.getresponse()
            data = response.read()
            elapsed = time.perf_counter() - started
        finally:
            conn.close()
        for header in response.headers.get_all("Set-Cookie") or []:
            for name, morsel in SimpleCookie(header).items():
                self.cookies[name] = morsel.value
        return response.status, response.headers, data, elapsed

    def get(self, path: str, headers=None):
        return self.request("GET", path, headers=headers)

    def log_in(self, username: str, password: str) -> None:
        """Through the admin's login form, with the CSRF token it hands out."""
        status, _, page, _ = self.get("/tickerq/login/?next=/tickerq/")
        token = re.search(rb'name="csrfmiddlewaretoken" value="([^"]+)"', page)
        assert status == 200 and token, f"login form: HTTP {status}"
        form = urlencode(
            {
                "csrfmiddlewaretoken": token.group(1).decode(),
                "username": username,
                "password": password,
                "next": "/tickerq/",
            }
        ).encode()
        status, headers, _, _ = self.request(
            "POST",
            "/tickerq/login/",
            body=form,
            # CSRF over HTTPS also wants a same-origin Referer, as a browser sends it.
            headers={
                "Content-Type": "application/x-www-form-urlencoded",
                "Referer": f"https://127.0.0.1:{self.port}/tickerq/login/",
            },
        )
        assert status == 302 and headers["Location"] == "/tickerq/", f"login: HTTP {status} {headers['Location']}"
        assert "sessionid" in self.cookies, "login: no session cookie"


# The server.


def free_port() -> int:
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return s.getsockname()[1]


def start_server(port: int, log) -> subprocess.Popen:
    gunicorn = Path(sys.executable).parent / "gunicorn"
    env = dict(os.environ, DATABASE_CONN_MAX_AGE="600")
    args = [str(gunicorn), "bookworm_scheduler.wsgi", "--workers", "2", "--bind", f"127.0.0.1:{port}"]
    args += ["--chdir", str(ROOT), "--log-level", "warning"]
    server = subprocess.Popen(args, env=env, stdout=log, stderr=subprocess.STDOUT)
    deadline = time.monotonic() + 60
    while time.monotonic() < deadline and server.poll() is None:
        try:
            if Browser(port).get("/tickerq/login/")[0] == 200:
                return server
        except OSError:
            pass
        time.sleep(0.2)
    stop_server(server)
    raise RuntimeError(f"gunicorn did not answer within 60 s (exit status {server.returncode})")


def stop_server(server: subprocess.Popen) -> None:
    if server.poll() is None:
        server.send_signal(signal.SIGTERM)  # graceful: the master stops its workers
        try:
            server.wait(30)
        except subprocess.TimeoutExpired:
            server.kill()
            server.wait(10)


# Timing.


def percentile(values, q):
    ordered = sorted(values)
    return ordered[min(len(ordered) - 1, int(round(q / 100 * (len(ordered) - 1))))]


def fetch(browser: Browser, path: str, headers: dict, expect: str | None) -> float:
    status, _, body, elapsed = browser.get(path, headers)
    if status != 200:
        raise AssertionError(f"{path}: HTTP {status}")
    if expect and expect.encode() not in body:
        raise AssertionError(f"{path}: {expect!r} not in the answer ({len(body)} bytes)")
    return elapsed * 1000


def time_pages(browser: Browser, plan, runs: int, warm: int) -> dict[str, list[float]]:
    """Each page `runs` times, taking the pages in turn, so that a burst of other work on the
    shared machine spreads over all pages instead of spoiling the samples of one."""
    # Warm every worker's caches first: the first request of a worker loads the definitions,
    # the day's counts per minute, templates and the like.
    for _ in range(warm):
        for _, path, headers, expect in plan:
            fetch(browser, path, headers, expect)
    timings = {label: [] for label, *_ in plan}
    for _ in range(runs):
        for label, path, headers, expect in plan:
            timings[label].append(fetch(browser, path, headers, expect))
    return timings


# The test suite (tests/jobs/test_runscheduler.py) and bench/soak.py restart the shared PostgreSQL
# server: a step that fails because of a restart is done again.


class Restarted(Exception):
    """PostgreSQL restarted while the pages were timed: its caches were emptied."""


def postgresql_started(patience: float = 120) -> str:
    """When the PostgreSQL server started, on a connection of its own (a restart breaks the others);
    waits for a server that is restarting."""
    url = urlunsplit(urlsplit(DATABASE.url)._replace(path="/postgres"))
    deadline = time.monotonic() + patience
    while True:
        try:
            with psycopg.connect(url) as own:
                return own.execute("SELECT pg_postmaster_start_time()::text").fetchone()[0]
        except psycopg.OperationalError:
            if time.monotonic() > deadline:
                raise
            time.sleep(2)


def surviving_restarts(action, what: str, attempts: int = 3):
    """action(), done again (up to `attempts` times in all) when it failed and PostgreSQL restarted meanwhile."""
    for attempt in range(1, attempts + 1):
        started = postgresql_started()
        try:
            return action()
        except (AssertionError, DatabaseError, psycopg.Error, Restarted) as exc:
            if attempt == attempts or postgresql_started() == started:
                raise
            print(f"PostgreSQL restarted during {what} ({type(exc).__name__}): again", flush=True)
            connection.close()


# The queries behind each page, in this process.


class Statements:
    """execute_wrapper: each statement's time (ms, from perf_counter) and its SQL with the parameters bound."""

    def __init__(self):
        self.found: list[tuple[float, str]] = []

    def __call__(self, execute, sql, params, many, context):
        started = time.perf_counter()
        try:
            return execute(sql, params, many, context)
        finally:
            ms = (time.perf_counter() - started) * 1000
            self.found.append((ms, connection.ops.last_executed_query(context["cursor"], sql, params)))


class InProcess(NamedTuple):
    ms: float  # the request in this process, from the test client's call to its answer
    statements: list[tuple[float, str]]  # (ms, SQL), slowest first

    @property
    def sql_ms(self) -> float:
        return sum(ms for ms, _ in self.statements)


def in_process(plan) -> dict[str, InProcess]:
    """Each page requested in this process through django.test.Client, after one warm-up request."""
    user = get_user_model().objects.get(username=USERNAME)
    client = Client(HTTP_HOST="127.0.0.1", **http_headers(PROXY))
    client.force_login(user)
    found = {}
    for label, path, headers, _ in plan:
        extra = http_headers(headers)
        client.get(path, **extra)
        statements = Statements()
        started = time.perf_counter()
        with connection.execute_wrapper(statements):
            response = client.get(path, **extra)
        ms = (time.perf_counter() - started) * 1000
        assert response.status_code == 200, f"{path}: HTTP {response.status_code} in process"
        found[label] = InProcess(ms, sorted(statements.found, reverse=True))
    return found


def http_headers(headers: dict) -> dict:
    return {f"HTTP_{k.upper().replace('-', '_')}": v for k, v in headers.items()}


def profile(path: str, headers: dict) -> str:
    """Where one request of path spends its time in this process: cProfile, cumulative, our code and
    the libraries it calls first, then the functions with the most time of their own."""
    client = Client(HTTP_HOST="127.0.0.1", **http_headers(PROXY))
    client.force_login(get_user_model().objects.get(username=USERNAME))
    client.get(path, **http_headers(headers))
    profiler = cProfile.Profile()
    profiler.runcall(client.get, path, **http_headers(headers))
    out = io.StringIO()
    stats = pstats.Stats(profiler, stream=out)
    stats.sort_stats("cumulative").print_stats(OURS, 15)
    stats.sort_stats("tottime").print_stats(10)
    keep = re.compile(r"^\s*(ncalls|\d+(/\d+)?\s)")  # the header and the rows of each table
    lines = [line for line in out.getvalue().splitlines() if keep.match(line)]
    prefixes = re.compile(re.escape(f"{ROOT}/") + r"|\S*/site-packages/|\S*/lib/python3[.\d]*/")
    return "\n".join(prefixes.sub("", line) for line in lines)


# Our modules, and the libraries that evaluate schedules, in cProfile's output.
OURS = re.escape(str(ROOT)) + r"/(jobs|outbox|bookworm_scheduler)/|cronsim|cron_descriptor"


def explain(sql: str) -> list[str]:
    with connection.cursor() as cursor:
        cursor.execute("EXPLAIN (ANALYZE, BUFFERS) " + sql)
        return [row[0] for row in cursor.fetchall()]


def shorten(text: str, limit: int = 600) -> str:
    text = " ".join(text.split())
    return text if len(text) <= limit else f"{text[: limit - 150]} ... {text[-140:]}"


def report_timings(plan, timings: dict[str, list[float]]) -> list[tuple[str, str, dict]]:
    """Print p50 and p95 of every page; return the pages over the goal (label, path, headers)."""
    width = max(len(label) for label, *_ in plan)
    print(f"\n{'page':<{width}}  {'p50 ms':>7}  {'p95 ms':>7}")
    misses = []
    for label, path, headers, _ in plan:
        times = timings[label]
        p50, p95 = statistics.median(times), percentile(times, 95)
        print(f"{label:<{width}}  {p50:7.1f}  {p95:7.1f}" + ("  MISS (p95 over 200 ms)" if p95 > GOAL_MS else ""))
        if p95 > GOAL_MS:
            misses.append((label, path, headers))
    print(f"\n{len(misses)} of {len(plan)} over {GOAL_MS:.0f} ms at p95" + "".join(f"\n  {m[0]}" for m in misses))
    return misses


def report_queries(plan, misses, measured: dict[str, InProcess]) -> None:
    """Print each page's time and queries in this process; for each miss, its slowest statements,
    the plan of the slowest and a profile."""
    width = max(len(label) for label, *_ in plan)
    print(f"\nin this process: {'page':<{width - 17}}  {'ms':>7}  {'queries':>7}  {'SQL ms':>7}  {'slowest':>7}")
    for label, *_ in plan:
        page = measured[label]
        slowest = page.statements[0][0] if page.statements else 0.0
        print(f"{label:<{width}}  {page.ms:7.1f}  {len(page.statements):7d}  {page.sql_ms:7.1f}  {slowest:7.1f}")
    for label, path, headers in misses:
        page = measured[label]
        print(
            f"\n=== {label} ({path}): in process {page.ms:.1f} ms, of which {page.sql_ms:.1f} ms in "
            f"{len(page.statements)} statements"
        )
        for ms, sql in page.statements[:3]:
            print(f"  {ms:7.1f} ms  {shorten(sql)}")
        if page.statements and page.statements[0][1].lstrip().upper().startswith("SELECT"):
            print("  plan of the slowest:")
            print("    " + "\n    ".join(explain(page.statements[0][1])))
        print("  profile of one request:")
        print("    " + "\n    ".join(profile(path, headers).splitlines()))


def main():
    parser = argparse.ArgumentParser()
    parser.add_argument("--occurrences", type=int, default=1_000_000)
    parser.add_argument("--messages", type=int, default=1_000_000)
    parser.add_argument("--runs", type=int, default=30, help="timed requests per page")
    parser.add_argument("--warm", type=int, default=4, help="untimed requests per page first")
    parser.add_argument("--keep-database", action="store_true", help=f"leave {DATABASE.name} for inspection")
    options = parser.parse_args()
    # make's SIGTERM (or a kill) unwinds through the finally clauses: the server stops, the database goes.
    signal.signal(signal.SIGTERM, lambda *_: sys.exit(143))
    try:
        surviving_restarts(lambda: seed(options.occurrences, options.messages), "the seeding")
        plan = pages()
        timings = surviving_restarts(lambda: serve_and_time(plan, options.runs, options.warm), "the timing")
        misses = report_timings(plan, timings)
        measured = surviving_restarts(lambda: in_process(plan), "the measures in process")
        report_queries(plan, misses, measured)
    finally:
        connection.close()
        if not options.keep_database:
            drop_database()


def serve_and_time(plan, runs: int, warm: int) -> dict[str, list[float]]:
    """Start gunicorn, log in, time every page, stop it."""
    with tempfile.TemporaryFile() as log:
        port, server, timings = free_port(), None, None
        try:
            server = start_server(port, log)
            browser = Browser(port)
            browser.log_in(USERNAME, PASSWORD)
            print(
                f"gunicorn, 2 workers, on 127.0.0.1:{port}; logged in as {USERNAME}; {warm} warm-up and "
                f"{runs} timed requests per page; load average {os.getloadavg()[0]:.2f}",
                flush=True,
            )
            started = postgresql_started()
            timings = time_pages(browser, plan, runs, warm)
            print(f"timed; load average {os.getloadavg()[0]:.2f}", flush=True)
            if postgresql_started() != started:
                raise Restarted
            return timings
        finally:
            if server is not None:
                stop_server(server)
            if timings is None:  # it failed: what the server said
                log.seek(0)
                sys.stderr.write(log.read()[-4000:].decode(errors="replace"))


def drop_database(patience: float = 120) -> None:
    """DATABASE.drop(), waiting for PostgreSQL if it is restarting (the test suite restarts it)."""
    deadline = time.monotonic() + patience
    while True:
        try:
            return DATABASE.drop()
        except psycopg.OperationalError:
            if time.monotonic() > deadline:
                raise
            time.sleep(2)


if __name__ == "__main__":
    main()
