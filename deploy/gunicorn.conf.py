"""gunicorn's settings for the dashboard (the image's default command); flags on the command line win.

- bind: every address of the container, on PORT (8000 unless set); the image's HEALTHCHECK asks
  the same port.
- workers: WEB_CONCURRENCY, else gunicorn's advice of 2 x CPUs + 1, counting the CPUs of the
  container's quota (bookworm_scheduler.kernel.cpus), not the host's.
- worker_tmp_dir: the workers' heartbeat files in memory: a container's overlay file system can
  stall them, and the code's folders are read-only to the process.
- control_socket_disable: gunicorn's control socket (for `gunicornc`) would be made in
  $XDG_RUNTIME_DIR or $HOME/.gunicorn; the image's user has neither (its home is /nonexistent),
  and a container is managed by signals from its orchestrator, not through a socket.
- accesslog: one line per request on standard output, beside the application's own log.
"""

import os

from bookworm_scheduler.kernel.cpus import available_cpus

bind = f"0.0.0.0:{os.environ.get('PORT') or 8000}"
workers = int(os.environ.get("WEB_CONCURRENCY") or 2 * available_cpus() + 1)
worker_tmp_dir = "/dev/shm"
control_socket_disable = True
accesslog = "-"
