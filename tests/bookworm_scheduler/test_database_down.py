"""A request the unreachable database fails: 503 saying so and one log line, not a 500 and a traceback
(bookworm_scheduler/web/database_down.py)."""

import base64
import json
import logging
import os

import psycopg
import pytest
from django.db import OperationalError
from django.test import RequestFactory

from bookworm_scheduler.web.database_down import DatabaseUnavailableRequests, server_error
from tests.bookworm_scheduler.service_processes import Web

UNREACHABLE = "postgres://postgres:db-pw-5@127.0.0.1:1/bookworm"


def refused_connection() -> OperationalError:
    """What Django raises when the database refuses the connection: its OperationalError over psycopg's."""
    try:
        psycopg.connect("postgresql://postgres@127.0.0.1:1/bookworm", connect_timeout=5)
    except psycopg.OperationalError as error:
        try:
            raise OperationalError(*error.args) from error
        except OperationalError as wrapped:
            return wrapped
    raise AssertionError("a connection to port 1 was accepted")


def answered(path: str, exc: BaseException):
    request = RequestFactory().get(path)
    try:
        raise exc
    except BaseException:
        return server_error(request)


def test_an_unreachable_database_is_a_503_in_the_apis_shape_or_one_line_of_text():
    page = answered("/tickerq/jobs/occurrence/", refused_connection())
    assert (page.status_code, page["Retry-After"], page.content) == (
        503,
        "5",
        b"The database is unreachable; try again in a few seconds.\n",
    )
    api = answered("/tickerq/api/jobs/", refused_connection())
    assert (api.status_code, json.loads(api.content)) == (
        503,
        {"error": {"status": 503, "message": "The database is unreachable; try again in a few seconds."}},
    )


def test_another_error_is_still_djangos_500():
    assert answered("/tickerq/", RuntimeError("a bug")).status_code == 500


def test_its_log_record_becomes_one_warning_line_naming_database_url():
    exc = refused_connection()
    record = logging.LogRecord("django.request", logging.ERROR, __file__, 1, "Internal Server Error: %s", ("/x",), None)
    record.exc_info, record.request = (type(exc), exc, exc.__traceback__), RequestFactory().get("/tickerq/")
    assert DatabaseUnavailableRequests().filter(record)
    assert (record.levelname, record.exc_info, record.action) == ("WARNING", None, "request_database_unavailable")
    assert record.getMessage().startswith(
        "GET /tickerq/: the database is unreachable: DATABASE_URL: OperationalError: connection failed: "
    )


@pytest.mark.slow
def test_the_web_app_answers_503_and_logs_one_line_when_its_database_is_unreachable():
    env = {
        **{key: value for key, value in os.environ.items() if not key.startswith(("DATABASE_", "SCHEDULER_"))},
        "DEBUG": "0",
        "SECRET_KEY": "a-secret-key-for-this-test-only-" * 2,
        "ALLOWED_HOSTS": "127.0.0.1",
        "SECURE_SSL_REDIRECT": "0",
        "DATABASE_URL": UNREACHABLE,
    }
    web = Web(env)
    try:
        basic = {"Authorization": "Basic " + base64.b64encode(b"admin:a-password").decode()}
        session = {"Cookie": "sessionid=" + "a" * 32}  # a well-formed key: looked up in the database
        page = web.get("/tickerq/jobs/occurrence/", headers=session)
        api = web.get("/tickerq/api/jobs/", accept="application/json", headers=basic)
    finally:
        output = web.stop()
    assert page == (503, "The database is unreachable; try again in a few seconds.\n")
    message = "The database is unreachable; try again in a few seconds."
    assert (api[0], json.loads(api[1])) == (503, {"error": {"status": 503, "message": message}})
    lines = [line for line in output.splitlines() if "the database is unreachable" in line]
    assert len(lines) == 2 and all(" WARNING django.request " in line and "DATABASE_URL: " in line for line in lines)
    assert "Traceback" not in output and "db-pw-5" not in output
