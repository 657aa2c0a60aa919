"""How many CPUs this process may use: the host's, within its affinity mask and its cgroup's CPU quota.

os.cpu_count() counts the host's CPUs: a container limited to two CPUs (`docker run --cpus 2`,
a Kubernetes CPU limit) on a 64-CPU host would start 64 workers that the kernel then throttles.
The quota is the container's own cgroup's (bookworm_scheduler.kernel.cgroup); outside a container there
is none, and the host's CPUs count. Plain Python, no Django: settings.py calls it for the
defaults of the scheduler's concurrency.
"""

import math
import os
from pathlib import Path

from bookworm_scheduler.kernel.cgroup import CGROUP_ROOT, cpu_quota


def available_cpus(root: Path = CGROUP_ROOT, host_cpus: int | None = None) -> int:
    """The CPUs this process may keep busy: min(host CPUs, the quota rounded up), at least 1."""
    host = host_cpus or _host_cpus()
    quota = cpu_quota(root)
    return max(1, min(host, math.ceil(quota))) if quota else host


def _host_cpus() -> int:
    try:
        return len(os.sched_getaffinity(0))  # `docker run --cpuset-cpus`, taskset
    except AttributeError:  # not on Linux
        return os.cpu_count() or 1
