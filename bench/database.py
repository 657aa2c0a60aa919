"""A benchmark's own PostgreSQL database beside the configured one, so no data is touched.

Imported before Django is set up: use() points DATABASE_URL at it.
"""

import os
from urllib.parse import urlsplit, urlunsplit

import psycopg

DEFAULT_URL = "postgres://postgres@127.0.0.1:5432/bookworm_scheduler"


class BenchDatabase:
    def __init__(self, suffix: str):
        parts = urlsplit(os.environ.get("DATABASE_URL", DEFAULT_URL))
        self.name = parts.path.lstrip("/") + suffix
        self.url = urlunsplit(parts._replace(path="/" + self.name))
        self._server_url = urlunsplit(parts._replace(path="/postgres"))

    def use(self) -> None:
        os.environ["DATABASE_URL"] = self.url

    def recreate(self) -> None:
        with psycopg.connect(self._server_url, autocommit=True) as server:
            server.execute(f'DROP DATABASE IF EXISTS "{self.name}" WITH (FORCE)')
            server.execute(f'CREATE DATABASE "{self.name}"')

    def drop(self) -> None:
        from django.db import connections

        connections.close_all()
        with psycopg.connect(self._server_url, autocommit=True) as server:
            server.execute(f'DROP DATABASE IF EXISTS "{self.name}" WITH (FORCE)')


def scheduler_bench(suffix: str) -> BenchDatabase:
    """Set up a scheduler benchmark: production settings (DEBUG would record every query in memory
    and slow the hot path), the bench job registered, a fresh database of its own, Django set up."""
    os.environ.setdefault("DJANGO_SETTINGS_MODULE", "bookworm_scheduler.settings")
    os.environ.setdefault("DEBUG", "0")
    os.environ.setdefault("SECRET_KEY", "benchmark-only")
    os.environ.setdefault("LOG_LEVEL", "WARNING")
    os.environ["SCHEDULER_JOB_MODULES"] = "bench.sample_jobs"
    database = BenchDatabase(suffix)
    database.use()
    database.recreate()
    import django

    django.setup()
    return database
