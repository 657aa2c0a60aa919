"""The PostgreSQL peer of bench/scheduler_throughput.py: Procrastinate 3.x draining trivial jobs (run by hand).

Runs in a virtualenv of its own (.venv-procrastinate, from bench/requirements-procrastinate.txt:
`make bench-scheduler` creates it), so Procrastinate never enters ours; it needs no Django.

    .venv-procrastinate/bin/python bench/procrastinate_peer.py SERVER_URL DATABASE [--jobs 1000] [--concurrency 2]

In a database of its own on the same server (created here, dropped at the end): --jobs deferred
jobs, each inserting one row, then one worker that drains them and exits (wait=False). Prints
one JSON line: jobs per second from the first job started to the last one finished (from
procrastinate_events, the database's clock, as ours is measured from the due instant to the last
finished run), and the worker's wall time from its start to its exit.
"""

import argparse
import asyncio
import json
import logging
import time
from datetime import UTC, datetime, timedelta
from urllib.parse import urlsplit, urlunsplit

import procrastinate
import psycopg


def main() -> None:
    parser = argparse.ArgumentParser()
    parser.add_argument("server_url", help="a postgres:// URL of the server (its database part is ignored)")
    parser.add_argument("database", help="the name of the database to create and drop")
    parser.add_argument("--jobs", type=int, default=1000)
    parser.add_argument("--concurrency", type=int, default=2)
    parser.add_argument("--schedule-at-seconds", type=float, default=0, help="defer with schedule_at this far ahead")
    options = parser.parse_args()
    logging.basicConfig(level=logging.WARNING)
    logging.getLogger("procrastinate.blueprints").setLevel(logging.ERROR)  # "App is instantiated in the main module"

    parts = urlsplit(options.server_url)
    admin_url = urlunsplit(parts._replace(path="/postgres"))
    url = urlunsplit(parts._replace(path="/" + options.database))
    with psycopg.connect(admin_url, autocommit=True) as server:
        server.execute(f'DROP DATABASE IF EXISTS "{options.database}" WITH (FORCE)')
        server.execute(f'CREATE DATABASE "{options.database}"')
    try:
        print(
            json.dumps(asyncio.run(measure(url, options.jobs, options.concurrency, options.schedule_at_seconds))),
            flush=True,
        )
    finally:
        with psycopg.connect(admin_url, autocommit=True) as server:
            server.execute(f'DROP DATABASE IF EXISTS "{options.database}" WITH (FORCE)')


async def measure(url: str, jobs: int, concurrency: int, schedule_at_seconds: float = 0) -> dict:
    app = procrastinate.App(connector=procrastinate.PsycopgConnector(conninfo=url))

    @app.task(name="bench.insert_row")
    async def insert_row(n: int) -> None:
        """The trivial job: insert one row (in autocommit, through the worker's pool)."""
        await app.connector.execute_query_async("INSERT INTO bench_rows (n) VALUES (%(n)s)", n=n)

    async with app.open_async():
        await app.schema_manager.apply_schema_async()
        await app.connector.execute_query_async(
            "CREATE TABLE bench_rows (id bigserial PRIMARY KEY, n integer NOT NULL)"
        )
        due = None
        if schedule_at_seconds:
            due = (datetime.now(UTC) + timedelta(seconds=schedule_at_seconds)).replace(microsecond=0)
            deferring = time.monotonic()
            await insert_row.configure(schedule_at=due).batch_defer_async(*({"n": n} for n in range(jobs)))
            defer_s = time.monotonic() - deferring
            await asyncio.sleep(max((due - datetime.now(UTC)).total_seconds(), 0))
        else:
            await insert_row.batch_defer_async(*({"n": n} for n in range(jobs)))
        begun = time.monotonic()
        await app.run_worker_async(concurrency=concurrency, wait=False, install_signal_handlers=False)
        wall = time.monotonic() - begun

    with psycopg.connect(url) as check:
        rows = check.execute("SELECT count(*) FROM bench_rows").fetchone()[0]
        statuses = dict(check.execute("SELECT status, count(*) FROM procrastinate_jobs GROUP BY status").fetchall())
        first, last = check.execute(
            "SELECT min(at) FILTER (WHERE type = 'started'), max(at) FILTER (WHERE type = 'succeeded') "
            "FROM procrastinate_events"
        ).fetchone()
    assert rows == jobs and statuses == {"succeeded": jobs}, (rows, statuses)
    span = (last - first).total_seconds()
    scheduled = {"due_to_last_per_second": jobs / (last - due).total_seconds(), "defer_s": defer_s} if due else {}
    return scheduled | {
        "version": procrastinate.__version__,
        "jobs": jobs,
        "concurrency": concurrency,
        "per_second": jobs / span,
        "worker_wall_s": wall,
        "per_second_wall": jobs / wall,
    }


if __name__ == "__main__":
    main()
