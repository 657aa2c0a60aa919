"""The limits this process runs under, read from its cgroup: CPU quota, memory limit, CPU throttling.

A container sees its own cgroup at /sys/fs/cgroup: cgroup v2 keeps every controller's files in
that one folder (cpu.max, memory.max, cpu.stat), v1 one folder per controller (cpu/ or
cpu,cpuacct/, memory/). Outside a container these files are the root cgroup's, which has no
limit: every function then answers None. Plain Python, no Django: bookworm_scheduler.kernel.cpus counts
the CPUs within the quota, bookworm_scheduler.kernel.daemon_metrics serves all three.
"""

import dataclasses
from pathlib import Path

CGROUP_ROOT = Path("/sys/fs/cgroup")
# cgroup v1 writes "no memory limit" as the largest page-aligned 64-bit number; anything above
# this is no limit.
V1_UNLIMITED_MEMORY = 2**62
V1_CPU_FOLDERS = ("cpu", "cpu,cpuacct")


@dataclasses.dataclass(frozen=True)
class CpuThrottling:
    """The CFS scheduler's counts since the cgroup was made: enforcement periods, and those throttled."""

    periods: int
    throttled_periods: int
    throttled_seconds: float


def cpu_quota(root: Path = CGROUP_ROOT) -> float | None:
    """The cgroup's CPU limit in CPUs (1.5 for a quota of 150000 per period of 100000); None if unlimited."""
    v2 = _numbers(root / "cpu.max")  # "max 100000" (no limit) or "150000 100000"
    if v2 is not None and len(v2) == 2:
        quota, period = v2
        return quota / period if quota and period else None
    for folder in V1_CPU_FOLDERS:
        quota, period = _numbers(root / folder / "cpu.cfs_quota_us"), _numbers(root / folder / "cpu.cfs_period_us")
        if quota is not None and period is not None:
            # A quota of -1 is no limit.
            return quota[0] / period[0] if quota[0] > 0 and period[0] > 0 else None
    return None


def memory_limit(root: Path = CGROUP_ROOT) -> int | None:
    """The cgroup's memory limit in bytes; None if unlimited."""
    v2 = _numbers(root / "memory.max")  # "max" (no limit) or a number of bytes
    if v2 is not None and len(v2) == 1:
        return v2[0] or None
    v1 = _numbers(root / "memory" / "memory.limit_in_bytes")
    if v1 is not None and len(v1) == 1:
        return v1[0] if 0 < v1[0] < V1_UNLIMITED_MEMORY else None
    return None


def cpu_throttling(root: Path = CGROUP_ROOT) -> CpuThrottling | None:
    """How often the CPU quota held this cgroup back; None without a quota (nothing is ever throttled)."""
    if cpu_quota(root) is None:
        return None
    v2 = _fields(root / "cpu.stat")  # nr_periods, nr_throttled, throttled_usec (and more)
    if v2 is not None and "throttled_usec" in v2:
        return CpuThrottling(v2.get("nr_periods", 0), v2.get("nr_throttled", 0), v2["throttled_usec"] / 1e6)
    for folder in V1_CPU_FOLDERS:
        v1 = _fields(root / folder / "cpu.stat")  # nr_periods, nr_throttled, throttled_time (nanoseconds)
        if v1 is not None and "throttled_time" in v1:
            return CpuThrottling(v1.get("nr_periods", 0), v1.get("nr_throttled", 0), v1["throttled_time"] / 1e9)
    return None


def _numbers(path: Path) -> tuple | None:
    """The whitespace-separated numbers of a cgroup file ('max' is 0); None if it is missing or unreadable."""
    try:
        fields = path.read_text().split()
        return tuple(0 if field == "max" else int(field) for field in fields) if fields else None
    except (OSError, ValueError):
        return None


def _fields(path: Path) -> dict[str, int] | None:
    """A flat-keyed cgroup file ("name value" lines) as a dict; None if it is missing or unreadable."""
    try:
        return {name: int(value) for name, value in (line.split() for line in path.read_text().splitlines())}
    except (OSError, ValueError):
        return None
