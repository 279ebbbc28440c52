"""/metrics in one process: plan checks split into families whose sums mean something, the build
info and this process's memory and CPU as worker 0's; the metric files' folder comes and goes."""

from __future__ import annotations

import os
import subprocess
import tempfile
from pathlib import Path

from prometheus_client import generate_latest
from prometheus_client.parser import text_string_to_metric_families

from gateway.ops import worker_metrics
from gateway.ops.observability import Metrics


def exposed(metrics: Metrics) -> dict[str, list]:
    text = generate_latest(worker_metrics.registry_to_expose(metrics.registry)).decode()
    return {family.name: family.samples for family in text_string_to_metric_families(text)}


def test_plan_events_become_checks_that_add_up_and_rpc_counters():
    m = Metrics()
    # 3 checks from the cache, 2 joined a read in flight, 1 had another worker's read, 2 read the
    # chain (one failed and was answered with a stale balance)
    for event in ["hits"] * 3 + ["misses", "coalesced"] * 2 + ["misses", "shared"] + \
            ["misses", "rpc_calls"] * 2 + ["errors", "stale"]:
        m.count_plan(event)
    families = exposed(m)
    checks = {s.labels["result"]: s.value for s in families["gateway_plan_checks"]}
    assert checks == {"hit": 3, "coalesced": 2, "shared": 1, "miss": 2}
    assert sum(checks.values()) == 8  # every check once
    value = lambda name: families[name][0].value
    assert value("gateway_plan_rpc_calls") == 2 and value("gateway_plan_rpc_errors") == 1
    assert value("gateway_plan_stale_answers") == 1


def test_rpc_calls_are_counted_as_they_happen():
    m = Metrics()
    m.count_rpc("local", "http://127.0.0.1:8545", "ok")
    m.count_rpc("local", "http://127.0.0.1:8545", "ok")
    samples = [s for s in exposed(m)["gateway_rpc_calls"] if s.name == "gateway_rpc_calls_total"]
    assert [(s.labels["outcome"], s.value) for s in samples] == [("ok", 2)]


def test_build_info_and_this_process_as_worker_zero():
    families = exposed(Metrics())
    (info,) = families["gateway_build_info"]
    assert info.value == 1 and set(info.labels) == {"version", "python"}
    (rss,) = families["gateway_worker_resident_memory_bytes"]
    assert rss.labels == {"worker": "0"} and rss.value > 0
    assert families["gateway_worker_cpu_seconds"][0].value > 0


def test_the_metrics_folder_is_fresh_private_and_removed():
    folder = worker_metrics.start_multiprocess()
    try:
        assert folder.is_dir() and (folder.stat().st_mode & 0o077) == 0
        assert os.environ[worker_metrics.ENV] == str(folder)
        worker_metrics.worker_started(3)
        assert (folder / "slot-3.pid").read_text() == str(os.getpid())
    finally:
        worker_metrics.stop_multiprocess()
    assert not folder.exists() and worker_metrics.ENV not in os.environ


def test_a_start_removes_the_folders_of_killed_gateways_only():
    dead = subprocess.Popen(["true"])
    dead.wait()  # its pid belongs to nobody now
    orphan = Path(tempfile.mkdtemp(prefix=worker_metrics.PREFIX))
    (orphan / worker_metrics.OWNER).write_text(str(dead.pid))
    alive = Path(tempfile.mkdtemp(prefix=worker_metrics.PREFIX))
    (alive / worker_metrics.OWNER).write_text(str(os.getpid()))
    try:
        folder = worker_metrics.start_multiprocess()
        worker_metrics.stop_multiprocess()
        assert not orphan.exists() and alive.exists() and not folder.exists()
    finally:
        for path in (orphan, alive):
            subprocess.run(["rm", "-rf", str(path)], check=True)
