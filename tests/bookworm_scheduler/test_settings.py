import subprocess
import sys
from datetime import timedelta

import pytest
from axes.models import AccessAttempt
from django.conf import settings
from django.contrib.auth.models import User
from django.core.cache import cache
from django.test import Client, override_settings

from tests.bookworm_scheduler.test_deploy_settings import PRODUCTION, configuration_error, read_settings

MANAGE = [sys.executable, str(settings.BASE_DIR / "manage.py")]


@pytest.mark.parametrize(
    "env, variable",
    [
        ({"DEBUG": "0", "SECRET_KEY": ""}, "SECRET_KEY"),
        ({"SCHEDULER_CONCURRENCY": "many"}, "SCHEDULER_CONCURRENCY"),
        ({"SCHEDULER_CONCURRENCY": "0"}, "SCHEDULER_CONCURRENCY"),
        ({"DATABASE_URL": "nosuchdb://x"}, "DATABASE_URL"),
        ({"RABBITMQ_URL": "http://localhost"}, "RABBITMQ_URL"),
        ({"DEBUG": "perhaps"}, "DEBUG"),
        ({"SESSION_IDLE_SECONDS": "0"}, "SESSION_IDLE_SECONDS"),
        ({"API_BODY_MAX_BYTES": "1000"}, "API_BODY_MAX_BYTES"),  # less than the largest payload
    ],
)
def test_a_bad_setting_stops_start_up_with_one_line_naming_it(env, variable):
    base = {"PATH": "/usr/bin:/bin", "DEBUG": "1"}
    result = subprocess.run([*MANAGE, "check"], env={**base, **env}, capture_output=True, text=True, timeout=60)
    assert result.returncode == 2
    lines = result.stderr.strip().splitlines()
    assert len(lines) == 1 and lines[0].startswith("configuration error: ") and variable in lines[0]


# Rotating SECRET_KEY: the earlier keys keep what they signed valid.


def test_the_earlier_secret_keys_come_from_secret_key_fallbacks_or_its_file(tmp_path):
    assert read_settings(PRODUCTION, "SECRET_KEY_FALLBACKS") == {"SECRET_KEY_FALLBACKS": []}
    env = {**PRODUCTION, "SECRET_KEY_FALLBACKS": "old-key-1 old-key-2"}
    assert read_settings(env, "SECRET_KEY_FALLBACKS") == {"SECRET_KEY_FALLBACKS": ["old-key-1", "old-key-2"]}
    (tmp_path / "fallbacks").write_text("old-key-1\nold-key-2\n")
    env = {**PRODUCTION, "SECRET_KEY_FALLBACKS_FILE": str(tmp_path / "fallbacks")}
    assert read_settings(env, "SECRET_KEY_FALLBACKS") == {"SECRET_KEY_FALLBACKS": ["old-key-1", "old-key-2"]}


def logged_in_with_the_old_key() -> Client:
    client = Client()
    with override_settings(SECRET_KEY="the-old-key-" * 4):
        assert client.post("/tickerq/login/", {"username": "admin", "password": "a-long-password"}).status_code == 302
    return client


@pytest.mark.django_db
def test_a_session_signed_with_the_earlier_key_stays_open_while_it_is_a_fallback():
    User.objects.create_superuser("admin", "admin@example.com", "a-long-password")
    kept, dropped = logged_in_with_the_old_key(), logged_in_with_the_old_key()
    with override_settings(SECRET_KEY="the-new-key-" * 4, SECRET_KEY_FALLBACKS=["the-old-key-" * 4]):
        assert kept.get("/tickerq/").status_code == 200
    with override_settings(SECRET_KEY="the-new-key-" * 4, SECRET_KEY_FALLBACKS=[]):
        assert dropped.get("/tickerq/").status_code == 302  # to the login page


# Secrets from files: EMAIL_URL holds the SMTP password, so it may come from EMAIL_URL_FILE.


def test_the_email_url_can_come_from_the_file_email_url_file_names(tmp_path):
    (tmp_path / "email_url").write_text("submission://alerts:smtp-pw-3@smtp.example.com:2587\n")
    env = {**PRODUCTION, "EMAIL_URL_FILE": str(tmp_path / "email_url")}

    values = read_settings(env, "EMAIL_HOST", "EMAIL_PORT", "EMAIL_HOST_USER", "EMAIL_HOST_PASSWORD", "EMAIL_USE_TLS")

    assert values == {
        "EMAIL_HOST": "smtp.example.com",
        "EMAIL_PORT": 2587,
        "EMAIL_HOST_USER": "alerts",
        "EMAIL_HOST_PASSWORD": "smtp-pw-3",
        "EMAIL_USE_TLS": True,
    }


