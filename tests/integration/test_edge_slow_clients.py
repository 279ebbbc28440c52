"""Hardened edge, slow and idle clients (issue 10 item 5), against the real `gateway serve`:
half-open connections are cut at the head deadline while legitimate calls and the admin
/healthz keep answering, connections above the cap are closed at once, idle kept-alive
connections are closed, the open-files limit is raised, and bad limits are reported at start."""

from __future__ import annotations

import resource
import socket
import statistics
import subprocess
import sys
import time
import urllib.request

import yaml

from gateway.dev.process import REPO
from tests.support.edge import served_with, wait_for_workers, wait_until
from tests.support.stack import HOST, SUBSCRIBER, base_config

HALF_HEAD = b"GET / HTTP/1.1\r\nHost: x\r\n"  # a request head never finished
QUERY = {"queries": [{"query": "love"}]}


def _raise_own_open_files_limit() -> None:
    soft, hard = resource.getrlimit(resource.RLIMIT_NOFILE)
    resource.setrlimit(resource.RLIMIT_NOFILE, (hard, hard))


def _half_open(port: int, count: int) -> list[socket.socket]:
    socks = []
    for _ in range(count):
        s = socket.create_connection(("127.0.0.1", port), timeout=10)
        s.sendall(HALF_HEAD)
        s.setblocking(False)  # for _closed_by_peer: a look, never a wait
        socks.append(s)
    return socks


def _closed_by_peer(sock: socket.socket) -> bool:
    """EOF or reset seen on the socket (without waiting)."""
    try:
        return sock.recv(1, socket.MSG_DONTWAIT | socket.MSG_PEEK) == b""
    except BlockingIOError:
        return False
    except ConnectionError:
        return True


def _read_response(sock: socket.socket) -> bytes:
    """One whole response (head and Content-Length body) from a kept-alive connection."""
    data = b""
    while b"\r\n\r\n" not in data:
        data += sock.recv(65536)
    head, body = data.split(b"\r\n\r\n", 1)
    length = next(int(line.split(b":", 1)[1]) for line in head.split(b"\r\n")
                  if line.lower().startswith(b"content-length:"))
    while len(body) < length:
        body += sock.recv(65536)
    return data


def _healthz(admin: int) -> tuple[int, float]:
    began = time.monotonic()
    with urllib.request.urlopen(f"http://127.0.0.1:{admin}/healthz", timeout=10) as resp:
        return resp.status, time.monotonic() - began


def _timed_call(served) -> tuple[int, float]:
    began = time.monotonic()
    status, _ = served.call("/query", QUERY)
    return status, time.monotonic() - began


def test_half_open_connections_are_cut_and_never_starve_calls_or_healthz(chain, plugin, signing_key, tmp_path):
    _raise_own_open_files_limit()
    chain.dev.mint_credits(chain.credits_plan, SUBSCRIBER, 1, 95)
    served = served_with(chain, plugin, signing_key, tmp_path, workers=2,
                         connections={"header_timeout": "5s", "keepalive_timeout": "15s"})
    served.start()
    socks: list[socket.socket] = []
    try:
        wait_for_workers(served, 2)
        began = time.monotonic()
        socks = _half_open(served.port, 2400)
        opened = time.monotonic() - began
        calls = [_timed_call(served) for _ in range(20)]
        health = [_healthz(served.admin) for _ in range(5)]
        held = sum(1 for s in socks if not _closed_by_peer(s))
        print(f"\n2,400 half-open connections opened in {opened:.2f} s; while held ({held} still open): "
              f"/query p50 {statistics.median(t for _, t in calls) * 1000:.1f} ms, "
              f"max {max(t for _, t in calls) * 1000:.1f} ms; /healthz max {max(t for _, t in health) * 1000:.1f} ms")
        assert held >= 2300  # the calls below ran while the half-open connections were held
        assert all(status == 200 and took < 1.0 for status, took in calls), calls
        assert all(status == 200 and took < 1.0 for status, took in health), health
        # Every half-open connection is closed by the gateway once its head deadline passed.
        assert wait_until(lambda: all(_closed_by_peer(s) for s in socks), 5 + 15, interval=0.2), \
            sum(1 for s in socks if not _closed_by_peer(s))
        assert served.call("/query", QUERY)[0] == 200
        assert served.child.wait_for(r'"event": "request_head_timeouts"', 5)  # said once, not 2,400 times
    finally:
        for s in socks:
            s.close()
        served.stop()
    assert served.child.proc.returncode == 0
    assert sum('"event": "request_head_timeouts"' in line for line in served.child.lines) <= 4


