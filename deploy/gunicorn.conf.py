"""gunicorn's settings for the dashboard (the image's default command); flags on the command line win."""

import os

from bookworm_scheduler.cpus import available_cpus

bind = "0.0.0.0:8000"
# gunicorn's advice of 2 x CPUs + 1, counting the CPUs of the container's quota (bookworm_scheduler.cpus).
workers = int(os.environ.get("WEB_CONCURRENCY") or 2 * available_cpus() + 1)
# The workers' heartbeat files in memory: a container's overlay file system can stall them.
worker_tmp_dir = "/dev/shm"
accesslog = "-"
