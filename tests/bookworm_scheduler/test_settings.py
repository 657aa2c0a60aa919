import subprocess
import sys

import pytest
from django.conf import settings

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
    ],
)
def test_a_bad_setting_stops_start_up_with_one_line_naming_it(env, variable):
    base = {"PATH": "/usr/bin:/bin", "DEBUG": "1"}
    result = subprocess.run([*MANAGE, "check"], env={**base, **env}, capture_output=True, text=True, timeout=60)
    assert result.returncode == 2
    lines = result.stderr.strip().splitlines()
    assert len(lines) == 1 and lines[0].startswith("configuration error: ") and variable in lines[0]


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
