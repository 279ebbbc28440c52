"""Hardened edge, processes (issue 10 items 2-4), against the real `gateway serve` and `gateway demo`:
a killed worker is replaced and no charge is lost, a crash loop stops the gateway, nothing
outlives its parent, one gateway per address and per ledger, and an early SIGHUP is harmless."""

from __future__ import annotations

import json
import os
import signal
import subprocess
import sys
import threading
import time
import urllib.error
import urllib.request
from concurrent.futures import ThreadPoolExecutor

import pytest
import yaml

from gateway.dev.chain import free_port
from gateway.dev.process import REPO, ChildProcess
from tests.support.edge import (accepts, descendants_of, gone, listening, served_with, wait_for_workers,
                                wait_until)
from tests.support.stack import HOST, SUBSCRIBER

QUERY = {"queries": [{"query": "love"}]}


def _call(served):
    try:
        status, headers = served.call("/query", QUERY)
        return time.monotonic(), status, headers
    except (urllib.error.URLError, ConnectionError, OSError):
        return time.monotonic(), None, {}  # cut off with the killed worker


def _post_without_token(port: int) -> int:
    req = urllib.request.Request(f"http://127.0.0.1:{port}/query", data=json.dumps(QUERY).encode(), method="POST",
                                 headers={"Host": HOST, "Content-Type": "application/json"})
    try:
        with urllib.request.urlopen(req, timeout=30) as resp:
            return resp.status
    except urllib.error.HTTPError as err:
        return err.code


def test_sigkill_of_a_worker_keeps_the_gateway_answering_and_loses_no_charge(chain, plugin, signing_key, tmp_path):
    chain.dev.mint_credits(chain.credits_plan, SUBSCRIBER, 1, 995)  # 1,000 credits: never the limit here
    served = served_with(chain, plugin, signing_key, tmp_path, workers=2)
    served.start()
    try:
        pids = wait_for_workers(served, 2)
        results: list[tuple[float, int | None, dict]] = []
        stop = threading.Event()

        def load():
            while not stop.is_set():
                results.append(_call(served))

        with ThreadPoolExecutor(max_workers=4) as pool:
            for _ in range(4):
                pool.submit(load)
            assert wait_until(lambda: sum(1 for _, s, _h in results if s == 200) >= 20, 30)
            mark = len(served.child.lines)
            # Slot 0 is the hard case: it also serves the admin port and runs the settlement.
            os.kill(pids[0], signal.SIGKILL)
            killed_at = time.monotonic()
            exited = json.loads(served.child.wait_for(r'"event": "worker_exited"', 10, mark).string)
            served.child.wait_for(r'"event": "listening"', 10, mark)
            back_at = time.monotonic()
            replacement = listening(served, mark)[0]
            assert wait_until(lambda: sum(1 for t, s, _h in results if s == 200 and t > back_at) >= 20, 30)
            stop.set()
        assert exited["slot"] == 0 and exited["pid"] == pids[0] and exited["signal"] == "SIGKILL"
        assert replacement["worker"] == 0 and replacement["pid"] != pids[0] and replacement["admin"]
        assert back_at - killed_at < 10  # a new worker serves within seconds
        during = [s for t, s, _h in results if killed_at < t < back_at]
        assert 200 in during  # the surviving worker kept answering while slot 0 was empty
        failed = [t for t, s, _h in results if s is None]
        assert len(failed) <= 4  # at most the calls on the killed worker's connections
        assert {s for _t, s, _h in results} <= {200, None}
        seen = sum(int(h["X-Credits-Charged"]) for _t, s, h in results if s == 200)
        charged = served.ledger("SELECT SUM(amount) FROM charges")[0][0]
        assert charged >= seen  # every charge a client was told of is in the ledger
        served.settle()  # the admin port and the settler came back with slot 0
        assert chain.dev.credits_of(chain.credits_plan, SUBSCRIBER, 1) == 1000 - charged
    finally:
        served.stop()
    assert served.child.proc.returncode == 0


def test_crash_looping_workers_stop_the_gateway_with_a_clear_line(chain, plugin, signing_key, tmp_path):
    served = served_with(chain, plugin, signing_key, tmp_path, workers=2)
    served.start()
    try:
        pids = wait_for_workers(served, 2)
        for _ in range(4):
            mark = len(served.child.lines)
            os.kill(pids[1], signal.SIGKILL)
            served.child.wait_for(r'"event": "listening"', 30, mark)  # replaced (after a growing back-off)
            pids = wait_for_workers(served, 2)
        mark = len(served.child.lines)
        os.kill(pids[1], signal.SIGKILL)  # the 5th exit within 60 s
        line = json.loads(served.child.wait_for(r'"event": "crash_loop"', 10, mark).string)
        assert served.child.proc.wait(60) == 1
    finally:
        served.stop()
    assert "5 worker exits within 60 s" in line["detail"]
    assert not accepts(served.port) and not accepts(served.admin)


@pytest.mark.parametrize("workers", [2, 1])
def test_kill_9_of_the_parent_leaves_no_worker_serving_or_settling(chain, plugin, signing_key, tmp_path, workers):
    served = served_with(chain, plugin, signing_key, tmp_path, workers=workers)
    served.start()
    pids = wait_for_workers(served, workers)
    assert served.call("/query", QUERY)[0] == 200
    served.child.proc.kill()  # kill -9 of `gateway serve`
    served.child.proc.wait(10)
    try:
        assert wait_until(lambda: not accepts(served.port) and not accepts(served.admin), 2.0)
        assert wait_until(lambda: all(gone(pid) for pid in pids.values()), 2.0)
        served.start()  # at once, on the same config: ports and the ledger lock are free
        wait_for_workers(served, workers)
        assert served.call("/query", QUERY)[0] == 200
    finally:
        served.stop()


