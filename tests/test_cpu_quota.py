"""The CPUs a process may use, from real cgroup files laid out as the kernel lays them out."""

from __future__ import annotations

import os
from pathlib import Path

import pytest

from megasr.cpu_quota import cgroup_cpu_quota, usable_cpus

AFFINITY = len(os.sched_getaffinity(0))


def cgroup(root: Path, files: dict[str, str]) -> Path:
    for name, text in files.items():
        (root / name).parent.mkdir(parents=True, exist_ok=True)
        (root / name).write_text(text + "\n")
    return root


@pytest.mark.parametrize(
    ("files", "quota"),
    [
        ({"cpu.max": "200000 100000"}, 2.0),
        ({"cpu.max": "150000 100000"}, 1.5),
        ({"cpu.max": "max 100000"}, None),
        ({"cpu/cpu.cfs_quota_us": "50000", "cpu/cpu.cfs_period_us": "100000"}, 0.5),
        ({"cpu/cpu.cfs_quota_us": "-1", "cpu/cpu.cfs_period_us": "100000"}, None),
        ({"cpu.max": "garbage"}, None),
        ({}, None),
    ],
    ids=["v2-2", "v2-1.5", "v2-max", "v1-0.5", "v1-unlimited", "unreadable", "no-cgroup"],
)
def test_the_quota_is_read_from_cgroup_v2_or_v1(tmp_path, files, quota) -> None:
    assert cgroup_cpu_quota(cgroup(tmp_path, files)) == quota


def test_a_quota_caps_the_cpus_rounded_up(tmp_path) -> None:
    root = cgroup(tmp_path, {"cpu.max": "50000 100000"})
    assert usable_cpus(root) == 1  # half a CPU still runs one thread at a time


def test_a_quota_above_the_affinity_leaves_the_affinity(tmp_path) -> None:
    root = cgroup(tmp_path, {"cpu.max": f"{(AFFINITY + 3) * 100000} 100000"})
    assert usable_cpus(root) == AFFINITY


def test_no_quota_means_the_affinity(tmp_path) -> None:
    assert usable_cpus(tmp_path) == AFFINITY
