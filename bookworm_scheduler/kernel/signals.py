"""Stop a daemon on a signal from a thread of its own, never from inside the interrupted main thread.

A Python signal handler runs in the main thread between two of its bytecodes, possibly while that
thread holds a lock: inside threading.Event.wait() or .clear(), the event's own. A handler that
sets the same event (the scheduler's wake-up) then waits for a lock its own thread holds, for
ever. on_signals leaves the Python handler empty: the interpreter's C-level handler writes the
signal's number to a socket (signal.set_wakeup_fd), and a thread blocked reading that socket calls
the callback, as any other thread may.
"""

import signal
import socket
import threading
from collections.abc import Callable, Iterable


def on_signals(callback: Callable[[], None], signums: Iterable[int]) -> None:
    """Call callback from the thread "signals" each time one of signums arrives (main thread only)."""
    wanted = {int(signum) for signum in signums}
    reader, writer = socket.socketpair()
    writer.setblocking(False)  # set_wakeup_fd's requirement: a full socket drops a byte, never blocks
    signal.set_wakeup_fd(writer.fileno(), warn_on_full_buffer=False)
    for signum in wanted:
        signal.signal(signum, lambda *_: None)  # the C-level handler does the writing

    def watch(reader: socket.socket, writer: socket.socket) -> None:
        # writer too: the fd given to set_wakeup_fd lives as long as its socket object, held here.
        while received := reader.recv(64):
            if wanted.intersection(received):
                callback()

    threading.Thread(target=watch, args=(reader, writer), name="signals", daemon=True).start()
