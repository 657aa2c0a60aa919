"""Production settings: `check --deploy` is clean, secrets come from variables or *_FILE files, TLS URLs work.

Settings are read once per process, so each case starts a Python process of its own with only
the variables it names.
"""

import json
import ssl
import subprocess
import sys

import pytest
from django.conf import settings

from outbox.broker import connection_parameters

MANAGE = [sys.executable, str(settings.BASE_DIR / "manage.py")]
SECRET_KEY = "k3Q9v-production-test-key-7mZ2pX8wL4nR6tY1uB5cD0eF3gH9jK2"
PRODUCTION = {
    "PATH": "/usr/bin:/bin",
    "DEBUG": "0",
    "SECRET_KEY": SECRET_KEY,
    "ALLOWED_HOSTS": "scheduler.example.com",
    "CSRF_TRUSTED_ORIGINS": "https://scheduler.example.com",
    "DATABASE_URL": "postgres://bookworm:db-pw-1@db.example.com:5432/bookworm?sslmode=verify-full",
    "RABBITMQ_URL": "amqps://bookworm:mq-pw-2@mq.example.com:5671/%2F",
    "SECURE_PROXY_SSL_HEADER": "X-Forwarded-Proto",
    "SECURE_HSTS_PRELOAD": "1",
}


def run(args, env):
    return subprocess.run(args, env=env, cwd=settings.BASE_DIR, capture_output=True, text=True, timeout=60)


def read_settings(env, *names):
    """The named settings as a process with exactly env sees them."""
    code = (
        "import json, django; from django.conf import settings; django.setup(); "
        f"print(json.dumps({{n: getattr(settings, n, None) for n in {list(names)!r}}}, default=str))"
    )
    result = run([sys.executable, "-c", code], {**env, "DJANGO_SETTINGS_MODULE": "bookworm_scheduler.settings"})
    assert result.returncode == 0, result.stderr
    return json.loads(result.stdout)


def configuration_error(env) -> str:
    result = run([*MANAGE, "check"], env)
    assert result.returncode == 2, result.stderr
    lines = result.stderr.strip().splitlines()
    assert len(lines) == 1 and lines[0].startswith("configuration error: ")
    return lines[0]


def test_check_deploy_reports_nothing_with_the_production_variables():
    result = run([*MANAGE, "check", "--deploy", "--fail-level", "WARNING"], PRODUCTION)

    assert result.returncode == 0, result.stderr
    assert "System check identified no issues" in result.stdout
    assert "WARNING" not in result.stdout + result.stderr


def test_check_deploy_names_what_a_production_setting_turned_off_leaves_open():
    env = {**PRODUCTION, "SECURE_SSL_REDIRECT": "0", "SECURE_HSTS_SECONDS": "0"}

    result = run([*MANAGE, "check", "--deploy", "--fail-level", "WARNING"], env)

    assert result.returncode == 1
    assert "security.W008" in result.stderr and "security.W004" in result.stderr


def test_production_turns_on_https_hsts_and_secure_cookies():
    values = read_settings(
        PRODUCTION,
        "SECURE_SSL_REDIRECT",
        "SECURE_PROXY_SSL_HEADER",
        "SECURE_HSTS_SECONDS",
        "SECURE_HSTS_INCLUDE_SUBDOMAINS",
        "SESSION_COOKIE_SECURE",
        "CSRF_COOKIE_SECURE",
        "SECURE_REDIRECT_EXEMPT",
    )

    assert values == {
        "SECURE_SSL_REDIRECT": True,
        "SECURE_PROXY_SSL_HEADER": ["HTTP_X_FORWARDED_PROTO", "https"],
        "SECURE_HSTS_SECONDS": 31536000,
        "SECURE_HSTS_INCLUDE_SUBDOMAINS": True,
        "SESSION_COOKIE_SECURE": True,
        "CSRF_COOKIE_SECURE": True,
        "SECURE_REDIRECT_EXEMPT": ["^health/$"],
    }


def test_no_proxy_header_is_trusted_unless_named():
    env = {key: value for key, value in PRODUCTION.items() if key != "SECURE_PROXY_SSL_HEADER"}

    assert read_settings(env, "SECURE_PROXY_SSL_HEADER") == {"SECURE_PROXY_SSL_HEADER": None}


def test_a_malformed_proxy_header_name_stops_start_up():
    assert "SECURE_PROXY_SSL_HEADER" in configuration_error({**PRODUCTION, "SECURE_PROXY_SSL_HEADER": "X-Proto: https"})


