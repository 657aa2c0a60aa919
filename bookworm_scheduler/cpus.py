"""How many CPUs this process may use: the host's, within its affinity mask and its cgroup's CPU quota.

os.cpu_count() counts the host's CPUs: a container limited to two CPUs (`docker run --cpus 2`,
a Kubernetes CPU limit) on a 64-CPU host would start 64 workers that the kernel then throttles.
The quota is read where a container sees its own cgroup: cpu.max (cgroup v2) or
cpu/cpu.cfs_quota_us and cpu/cpu.cfs_period_us (cgroup v1) under /sys/fs/cgroup. Outside a
container these files are the root cgroup's, which has no quota: the host's CPUs count.
Plain Python, no Django: settings.py calls it for the defaults of the scheduler's concurrency.
"""

import math
import os
from pathlib import Path

CGROUP_ROOT = Path("/sys/fs/cgroup")


def cpu_quota(root: Path = CGROUP_ROOT) -> float | None:
    """The cgroup's CPU limit in CPUs (1.5 for a quota of 150000 per period of 100000); None if unlimited."""
    v2 = _numbers(root / "cpu.max")  # "max 100000" (no limit) or "150000 100000"
    if v2 is not None and len(v2) == 2:
        quota, period = v2
        return quota / period if quota and period else None
    for v1 in (root / "cpu", root / "cpu,cpuacct"):
        quota, period = _numbers(v1 / "cpu.cfs_quota_us"), _numbers(v1 / "cpu.cfs_period_us")
        if quota is not None and period is not None:
            # A quota of -1 is no limit.
            return quota[0] / period[0] if quota[0] > 0 and period[0] > 0 else None
    return None


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


def _numbers(path: Path) -> tuple | None:
    """The whitespace-separated numbers of a cgroup file ('max' is 0); None if it is missing or unreadable."""
    try:
        fields = path.read_text().split()
        return tuple(0 if field == "max" else int(field) for field in fields) if fields else None
    except (OSError, ValueError):
        return None