def test_connections_above_the_cap_are_closed_at_once_and_admin_keeps_answering(chain, plugin, signing_key,
                                                                                tmp_path):
    served = served_with(chain, plugin, signing_key, tmp_path, workers=1,
                         connections={"header_timeout": "60s", "max_per_worker": 50})
    served.start()
    socks: list[socket.socket] = []
    try:
        socks = _half_open(served.port, 50)  # the whole budget, held (the head deadline is far away)
        extra = _half_open(served.port, 5)
        # Above the cap: closed before anything is read, long before the 60 s head deadline.
        assert wait_until(lambda: all(_closed_by_peer(s) for s in extra), 5)
        assert not any(_closed_by_peer(s) for s in socks)
        assert _healthz(served.admin)[0] == 200  # the admin listener has a budget of its own
        assert served.child.wait_for(r'"event": "connections_refused"', 5)
        for s in socks + extra:
            s.close()
        socks = []
        # The budget is back: a legitimate call is served again.
        assert wait_until(lambda: served.call("/query", QUERY)[0] == 200, 10, interval=0.2)
    finally:
        for s in socks:
            s.close()
        served.stop()


def test_idle_keepalive_and_slow_second_heads_are_closed(chain, plugin, signing_key, tmp_path):
    served = served_with(chain, plugin, signing_key, tmp_path, workers=1,
                         connections={"header_timeout": "2s", "keepalive_timeout": "3s"})
    served.start()
    try:
        request = f"GET /health HTTP/1.1\r\nHost: {HOST}\r\n\r\n".encode()
        idle, slow = (socket.create_connection(("127.0.0.1", served.port), timeout=10) for _ in range(2))
        for s in (idle, slow):
            s.sendall(request)
            assert _read_response(s).startswith(b"HTTP/1.1 200")
            s.setblocking(False)
        slow.sendall(b"GET /health HTTP/1.1\r\n")  # the next head, never finished
        began = time.monotonic()
        assert wait_until(lambda: _closed_by_peer(slow), 10)
        slow_closed = time.monotonic() - began
        assert wait_until(lambda: _closed_by_peer(idle), 10)
        idle_closed = time.monotonic() - began
        assert slow_closed < idle_closed  # the head deadline (2 s) cut it, not the idle timeout (3 s)
        idle.close()
        slow.close()
    finally:
        served.stop()


def test_open_files_limit_is_raised_to_the_hard_limit(chain, plugin, signing_key, tmp_path):
    soft, hard = resource.getrlimit(resource.RLIMIT_NOFILE)
    low = min(1024, hard)
    served = served_with(chain, plugin, signing_key, tmp_path, workers=2)
    resource.setrlimit(resource.RLIMIT_NOFILE, (low, hard))  # the gateway inherits a low soft limit
    try:
        served.start()
    finally:
        resource.setrlimit(resource.RLIMIT_NOFILE, (soft, hard))
    try:
        pids = wait_for_workers(served, 2)
        for pid in [served.child.proc.pid, *pids.values()]:
            assert resource.prlimit(pid, resource.RLIMIT_NOFILE) == (hard, hard)
    finally:
        served.stop()


def test_bad_connection_limits_are_reported_by_check_config(signing_key, tmp_path):
    data = base_config(None, None, signing_key)
    data["connections"] = {"header_timeout": "0s", "keepalive_timeout": "soon", "max_per_worker": 0,
                           "admin_max": -1, "slowloris": True}
    path = tmp_path / "gateway.yaml"
    path.write_text(yaml.safe_dump(data))
    run = subprocess.run([sys.executable, "-m", "gateway", "check-config", "--config", str(path)],
                         capture_output=True, text=True, cwd=REPO, timeout=60)
    assert run.returncode == 1
    for problem in ("connections.header_timeout: must be a positive duration",
                    "connections.keepalive_timeout: not a duration",
                    "connections.max_per_worker: must be >= 1", "connections.admin_max: must be >= 1",
                    "connections.slowloris: unknown key"):
        assert problem in run.stderr, run.stderr
