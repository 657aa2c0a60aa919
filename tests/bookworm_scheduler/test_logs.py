"""One log event, one line, in both LOG_FORMATs."""

import json
import logging
import subprocess
import sys

import pytest
from django.conf import settings

from bookworm_scheduler.kernel.logs import OneLineFormatter

# Logs one ERROR event with a multi-line message, a traceback and an action, through the
# logging that settings.LOGGING configures.
LOG_AN_ERROR = """
import logging
import django

django.setup()
try:
    raise RuntimeError("first\\nsecond")
except RuntimeError as error:
    logging.getLogger("probe").error("failed:\\n%s", error, exc_info=True, extra={"action": "probe_failed"})
"""


def log_an_error(log_format: str) -> list[str]:
    """The lines a process configured with LOG_FORMAT=log_format writes to stderr for one error."""
    env = {
        "PATH": "/usr/bin:/bin",
        "DJANGO_SETTINGS_MODULE": "bookworm_scheduler.settings",
        "DEBUG": "1",
        "LOG_FORMAT": log_format,
    }
    result = subprocess.run(
        [sys.executable, "-c", LOG_AN_ERROR],
        cwd=settings.BASE_DIR,
        env=env,
        capture_output=True,
        text=True,
        timeout=60,
    )
    assert result.returncode == 0, result.stderr
    return result.stderr.splitlines()


@pytest.mark.unit
def test_the_text_formatter_writes_a_record_with_its_traceback_and_stack_on_one_line():
    record = logging.makeLogRecord(
        {
            "name": "probe",
            "levelname": "ERROR",
            "msg": "failed:\r\n%s",
            "args": ("two\nlines",),
            "exc_text": 'Traceback (most recent call last):\n  File "x.py", line 1, in <module>\nRuntimeError: boom',
            "stack_info": 'Stack (most recent call last):\n  File "y.py", line 2, in <module>',
        }
    )

    line = OneLineFormatter("%(levelname)s %(name)s %(message)s").format(record)

    assert line == (
        r"ERROR probe failed:\r\ntwo\nlines"
        r'\nTraceback (most recent call last):\n  File "x.py", line 1, in <module>\nRuntimeError: boom'
        r'\nStack (most recent call last):\n  File "y.py", line 2, in <module>'
    )


def test_an_error_with_a_traceback_is_one_line_of_text():
    [line] = log_an_error("text")

    assert " ERROR probe failed:\\nfirst\\nsecond\\nTraceback (most recent call last):\\n" in line
    assert line.endswith("\\nRuntimeError: first\\nsecond")


def test_an_error_with_a_traceback_is_one_line_of_json_with_its_action():
    [line] = log_an_error("json")

    event = json.loads(line)
    assert (event["levelname"], event["name"], event["action"]) == ("ERROR", "probe", "probe_failed")
    assert event["message"] == "failed:\nfirst\nsecond"
    assert event["exc_info"].startswith("Traceback (most recent call last):\n")
    assert event["exc_info"].endswith("\nRuntimeError: first\nsecond")