def test_secrets_can_come_from_files_named_by_file_variables(tmp_path):
    files = {
        "SECRET_KEY": f"{SECRET_KEY}\n",
        "DATABASE_URL": "postgres://bookworm:db-pw-1@db.example.com:5432/bookworm?sslmode=require\n",
        "RABBITMQ_URL": "  amqps://bookworm:mq-pw-2@mq.example.com/%2F\n",
    }
    env = {key: value for key, value in PRODUCTION.items() if key not in files}
    for name, content in files.items():
        (tmp_path / name.lower()).write_text(content)
        env[f"{name}_FILE"] = str(tmp_path / name.lower())

    values = read_settings(env, "SECRET_KEY", "DATABASES", "RABBITMQ_URL")

    assert values["SECRET_KEY"] == SECRET_KEY
    assert values["RABBITMQ_URL"] == "amqps://bookworm:mq-pw-2@mq.example.com/%2F"
    database = values["DATABASES"]["default"]
    assert (database["HOST"], database["USER"], database["PASSWORD"], database["NAME"]) == (
        "db.example.com",
        "bookworm",
        "db-pw-1",
        "bookworm",
    )
    assert database["OPTIONS"] == {"sslmode": "require", "prepare_threshold": 5}


def test_a_variable_and_its_file_variable_together_stop_start_up(tmp_path):
    (tmp_path / "key").write_text("another-key")

    line = configuration_error({**PRODUCTION, "SECRET_KEY_FILE": str(tmp_path / "key")})

    assert "SECRET_KEY and SECRET_KEY_FILE" in line
    assert SECRET_KEY not in line and "another-key" not in line


def test_an_unreadable_secret_file_stops_start_up_naming_its_variable(tmp_path):
    env = {key: value for key, value in PRODUCTION.items() if key != "DATABASE_URL"}

    line = configuration_error({**env, "DATABASE_URL_FILE": str(tmp_path / "missing")})

    missing = tmp_path / "missing"
    assert line == f"configuration error: DATABASE_URL_FILE: cannot read {missing}: No such file or directory"


def test_an_empty_secret_key_file_is_no_secret_key(tmp_path):
    (tmp_path / "key").write_text("\n")
    env = {key: value for key, value in PRODUCTION.items() if key != "SECRET_KEY"}

    assert "SECRET_KEY" in configuration_error({**env, "SECRET_KEY_FILE": str(tmp_path / "key")})


@pytest.mark.parametrize(
    "variable, url",
    [
        ("RABBITMQ_URL", "https://bookworm:hidden-pw@mq.example.com/"),
        ("DATABASE_URL", "postgress://bookworm:hidden-pw@db.example.com/bookworm"),
        ("DATABASE_URL", "postgres://bookworm:hidden-pw@db.example.com:port/bookworm"),
    ],
)
def test_a_bad_url_stops_start_up_without_showing_it(variable, url):
    line = configuration_error({**PRODUCTION, variable: url})

    assert variable in line
    assert "hidden-pw" not in line and "example.com" not in line


def test_database_url_options_become_connection_options():
    url = "postgres://bookworm:pw@db.example.com:5432/bookworm?sslmode=verify-full&sslrootcert=/run/secrets/db-ca.pem"

    database = read_settings({**PRODUCTION, "DATABASE_URL": url}, "DATABASES")["DATABASES"]["default"]

    assert database["OPTIONS"] == {
        "sslmode": "verify-full",
        "sslrootcert": "/run/secrets/db-ca.pem",
        "prepare_threshold": 5,
    }


@pytest.mark.unit
def test_amqps_verifies_the_brokers_certificate_against_its_host_name():
    parameters = connection_parameters("amqps://bookworm:pw@mq.example.com/%2F", blocked_timeout=60)

    assert parameters.port == 5671
    assert parameters.ssl_options.server_hostname == "mq.example.com"
    assert parameters.ssl_options.context.verify_mode == ssl.CERT_REQUIRED
    assert parameters.ssl_options.context.check_hostname is True


def test_the_heartbeat_age_must_outlast_three_heartbeats():
    env = {"PATH": "/usr/bin:/bin", "DEBUG": "1", "SCHEDULER_LEASE_SECONDS": "60"}

    line = configuration_error({**env, "HEALTH_HEARTBEAT_MAX_AGE_SECONDS": "45"})

    assert "HEALTH_HEARTBEAT_MAX_AGE_SECONDS" in line
    assert read_settings({**env, "HEALTH_HEARTBEAT_MAX_AGE_SECONDS": "60"}, "HEALTH_HEARTBEAT_MAX_AGE_SECONDS") == {
        "HEALTH_HEARTBEAT_MAX_AGE_SECONDS": 60
    }
