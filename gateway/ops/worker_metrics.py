"""Metrics across worker processes: one /metrics for every worker, and what each worker costs.

- `workers: N > 1`: the parent calls `start_multiprocess()` before it forks: a fresh private
  folder (PROMETHEUS_MULTIPROC_DIR) where every worker's metric values live in memory-mapped files
  (prometheus-client's multiprocess mode). The admin listener (slot 0) reads them all, so counters
  and histograms are sums over the workers, dead ones included: a replaced worker's counts stay,
  and a counter never goes backwards. The supervisor calls `worker_exited(pid)` when it replaces a
  worker (its live gauges go away); the parent removes the folder on exit (`stop_multiprocess`),
  and a start removes the folders of gateways killed before they could (their owner is gone).
- `workers: 1`: one process, its own registry, no folder (the same names and the same endpoint).
- `WorkerProcesses`: resident memory, CPU time, open files and start time of every worker, with
  a `worker` label (the slot), read from /proc at scrape time. Why not the default process
  collector: in multiprocess mode it describes only the scraping process, and a sum of RSS or a
  max of start times over processes is meaningless; one series per slot is what an operator
  reads (a replaced worker's CPU counter restarts with a new start time: a counter reset).
- `BuildInfo`: `gateway_build_info{version,python} 1`.
"""

from __future__ import annotations

import os
import platform
import shutil
import tempfile
from pathlib import Path

from prometheus_client import CollectorRegistry, values
from prometheus_client.core import CounterMetricFamily, GaugeMetricFamily
from prometheus_client.multiprocess import MultiProcessCollector, mark_process_dead

import gateway
from gateway.ops.observability import forget_process_counters

ENV = "PROMETHEUS_MULTIPROC_DIR"
PREFIX, OWNER = "gateway-metrics-", "owner.pid"
_directory: Path | None = None  # set in the parent before fork; the workers inherit it


def start_multiprocess() -> Path:
    """A fresh folder for this gateway's metric files; metrics created from now on (in the forked
    workers) write there. Why fresh: files of a previous run would be summed into this one's."""
    global _directory
    _sweep_orphans()
    _directory = Path(tempfile.mkdtemp(prefix=PREFIX))  # mode 0700: only this user
    (_directory / OWNER).write_text(str(os.getpid()))
    os.environ[ENV] = str(_directory)
    # Why here and not the environment alone: prometheus-client picks its value class on import,
    # and this process imported it long before `serve` knew how many workers it runs.
    values.ValueClass = values.MultiProcessValue()
    forget_process_counters()  # created again in each worker, in the files
    return _directory


def stop_multiprocess() -> None:
    """The gateway stopped: its metric files go with it (a new start begins at zero, as one process does)."""
    global _directory
    if _directory is not None:
        shutil.rmtree(_directory, ignore_errors=True)
        _directory = None
    os.environ.pop(ENV, None)
    values.ValueClass = values.MutexValue
    forget_process_counters()


def _sweep_orphans() -> None:
    """Remove the folders of gateways that died without cleaning up (a SIGKILL of the parent).
    Why only those: a folder whose owner still runs belongs to another gateway on this host."""
    for folder in Path(tempfile.gettempdir()).glob(PREFIX + "*"):
        try:
            owner = int((folder / OWNER).read_text())
            os.kill(owner, 0)
            continue  # alive (or not ours to signal): leave it
        except ProcessLookupError:
            shutil.rmtree(folder, ignore_errors=True)
        except (OSError, ValueError):
            continue  # not readable as ours, or being created this instant


def multiprocess_directory() -> Path | None:
    return _directory


def worker_started(slot: int) -> None:
    """Called in a worker: records which process serves the slot (for `WorkerProcesses`)."""
    if _directory is not None:
        path = _directory / f"slot-{slot}.pid"
        path.with_suffix(".tmp").write_text(str(os.getpid()))
        path.with_suffix(".tmp").replace(path)


def worker_exited(pid: int) -> None:
    """Called in the parent when a worker is gone: its live gauges (open streams ...) no longer count.
    Its counters and histograms stay in the sums: what it did was done."""
    if _directory is not None:
        mark_process_dead(pid, str(_directory))


def registry_to_expose(own: CollectorRegistry) -> CollectorRegistry:
    """What /metrics renders: every worker's files in multiprocess mode, else this process's registry;
    in both, the build info and the per-worker process metrics, computed now."""
    if _directory is None:
        registry = CollectorRegistry()
        registry.register(_Registered(own))
        pids = {0: os.getpid()}
    else:
        registry = CollectorRegistry()
        MultiProcessCollector(registry, str(_directory))
        pids = _slot_pids(_directory)
    registry.register(BuildInfo())
    registry.register(WorkerProcesses(pids))
    return registry


class _Registered:
    """This process's registry as one collector (so more collectors can be added for one scrape)."""

    def __init__(self, registry: CollectorRegistry) -> None:
        self._registry = registry

    def collect(self):
        return self._registry.collect()


def _slot_pids(directory: Path) -> dict[int, int]:
    pids = {}
    for path in directory.glob("slot-*.pid"):
        try:
            pids[int(path.stem.split("-", 1)[1])] = int(path.read_text())
        except (OSError, ValueError):
            continue  # being replaced this instant
    return pids


class BuildInfo:
    def collect(self):
        family = GaugeMetricFamily("gateway_build_info", "The running gateway's version and Python",
                                   labels=["version", "python"])
        family.add_metric([gateway.__version__, platform.python_version()], 1)
        yield family


_TICKS = os.sysconf("SC_CLK_TCK") if hasattr(os, "sysconf") else 100
_PAGE = os.sysconf("SC_PAGESIZE") if hasattr(os, "sysconf") else 4096


class WorkerProcesses:
    """Per-worker process metrics from /proc (Linux); a slot whose process is gone is left out."""

    def __init__(self, pids: dict[int, int]) -> None:
        self._pids = pids

    def collect(self):
        rss = GaugeMetricFamily("gateway_worker_resident_memory_bytes", "Resident memory, by worker",
                                labels=["worker"])
        cpu = CounterMetricFamily("gateway_worker_cpu_seconds", "User and system CPU time, by worker",
                                  labels=["worker"])
        fds = GaugeMetricFamily("gateway_worker_open_fds", "Open file descriptors, by worker", labels=["worker"])
        start = GaugeMetricFamily("gateway_worker_start_time_seconds",
                                  "When the worker started (Unix time), by worker", labels=["worker"])
        boot = _boot_time()
        for slot, pid in sorted(self._pids.items()):
            try:
                stat = Path(f"/proc/{pid}/stat").read_text()
                fields = stat[stat.rindex(")") + 2:].split()  # after the command name (may hold spaces)
                resident = int(Path(f"/proc/{pid}/statm").read_text().split()[1]) * _PAGE
                open_fds = len(os.listdir(f"/proc/{pid}/fd"))
            except (OSError, ValueError, IndexError):
                continue  # not Linux, or the process is gone: no numbers rather than wrong ones
            label = [str(slot)]
            rss.add_metric(label, resident)
            cpu.add_metric(label, (int(fields[11]) + int(fields[12])) / _TICKS)  # utime + stime
            fds.add_metric(label, open_fds)
            if boot is not None:
                start.add_metric(label, boot + int(fields[19]) / _TICKS)
        yield from (rss, cpu, fds, start)


def _boot_time() -> float | None:
    try:
        for line in Path("/proc/stat").read_text().splitlines():
            if line.startswith("btime "):
                return float(line.split()[1])
    except OSError:
        pass
    return None