def test_second_gateway_on_the_same_address_refuses_to_start(chain, plugin, signing_key, tmp_path):
    (tmp_path / "a").mkdir()
    first = served_with(chain, plugin, signing_key, tmp_path / "a", workers=2)
    first.start()
    try:
        wait_for_workers(first, 2)
        (tmp_path / "b").mkdir()
        second = served_with(chain, plugin, signing_key, tmp_path / "b", workers=2, listen=f"127.0.0.1:{first.port}")
        assert second.config.metering.ledger != first.config.metering.ledger  # only the address is shared
        run = subprocess.run([sys.executable, "-m", "gateway", "serve", "--config", str(second.path)],
                             capture_output=True, text=True, cwd=REPO, timeout=60)
        assert run.returncode == 1
        lines = [json.loads(line) for line in run.stdout.splitlines() + run.stderr.splitlines() if "cannot_listen" in line]
        assert len(lines) == 1 and "Address already in use" in lines[0]["detail"]
        assert '"event": "listening"' not in run.stdout + run.stderr
        assert first.call("/query", QUERY)[0] == 200  # the first one never lost its traffic
    finally:
        first.stop()


def test_second_gateway_on_the_same_ledger_refuses_to_start(chain, plugin, signing_key, tmp_path):
    first = served_with(chain, plugin, signing_key, tmp_path, workers=2)
    first.start()
    try:
        wait_for_workers(first, 2)
        data = yaml.safe_load(first.path.read_text())
        data.update(listen=f"127.0.0.1:{free_port()}", admin_listen=f"127.0.0.1:{free_port()}")
        other = tmp_path / "other.yaml"
        other.write_text(yaml.safe_dump(data))
        run = subprocess.run([sys.executable, "-m", "gateway", "serve", "--config", str(other)],
                             capture_output=True, text=True, cwd=REPO, timeout=60)
        assert run.returncode == 1
        line = next(json.loads(x) for x in (run.stdout + run.stderr).splitlines() if "ledger_in_use" in x)
        assert f"pid {first.child.proc.pid}" in line["detail"] and "one gateway per ledger" in line["detail"]
        assert first.call("/query", QUERY)[0] == 200
    finally:
        first.stop()
    assert first.child.proc.returncode == 0


@pytest.mark.parametrize("workers", [1, 2])
def test_sighup_before_the_gateway_is_ready_does_not_kill_it(chain, plugin, signing_key, tmp_path, workers):
    pid_file = tmp_path / "gateway.pid"
    served = served_with(chain, plugin, signing_key, tmp_path, workers=workers, pid_file=str(pid_file))
    proc = subprocess.Popen([sys.executable, "-m", "gateway", "serve", "--config", str(served.path)], cwd=REPO,
                            stdout=subprocess.PIPE, stderr=subprocess.STDOUT, text=True)
    try:
        # `gateway reload` the moment the pid file exists (polled as fast as we can)
        assert wait_until(lambda: pid_file.exists() and pid_file.read_text().strip(), 30, interval=0.001)
        os.kill(int(pid_file.read_text()), signal.SIGHUP)
        assert wait_until(lambda: accepts(served.port) and proc.poll() is None, 30)
        assert served.call("/query", QUERY)[0] == 200
        assert proc.poll() is None
    finally:
        proc.terminate()
        out = proc.communicate(timeout=60)[0]
    assert proc.returncode == 0, out
    assert '"event": "reloaded"' in out  # the early SIGHUP was handled, as a reload


@pytest.mark.parametrize("sig", [signal.SIGKILL, signal.SIGHUP])
def test_demo_killed_or_its_terminal_closed_leaves_no_child_running(sig):
    demo = ChildProcess([sys.executable, "-m", "gateway", "demo"], ready=r"everything is running", timeout=180)
    try:
        children = descendants_of(demo.proc.pid)
        assert len(children) >= 3  # anvil, the example plugin, the gateway (and its workers)
        demo.proc.send_signal(sig)
        demo.proc.wait(30)
        assert wait_until(lambda: all(gone(pid) for pid in children), 10), \
            [open(f"/proc/{p}/cmdline").read() for p in children if not gone(p)]
    finally:
        demo.stop(signal.SIGKILL)


def test_replacement_worker_runs_the_reloaded_config_not_the_start_one(chain, plugin, signing_key, tmp_path):
    served = served_with(chain, plugin, signing_key, tmp_path, workers=2)
    served.start()
    try:
        pids = wait_for_workers(served, 2)
        data = yaml.safe_load(served.path.read_text())
        svc = data["services"]["elvis"]
        svc["open_endpoints"].append("POST /query")  # reloaded: /query costs nothing and needs no token
        svc["protected_endpoints"].remove("POST /query")
        served.path.write_text(yaml.safe_dump(data))
        mark = len(served.child.lines)
        os.kill(served.child.proc.pid, signal.SIGHUP)
        assert wait_until(lambda: {json.loads(line)["worker"] for line in served.child.lines[mark:]
                                   if '"event": "reloaded"' in line} == {0, 1}, 10)
        mark = len(served.child.lines)
        os.kill(pids[1], signal.SIGKILL)
        served.child.wait_for(r'"event": "listening"', 10, mark)
        statuses: list[int] = []

        def served_by_new_worker() -> int:
            with ThreadPoolExecutor(max_workers=4) as pool:
                statuses.extend(pool.map(lambda _: _post_without_token(served.port), range(8)))
            return sum(1 for line in served.child.lines[mark:] if '"event": "request"' in line
                       and json.loads(line)["worker"] == 1)

        assert wait_until(lambda: served_by_new_worker() >= 5, 30)
    finally:
        served.stop()
    assert set(statuses) == {200}, statuses  # the new worker 1 too: it started on the reloaded file