def test_the_email_url_and_its_file_variable_together_stop_start_up(tmp_path):
    (tmp_path / "email_url").write_text("submission://alerts:smtp-pw-3@smtp.example.com\n")
    env = {
        **PRODUCTION,
        "EMAIL_URL": "smtp://alerts:other-pw-4@smtp.example.com",
        "EMAIL_URL_FILE": str(tmp_path / "email_url"),
    }

    line = configuration_error(env)

    assert "EMAIL_URL and EMAIL_URL_FILE" in line
    assert "pw" not in line and "example.com" not in line


def test_an_unreadable_email_url_file_stops_start_up_naming_its_variable(tmp_path):
    line = configuration_error({**PRODUCTION, "EMAIL_URL_FILE": str(tmp_path / "missing")})

    assert line == f"configuration error: EMAIL_URL_FILE: cannot read {tmp_path / 'missing'}: No such file or directory"


def test_a_malformed_email_url_in_its_file_stops_start_up_without_showing_it(tmp_path):
    (tmp_path / "email_url").write_text("smtp://alerts:hidden-pw@smtp.example.com:port\n")

    line = configuration_error({**PRODUCTION, "EMAIL_URL_FILE": str(tmp_path / "email_url")})

    assert line == "configuration error: EMAIL_URL: not a valid email URL"


# django-axes behind reverse proxies: TRUSTED_PROXY_COUNT, read by basic_auth.client_address.


def test_the_proxy_count_is_read_from_the_environment_and_is_none_by_default():
    assert read_settings(PRODUCTION, "TRUSTED_PROXY_COUNT") == {"TRUSTED_PROXY_COUNT": 0}
    assert read_settings({**PRODUCTION, "TRUSTED_PROXY_COUNT": "2"}, "TRUSTED_PROXY_COUNT") == {
        "TRUSTED_PROXY_COUNT": 2
    }


@pytest.mark.parametrize("count", ["-1", "one"])
def test_a_bad_proxy_count_stops_start_up(count):
    assert "TRUSTED_PROXY_COUNT" in configuration_error({**PRODUCTION, "TRUSTED_PROXY_COUNT": count})


PROXY = "10.0.0.2"  # the reverse proxy, as gunicorn sees every request
PASSWORD = "a-long-password"


@pytest.fixture
def behind_a_proxy(settings, db):
    settings.AXES_FAILURE_LIMIT = 5
    settings.AXES_COOLOFF_TIME = timedelta(minutes=15)
    settings.PASSWORD_HASHERS = ["django.contrib.auth.hashers.MD5PasswordHasher"]
    User.objects.create_superuser("admin", "admin@example.com", PASSWORD)
    cache.clear()
    yield settings
    cache.clear()


def login_through_the_proxy(client, password, forwarded_for):
    return client.post(
        "/tickerq/login/",
        {"username": "admin", "password": password},
        REMOTE_ADDR=PROXY,
        HTTP_X_FORWARDED_FOR=forwarded_for,
    )


def test_two_clients_behind_one_proxy_are_counted_apart(behind_a_proxy):
    behind_a_proxy.TRUSTED_PROXY_COUNT = 1
    for _ in range(5):
        login_through_the_proxy(Client(), "wrong", "198.51.100.7")

    assert login_through_the_proxy(Client(), PASSWORD, "198.51.100.7").status_code == 429
    assert login_through_the_proxy(Client(), PASSWORD, "203.0.113.9").status_code == 302
    # The five failures and the try while locked: none of them under the proxy's address or the other client's.
    assert list(AccessAttempt.objects.values_list("ip_address", "failures_since_start")) == [("198.51.100.7", 6)]


def test_a_client_cannot_leave_its_count_by_forging_the_header(behind_a_proxy):
    behind_a_proxy.TRUSTED_PROXY_COUNT = 1
    for forged in ["192.0.2.1", "192.0.2.2", "192.0.2.3", "192.0.2.4", "192.0.2.5"]:
        # What the client sent, and the address the proxy appended.
        login_through_the_proxy(Client(), "wrong", f"{forged}, 198.51.100.7")

    assert login_through_the_proxy(Client(), PASSWORD, "192.0.2.6, 198.51.100.7").status_code == 429


def test_without_the_proxy_count_every_client_behind_the_proxy_is_counted_as_the_proxy(behind_a_proxy):
    for _ in range(5):
        login_through_the_proxy(Client(), "wrong", "198.51.100.7")

    assert login_through_the_proxy(Client(), PASSWORD, "203.0.113.9").status_code == 429
