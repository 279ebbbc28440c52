"""`workers: 2`: the admin /metrics counts every worker's requests, and never goes backwards when a
worker is killed and replaced; the metric files live in a folder removed when the gateway stops."""

from __future__ import annotations

import json
import os
import signal
import time
import urllib.request
from concurrent.futures import ThreadPoolExecutor
from pathlib import Path

from prometheus_client.parser import text_string_to_metric_families

from tests.support.served import Served
from tests.support.stack import HOST

CALLS = 40


def health(served: Served) -> int:
    req = urllib.request.Request(f"http://127.0.0.1:{served.port}/health", headers={"Host": HOST})
    with urllib.request.urlopen(req, timeout=30) as resp:
        resp.read()
        return resp.status


def scrape(served: Served) -> dict[str, list]:
    with urllib.request.urlopen(f"http://127.0.0.1:{served.admin}/metrics", timeout=30) as resp:
        text = resp.read().decode()
    return {family.name: family.samples for family in text_string_to_metric_families(text)}


def requests_by_series(metrics: dict[str, list]) -> dict[tuple, float]:
    return {tuple(sorted(s.labels.items())): s.value for s in metrics["gateway_requests"]
            if s.name == "gateway_requests_total"}


def spread_calls(served: Served, count: int) -> set[str]:
    """`count` calls on many connections; the slots that served them (from the request log lines)."""
    mark = len(served.child.lines)
    with ThreadPoolExecutor(max_workers=8) as pool:
        assert set(pool.map(lambda _: health(served), range(count))) == {200}
    # A call is counted (then logged) as its answer ends: the client may have it a moment before.
    deadline = time.monotonic() + 10
    while sum('"event": "request"' in line for line in served.child.lines[mark:]) < count:
        assert time.monotonic() < deadline, "request log lines missing"
        time.sleep(0.05)
    lines = served.child.lines[mark:]
    return {str(json.loads(line)["worker"]) for line in lines if '"event": "request"' in line}


def test_metrics_cover_every_worker_and_survive_a_replaced_worker(chain, plugin, signing_key, tmp_path):
    served = Served(chain, plugin, signing_key, tmp_path, workers=2)
    served.start()
    try:
        folder = Path(json.loads(served.child.wait_for(r'"event": "metrics_folder"').string)["folder"])
        pids = {slot: served.wait_until_listening(slot) for slot in (0, 1)}
        assert folder.is_dir()
        assert spread_calls(served, CALLS) == {"0", "1"}  # the kernel spread the connections over both
        before = scrape(served)
        assert sum(requests_by_series(before).values()) == CALLS  # both workers' requests, once each
        assert [s.labels for s in before["gateway_build_info"]][0].keys() == {"version", "python"}
        rss = {s.labels["worker"]: s.value for s in before["gateway_worker_resident_memory_bytes"]}
        assert rss.keys() == {"0", "1"} and all(v > 0 for v in rss.values())
        assert {s.labels["result"] for s in before["gateway_plan_checks"]} >= {"hit", "coalesced", "shared", "miss"}

        # Kill each worker in turn (the admin listener's own slot too): the replacement's /metrics still
        # counts what the dead one did, so no counter goes backwards.
        for slot in (1, 0):
            mark = len(served.child.lines)
            os.kill(pids[slot], signal.SIGKILL)
            served.child.wait_for(rf'(?=.*"event": "worker_exited")(?=.*"slot": {slot}\b)', start=mark)
            pids[slot] = served.wait_until_listening(slot, start=mark)
            after = requests_by_series(scrape(served))
            for series, value in requests_by_series(before).items():
                assert after.get(series, 0) >= value, series
            assert sum(after.values()) == CALLS
        spread_calls(served, 10)
        final = scrape(served)
        assert sum(requests_by_series(final).values()) == CALLS + 10
        starts = {s.labels["worker"]: s.value for s in final["gateway_worker_start_time_seconds"]}
        assert starts.keys() == {"0", "1"}
        open_streams = [s.value for s in final["gateway_open_streams"]]
        assert open_streams == [0]  # live workers only: the killed ones' gauges were forgotten
    finally:
        served.stop()
    assert served.child.proc.returncode == 0
    assert not folder.exists()  # removed on exit: the next start begins at zero
