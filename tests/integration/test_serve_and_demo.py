"""The real `gateway serve` process and `gateway demo --once`, as a newcomer runs them."""

from __future__ import annotations

import json
import signal
import subprocess
import sys
import urllib.request

import pytest
import yaml

from gateway.dev.chain import free_port
from gateway.dev.process import REPO, ChildProcess
from tests.support.stack import SUBSCRIBER, base_config


def get(url: str, host: str | None = None, token: str | None = None):
    headers = {"Host": host} if host else {}
    if token:
        headers["Authorization"] = f"Bearer {token}"
    try:
        with urllib.request.urlopen(urllib.request.Request(url, headers=headers), timeout=10) as resp:
            return resp.status, resp.read()
    except urllib.error.HTTPError as err:
        return err.code, err.read()


@pytest.fixture
def served(chain, plugin, signing_key, tmp_path):
    port, admin = free_port(), free_port()
    data = base_config(chain, plugin, signing_key)
    data.update(listen=f"127.0.0.1:{port}", admin_listen=f"127.0.0.1:{admin}", workers=1)
    path = tmp_path / "gateway.yaml"
    path.write_text(yaml.safe_dump(data))
    child = ChildProcess([sys.executable, "-m", "gateway", "serve", "--config", str(path)], ready=r'"event": "listening"')
    yield child, port, admin, path
    child.stop()


def test_serve_answers_logs_json_and_stops_on_sigterm(served):
    child, port, admin, path = served
    token = subprocess.run([sys.executable, "-m", "gateway", "token", "issue", "--config", str(path), "--service", "elvis",
                            "--subscriber", SUBSCRIBER.lower()], capture_output=True, text=True, cwd=REPO, check=True).stdout.strip()
    mark = len(child.lines)
    status, body = get(f"http://127.0.0.1:{port}/stream?count=1&interval_ms=1", "elvis.proxy.localhost", token)
    assert status == 200 and b"event: done" in body
    line = json.loads(child.wait_for(r'"event": "request"', start=mark).string)
    assert line["subscriber"] == SUBSCRIBER and line["status"] == 200 and line["decision"] == "protected"
    assert token not in "\n".join(child.lines)
    assert child.stop(signal.SIGTERM) == 0


def test_admin_endpoints(served):
    _child, port, admin, _path = served
    assert get(f"http://127.0.0.1:{admin}/healthz")[0] == 200
    status, body = get(f"http://127.0.0.1:{admin}/readyz")
    assert status == 200 and json.loads(body)["chains"] == {"local": True}
    get(f"http://127.0.0.1:{port}/health", "elvis.proxy.localhost")
    status, metrics = get(f"http://127.0.0.1:{admin}/metrics")
    assert status == 200
    assert b'gateway_requests_total{decision="open",service="elvis",status="200"} 1.0' in metrics
    assert b'gateway_plan_checks_total{result="hit"} 0.0' in metrics
    # The admin listener is separate: the public port does not serve it.
    assert get(f"http://127.0.0.1:{port}/metrics", "elvis.proxy.localhost")[0] == 404


def test_serve_refuses_a_broken_config(tmp_path):
    path = tmp_path / "broken.yaml"
    path.write_text("services: {elvis: {upstream: nowhere}}\n")
    run = subprocess.run([sys.executable, "-m", "gateway", "serve", "--config", str(path)],
                         capture_output=True, text=True, cwd=REPO, timeout=60)
    assert run.returncode == 1
    assert "services.elvis.upstream: not an http(s) URL" in run.stderr
    assert "base_domain: required" in run.stderr


def test_demo_once_walks_through_the_four_outcomes():
    run = subprocess.run([sys.executable, "-m", "gateway", "demo", "--once"], capture_output=True, text=True,
                         cwd=REPO, timeout=180)
    assert run.returncode == 0, run.stdout + run.stderr
    out = run.stdout
    assert "FAIL" not in out
    for expected in ("open endpoint, no token", "-> 200", "-> 401", "-> 402", "payment_required",
                     "the plugin saw the owner's secret on /query: True; a subscriber token reached it: False",
                     "charged 2, remaining 0", "over budget", "settlement: one burnCredits transaction for 5",
                     "balance of 0x3C44CdDdB6a900fa2b585dd299e03d12FA4293BC: 5 -> 0",
                     "the plugin's manifest, rewritten by the gateway", '"type": "user_http"',
                     "api.url http://elvis.proxy.localhost:", "appears in them: False"):
        assert expected in out, out
