"""Fixtures for the relay tests: event types of their own, relay_outbox subprocesses.

The broker (rabbit) and an in-process relay (relay) are fixtures of tests/conftest.py; the plain
helpers behind them are in tests/outbox/helpers.py.
"""

import subprocess
import sys

import pytest

from tests.outbox.helpers import MANAGE, make_event_type


@pytest.fixture
def event_type(rabbit):
    """A fresh event type whose exchange is deleted after the test."""
    event_type = make_event_type()
    rabbit.exchanges.append(event_type.exchange())
    return event_type


@pytest.fixture
def start_relay(subprocess_env):
    """Start `manage.py relay_outbox` subprocesses; any still running are killed at the end."""
    processes = []

    def start(*args, **env):
        process = subprocess.Popen(
            [sys.executable, str(MANAGE), "relay_outbox", *args],
            env={**subprocess_env, "OUTBOX_POLL_SECONDS": "0.2", **env},
            stdout=subprocess.PIPE,
            stderr=subprocess.PIPE,
            text=True,
        )
        processes.append(process)
        return process

    yield start
    for process in processes:
        if process.poll() is None:
            process.kill()
            process.wait()
