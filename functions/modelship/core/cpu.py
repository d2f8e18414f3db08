"""How many CPUs this process may really use.

``os.cpu_count()`` reports the host's cores; under a cgroup quota (containers, Lambda's share of a
vCPU) a thread pool sized from it spends its time throttled. We take the smallest of the affinity mask,
the cgroup v2/v1 quota, and Lambda's memory-proportional share.
"""

from __future__ import annotations

import math
import os
from pathlib import Path
from typing import Final

LAMBDA_MB_PER_VCPU: Final = 1769


def _affinity_cpus() -> int:
    try:
        return len(os.sched_getaffinity(0))
    except (AttributeError, OSError):
        return os.cpu_count() or 1


def _read(path: Path) -> str | None:
    try:
        return path.read_text().strip()
    except OSError:
        return None


def cgroup_quota_cpus(root: Path = Path("/sys/fs/cgroup")) -> float | None:
    """The CPU quota in CPUs, or None when unlimited or unknown."""
    cpu_max = _read(root / "cpu.max")
    if cpu_max is not None:
        quota, _, period = cpu_max.partition(" ")
        if quota != "max" and period:
            return int(quota) / int(period)
        return None
    quota_v1 = _read(root / "cpu" / "cpu.cfs_quota_us") or _read(root / "cpu,cpuacct" / "cpu.cfs_quota_us")
    period_v1 = _read(root / "cpu" / "cpu.cfs_period_us") or _read(root / "cpu,cpuacct" / "cpu.cfs_period_us")
    if quota_v1 and period_v1 and int(quota_v1) > 0:
        return int(quota_v1) / int(period_v1)
    return None


def lambda_share_cpus() -> float | None:
    memory = os.environ.get("AWS_LAMBDA_FUNCTION_MEMORY_SIZE")
    if memory and memory.isdigit():
        return int(memory) / LAMBDA_MB_PER_VCPU
    return None


def available_cpus() -> int:
    limits: list[float] = [float(_affinity_cpus())]
    for limit in (cgroup_quota_cpus(), lambda_share_cpus()):
        if limit is not None:
            limits.append(limit)
    # Round down: a thread beyond the share only adds throttling stalls. Never below one.
    return max(1, math.floor(min(limits)))


def is_cpu_constrained() -> bool:
    return cgroup_quota_cpus() is not None or lambda_share_cpus() is not None


def intra_op_threads(configured: int | None = None) -> int:
    """``configured`` (``Settings.intra_op_threads``) when set, else the CPUs this process may use."""
    return configured if configured is not None else available_cpus()
