"""Django's error page (DEBUG's, and the report mailed to ADMINS) shows no password and no secret key."""

import secrets
import sys

import pytest
from django.test import RequestFactory
from django.views.debug import ExceptionReporter

pytestmark = pytest.mark.unit

# Made at run time: the page also shows the lines of source around each frame.
BROKER, MAIL, KEY, DATABASE = (f"{name}-{secrets.token_hex(6)}" for name in ("broker", "mail", "key", "database"))


def connect(conn_params: dict, conninfo: str, url: str):
    raise ConnectionRefusedError(111, "Connection refused")


def error_page() -> str:
    try:
        connect({"host": "db", "password": DATABASE}, f"host=mail password={MAIL}", f"amqps://u:{BROKER}@mq/%2F")
    except ConnectionRefusedError:
        return ExceptionReporter(RequestFactory().get("/metrics"), *sys.exc_info()).get_traceback_html()


def test_the_error_page_shows_neither_the_settings_secrets_nor_those_in_the_tracebacks_variables(settings):
    settings.RABBITMQ_URL = settings.CELERY_BROKER_URL = f"amqps://bookworm:{BROKER}@mq:5671/%2F"
    settings.EMAIL_HOST_PASSWORD = MAIL
    settings.SECRET_KEY = KEY

    page = error_page()

    assert [secret for secret in (BROKER, MAIL, KEY, DATABASE) if secret in page] == []
    # The page is still there: the variables by name, their secrets written over.
    assert "conninfo" in page and "host=mail password=********************" in page
    assert "RABBITMQ_URL" in page and "ConnectionRefusedError" in page
