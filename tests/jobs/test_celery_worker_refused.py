"""A Celery worker the broker refuses for good says so in one line naming RABBITMQ_URL, without a traceback or
the password (bookworm_scheduler.celery.BrokerRefusals), and exits."""

import pytest

from tests.jobs.celery_helpers import WorkerProcess
from tests.jobs.helpers import wait_for

pytestmark = pytest.mark.slow

WRONG_PASSWORD = "not-guests-password-7"


def test_a_worker_with_a_wrong_broker_password_logs_one_line_and_exits(celery_env):
    env = dict(celery_env, RABBITMQ_URL=f"amqp://guest:{WRONG_PASSWORD}@127.0.0.1:5672/%2F")
    worker = WorkerProcess(env)
    try:
        wait_for(lambda: worker.process.poll() is not None, timeout=60)
    finally:
        worker.kill()
    output = worker.output
    refusals = [line for line in output.splitlines() if "the broker refused it" in line]
    assert len(refusals) == 1, output
    assert (
        " CRITICAL " in refusals[0]
        and "(RABBITMQ_URL): AccessRefused" in refusals[0]
        and "ACCESS_REFUSED" in refusals[0]
    )
    assert "Traceback" not in output and WRONG_PASSWORD not in output
    assert worker.process.returncode != 0
