"""on_signals: a signal's callback runs in a thread of its own, even while the main thread holds a lock it takes."""

import os
import signal
import threading

import pytest

from bookworm_scheduler.kernel.signals import on_signals
from tests.jobs.helpers import wait_for

pytestmark = pytest.mark.unit


@pytest.fixture
def restored():
    """The process's handlers and wake-up fd as they were before the test."""
    handlers = {signum: signal.getsignal(signum) for signum in (signal.SIGUSR1, signal.SIGUSR2)}
    yield
    signal.set_wakeup_fd(-1)
    for signum, handler in handlers.items():
        signal.signal(signum, handler)


def test_the_callback_runs_while_the_main_thread_holds_the_lock_it_takes(restored):
    wake = threading.Event()
    calls = []

    def stop():
        calls.append(threading.current_thread().name)
        wake.set()  # the lock of wake's condition, which the main thread holds below

    on_signals(stop, [signal.SIGUSR2])
    with wake._cond:  # as Event.wait() and .clear() hold it, where a signal may interrupt them
        os.kill(os.getpid(), signal.SIGUSR2)
        wait_for(lambda: calls, timeout=5)
    assert wake.wait(5)
    assert calls == ["signals"]


def test_other_signals_do_not_call_it(restored):
    calls = []
    on_signals(lambda: calls.append("stop"), [signal.SIGUSR2])
    signal.signal(signal.SIGUSR1, lambda *_: None)  # a Python handler: its number is written to the socket too

    os.kill(os.getpid(), signal.SIGUSR1)
    os.kill(os.getpid(), signal.SIGUSR2)

    wait_for(lambda: calls, timeout=5)
    assert calls == ["stop"]
