import subprocess
import sys

import pytest
from django.conf import settings

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
