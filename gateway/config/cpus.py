"""How many CPUs this process may use: the default number of workers.

`os.cpu_count()` is the host's core count; a container limited to 2 CPUs on a 64-core host
would start 64 workers competing for 2 CPUs' worth of time. The usable count is the smaller of:
- the CPUs this process may run on (`os.sched_getaffinity`: taskset, cpusets, `docker --cpuset-cpus`);
- the cgroup v2 CPU quota (`cpu.max`: `docker --cpus`, Kubernetes limits), rounded up, of the
  process's cgroup and of every cgroup above it (a parent's limit binds its children too).
At least 1. cgroup v1 and other systems without these files count as "no quota".
"""

from __future__ import annotations

import math
import os
from pathlib import Path
from typing import Callable

CGROUP_ROOT = Path("/sys/fs/cgroup")
PROC_CGROUP = Path("/proc/self/cgroup")


def usable_cpus(cgroup_root: Path = CGROUP_ROOT, proc_cgroup: Path = PROC_CGROUP,
                affinity: Callable[[], int] | None = None) -> int:
    """The number of CPUs this process may use (see the module docstring); never less than 1."""
    cpus = (affinity or _affinity)()
    quota = cgroup_cpu_quota(cgroup_root, proc_cgroup)
    if quota is not None:
        cpus = min(cpus, math.ceil(quota))
    return max(1, cpus)


def cgroup_cpu_quota(cgroup_root: Path = CGROUP_ROOT, proc_cgroup: Path = PROC_CGROUP) -> float | None:
    """The tightest cgroup v2 `cpu.max` quota (in CPUs) on the way from this process's cgroup up
    to the root, or None when there is none (unlimited, cgroup v1, not Linux)."""
    group = _own_cgroup(proc_cgroup)
    if group is None:
        return None
    folder = (cgroup_root / group.lstrip("/")).resolve()
    root = cgroup_root.resolve()
    tightest: float | None = None
    while True:
        quota = _read_cpu_max(folder / "cpu.max")
        if quota is not None:
            tightest = quota if tightest is None else min(tightest, quota)
        if folder == root or root not in folder.parents:
            return tightest
        folder = folder.parent


def _own_cgroup(proc_cgroup: Path) -> str | None:
    """The cgroup v2 path of this process (`0::/path` in /proc/self/cgroup), or None."""
    try:
        lines = proc_cgroup.read_text().splitlines()
    except OSError:
        return None
    for line in lines:
        if line.startswith("0::"):
            return line[3:].strip() or "/"
    return None


def _read_cpu_max(path: Path) -> float | None:
    """`cpu.max` holds "QUOTA PERIOD" (microseconds) or "max PERIOD" (no limit)."""
    try:
        quota, period = path.read_text().split()[:2]
        if quota == "max":
            return None
        quota_us, period_us = int(quota), int(period)
    except (OSError, ValueError):  # missing (the root has none), unreadable or malformed: no limit known
        return None
    return quota_us / period_us if quota_us > 0 and period_us > 0 else None


def _affinity() -> int:
    try:
        return len(os.sched_getaffinity(0))
    except (AttributeError, OSError):  # not Linux
        return os.cpu_count() or 1
