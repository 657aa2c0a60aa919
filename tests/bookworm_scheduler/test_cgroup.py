"""The limits a process runs under, read from cgroup files (v2 and v1) written by the test, and served;
the CPUs it may use within its quota."""

from pathlib import Path

import pytest
from prometheus_client import CollectorRegistry, generate_latest
from prometheus_client.parser import text_string_to_metric_families

from bookworm_scheduler.kernel.cgroup import CpuThrottling, cpu_quota, cpu_throttling, memory_limit
from bookworm_scheduler.kernel.cpus import available_cpus
from bookworm_scheduler.kernel.daemon_metrics import CgroupCollector

pytestmark = pytest.mark.unit


def write(root: Path, files: dict[str, str]) -> Path:
    for name, content in files.items():
        (root / name).parent.mkdir(parents=True, exist_ok=True)
        (root / name).write_text(content)
    return root


@pytest.mark.parametrize(
    "files, quota, cpus",
    [
        ({"cpu.max": "200000 100000\n"}, 2.0, 2),
        ({"cpu.max": "150000 100000\n"}, 1.5, 2),
        ({"cpu.max": "50000 100000\n"}, 0.5, 1),
        ({"cpu.max": "max 100000\n"}, None, 8),
        ({"cpu.max": "1600000 100000\n"}, 16.0, 8),
        ({"cpu/cpu.cfs_quota_us": "300000\n", "cpu/cpu.cfs_period_us": "100000\n"}, 3.0, 3),
        ({"cpu,cpuacct/cpu.cfs_quota_us": "100000\n", "cpu,cpuacct/cpu.cfs_period_us": "100000\n"}, 1.0, 1),
        ({"cpu/cpu.cfs_quota_us": "-1\n", "cpu/cpu.cfs_period_us": "100000\n"}, None, 8),
        ({}, None, 8),
        ({"cpu.max": "garbage\n"}, None, 8),
    ],
    ids=["v2-2", "v2-1.5", "v2-0.5", "v2-max", "v2-above-host", "v1-3", "v1-cpuacct", "v1-unlimited", "none", "bad"],
)
def test_available_cpus_is_the_quota_rounded_up_within_the_hosts(tmp_path, files, quota, cpus):
    root = write(tmp_path, files)

    assert cpu_quota(root) == quota
    assert available_cpus(root, host_cpus=8) == cpus


@pytest.mark.parametrize(
    "files, limit",
    [
        ({"memory.max": "536870912\n"}, 536870912),
        ({"memory.max": "max\n"}, None),
        ({"memory/memory.limit_in_bytes": "268435456\n"}, 268435456),
        ({"memory/memory.limit_in_bytes": "9223372036854771712\n"}, None),
        ({}, None),
        ({"memory.max": "garbage\n"}, None),
    ],
    ids=["v2", "v2-max", "v1", "v1-unlimited", "none", "bad"],
)
def test_the_memory_limit_is_read_from_v2_or_v1_and_none_when_unlimited(tmp_path, files, limit):
    assert memory_limit(write(tmp_path, files)) == limit


V2_STAT = (
    "usage_usec 81234\nuser_usec 50000\nsystem_usec 31234\nnr_periods 120\nnr_throttled 30\nthrottled_usec 4500000\n"
)
V1_STAT = "nr_periods 80\nnr_throttled 8\nthrottled_time 2500000000\nnr_bursts 0\nburst_time 0\n"


@pytest.mark.parametrize(
    "files, throttling",
    [
        ({"cpu.max": "50000 100000\n", "cpu.stat": V2_STAT}, CpuThrottling(120, 30, 4.5)),
        ({"cpu.max": "max 100000\n", "cpu.stat": V2_STAT}, None),
        (
            {"cpu/cpu.cfs_quota_us": "50000\n", "cpu/cpu.cfs_period_us": "100000\n", "cpu/cpu.stat": V1_STAT},
            CpuThrottling(80, 8, 2.5),
        ),
        (
            {"cpu/cpu.cfs_quota_us": "-1\n", "cpu/cpu.cfs_period_us": "100000\n", "cpu/cpu.stat": V1_STAT},
            None,
        ),
        ({"cpu.max": "50000 100000\n"}, None),
    ],
    ids=["v2", "v2-no-quota", "v1", "v1-no-quota", "v2-no-stat"],
)
def test_cpu_throttling_is_read_under_a_quota_only(tmp_path, files, throttling):
    assert cpu_throttling(write(tmp_path, files)) == throttling


def served(root: Path) -> dict[str, float]:
    registry = CollectorRegistry()
    registry.register(CgroupCollector(root))
    text = generate_latest(registry).decode()
    return {sample.name: sample.value for family in text_string_to_metric_families(text) for sample in family.samples}


def test_a_limited_cgroup_serves_its_limits_and_throttling_in_base_units(tmp_path):
    root = write(tmp_path, {"memory.max": "1073741824\n", "cpu.max": "150000 100000\n", "cpu.stat": V2_STAT})

    assert served(root) == {
        "bookworm_cgroup_memory_limit_bytes": 1073741824.0,
        "bookworm_cgroup_cpu_limit_cores": 1.5,
        "bookworm_cgroup_cpu_periods_total": 120.0,
        "bookworm_cgroup_cpu_throttled_periods_total": 30.0,
        "bookworm_cgroup_cpu_throttled_seconds_total": 4.5,
    }


def test_an_unlimited_cgroup_serves_no_limit_series(tmp_path):
    root = write(tmp_path, {"memory.max": "max\n", "cpu.max": "max 100000\n", "cpu.stat": V2_STAT})

    assert served(root) == {}
