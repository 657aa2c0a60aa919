import os

import pytest
from django.db import connection


def pytest_configure(config):
    from django.conf import settings

    if settings.DATABASES["default"]["ENGINE"] != "django.db.backends.postgresql":
        raise pytest.UsageError(
            "the tests run against PostgreSQL: set DATABASE_URL (make test does) "
            "to postgres://postgres@127.0.0.1:5432/bookworm_scheduler"
        )


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
