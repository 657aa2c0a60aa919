"""Fixtures shared by every folder of tests, and the tiers' rules.

Tests marked `unit` need no database and no broker (`make test-unit` runs them alone, with neither
reachable); everything else runs against the real PostgreSQL and RabbitMQ (`make test` runs all).
"""

import os

import pytest
from django.db import connection

from tests.jobs.helpers import FakeClock, start_of_future_hour
from tests.outbox.helpers import Rabbit, build_relay

# Set (to 1) by tests/jobs/test_store_records.py alone, for the run of the store's contract tests on SQLite it
# starts in a subprocess: that run may use SQLite. Every other run refuses any database but PostgreSQL.
ALLOW_SQLITE = "BOOKWORM_TESTS_ALLOW_SQLITE"


def pytest_configure(config):
    from django.conf import settings

    engine = settings.DATABASES["default"]["ENGINE"]
    if engine == "django.db.backends.sqlite3" and os.environ.get(ALLOW_SQLITE) == "1":
        return
    if engine != "django.db.backends.postgresql":
        raise pytest.UsageError(
            "the tests run against PostgreSQL: set DATABASE_URL (make test does) "
            "to postgres://postgres@127.0.0.1:5432/bookworm_scheduler"
        )


def pytest_collection_modifyitems(config, items):
    """A unit test that asks for the database is a mistake of its markers: say so before anything runs."""
    wrong = [
        item.nodeid
        for item in items
        if item.get_closest_marker("unit")
        and (item.get_closest_marker("django_db") or "django_db_setup" in getattr(item, "fixturenames", ()))
    ]
    if wrong:
        raise pytest.UsageError("marked unit but asks for the database: " + ", ".join(wrong))


@pytest.fixture
def clock():
    # A future hour, so nothing planned from the real clock interferes.
    return FakeClock(start_of_future_hour())


@pytest.fixture
def rabbit():
    rabbit = Rabbit()
    yield rabbit
    rabbit.close()


@pytest.fixture
def relay():
    """A relay connected to the broker, in this process."""
    relay = build_relay()
    relay.broker.connect()
    yield relay
    relay.broker.close()


@pytest.fixture
def subprocess_env(transactional_db):
    """Environment for a manage.py subprocess that uses the test database."""
    settings_dict = connection.settings_dict
    url = "postgres://{USER}@{HOST}:{PORT}/{NAME}".format(
        USER=settings_dict["USER"] or "postgres",
        HOST=settings_dict["HOST"] or "127.0.0.1",
        PORT=settings_dict["PORT"] or 5432,
        NAME=settings_dict["NAME"],
    )
    env = dict(os.environ)
    env.update(DATABASE_URL=url, DEBUG="1", PYTHONUNBUFFERED="1", DATABASE_CONN_MAX_AGE="0")
    return env
