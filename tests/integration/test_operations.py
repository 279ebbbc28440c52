"""Operations: metrics that match the calls made, readiness that follows the chain, reload under
load without a failed call, and SIGTERM during a stream (it completes, is charged, settled)."""

from __future__ import annotations

import signal
import sys
import threading
import time
import urllib.request

import aiohttp
import pytest
import pytest_asyncio
import yaml
from aiohttp import web
from prometheus_client.parser import text_string_to_metric_families

from gateway.ops.admin import build_admin_app
from gateway.dev.process import REPO
from tests.support.rpc_proxy import RpcProxy
from tests.support.served import Served
from tests.support.stack import DEV_ACCOUNTS, START_CREDITS, SUBSCRIBER, base_config

QUERY = {"queries": [{"query": "love"}]}


@pytest_asyncio.fixture
async def admin_for(make_gateway):
    runners = []

    async def make(gw):
        runner = web.AppRunner(build_admin_app(gw.app))
        await runner.setup()
        await web.TCPSite(runner, "127.0.0.1", 0).start()
        runners.append(runner)
        return f"http://127.0.0.1:{runner.addresses[0][1]}"

    yield make
    for runner in runners:
        await runner.cleanup()


def samples(text: str) -> dict[tuple, float]:
    out = {}
    for family in text_string_to_metric_families(text):
        for s in family.samples:
            out[(s.name, tuple(sorted(s.labels.items())))] = s.value
    return out


@pytest.mark.asyncio
async def test_metrics_count_the_calls_made(make_gateway, admin_for, chain, plugin, signing_key):
    data = base_config(chain, plugin, signing_key)
    data["metering"] |= {"operator_key": DEV_ACCOUNTS[0][1], "settle_every": "1h"}
    gw = await make_gateway(data)
    admin = await admin_for(gw)
    token = gw.token(SUBSCRIBER)
    script = [("GET", "/health", None, 200)] * 3 + [("POST", "/query", token, 200)] * 2 + \
             [("POST", "/query", None, 401), ("GET", "/nope", None, 404), ("POST", "/ask", token, 200)]
    bodies = {"/query": QUERY, "/ask": {"question": "what happens on the blue highway"}}
    for method, path, tok, expected in script:
        async with gw.request(method, path, token=tok, json=bodies.get(path)) as resp:
            assert resp.status == expected
    async with aiohttp.ClientSession() as s:
        async with s.post(admin + "/settle") as resp:
            assert len((await resp.json())["confirmed"]) == 1
        async with s.get(admin + "/metrics") as resp:
            m = samples(await resp.text())
    req = lambda decision, status: m[("gateway_requests_total", (("decision", decision), ("service", "elvis"), ("status", status)))]
    assert req("open", "200") == 3 and req("protected", "200") == 3 and req("protected", "401") == 1
    assert req("not_exposed", "404") == 1
    assert m[("gateway_credits_charged_total", (("service", "elvis"),))] == 4
    assert m[("gateway_credits_reserved_total", (("service", "elvis"),))] == 4
    assert m[("gateway_credits_settled_total", ())] == 4
    assert m[("gateway_plan_rpc_calls_total", ())] == 1
    assert m[("gateway_plan_checks_total", (("result", "hit"),))] == 2
    assert m[("gateway_upstream_response_seconds_count", (("service", "elvis"),))] == 6
    assert m[("gateway_settlement_lag_seconds", ())] == 0
    assert m[("gateway_open_streams", ())] == 0
    rpc_ok = sum(v for (name, labels), v in m.items() if name == "gateway_rpc_calls_total" and ("outcome", "ok") in labels)
    assert rpc_ok >= 1


@pytest.mark.asyncio
async def test_readyz_follows_the_rpc(make_gateway, admin_for, chain, plugin, signing_key):
    async with RpcProxy(chain.rpc_url) as rpc:
        data = base_config(chain, plugin, signing_key)
        data["chains"]["local"] |= {"rpc_urls": [rpc.url], "timeout": "300ms"}
        gw = await make_gateway(data)
        admin = await admin_for(gw)
        async with aiohttp.ClientSession() as s:
            async def ready():
                async with s.get(admin + "/readyz") as resp:
                    return resp.status, await resp.json()
            assert (await ready())[0] == 200
            rpc.down = True
            status, body = await ready()
            assert status == 503 and body["chains"] == {"local": False} and body["ledger"] is True
            rpc.down = False
            assert (await ready())[0] == 200


def _reload(served: Served) -> None:
    import subprocess
    subprocess.run([sys.executable, "-m", "gateway", "reload", "--config", str(served.path)], check=True,
                   cwd=REPO, capture_output=True)


def test_reload_under_load_changes_prices_without_a_failed_call(chain, plugin, signing_key, tmp_path):
    chain.dev.mint_credits(chain.credits_plan, SUBSCRIBER, 1, 995)  # 1000 credits
    served = Served(chain, plugin, signing_key, tmp_path)
    data = yaml.safe_load(served.path.read_text())
    data["pid_file"] = str(tmp_path / "gateway.pid")
    served.path.write_text(yaml.safe_dump(data))
    served.start()
    statuses: list[tuple[int, str | None]] = []
    stop = threading.Event()

    def loop():
        while not stop.is_set() and len(statuses) < 2000:
            status, headers = served.call("/query", QUERY)
            statuses.append((status, headers.get("X-Credits-Charged")))

    client = threading.Thread(target=loop)
    client.start()
    try:
        def wait_until(pred, what):
            deadline = time.monotonic() + 30
            while time.monotonic() < deadline:
                if pred():
                    return
                time.sleep(0.01)  # polling the client loop's results, bounded
            raise AssertionError(what)

        wait_until(lambda: len(statuses) >= 20, "calls before the reload")
        data["services"]["elvis"]["protected_endpoints"] = [{"endpoint": "POST /query", "credits": 3}, "POST /upsert"]
        served.path.write_text(yaml.safe_dump(data))
        mark = len(served.child.lines)
        _reload(served)
        served.child.wait_for(r'"event": "reloaded"', start=mark)
        seen = len(statuses)
        wait_until(lambda: len(statuses) >= seen + 20, "calls after the reload")
        assert served.call("/upsert", {"documents": []})[0] == 200  # the endpoint added by the reload

        served.path.write_text("services: {elvis: {upstream: nowhere}}\n")  # broken: refused, old config kept
        mark = len(served.child.lines)
        _reload_signal_only(data["pid_file"])
        served.child.wait_for(r'"event": "reload_refused"', start=mark)
        seen = len(statuses)
        wait_until(lambda: len(statuses) >= seen + 20, "calls after the refused reload")
    finally:
        stop.set()
        client.join()
        served.stop()
    assert {status for status, _ in statuses} == {200}  # not one failed call
    prices = [charged for _, charged in statuses]
    assert prices[0] == "1" and prices[-1] == "3"
    switch = prices.index("3")
    assert set(prices[:switch]) == {"1"} and set(prices[switch:]) == {"3"}  # in-flight calls kept their price


def _reload_signal_only(pid_file: str) -> None:
    import os
    with open(pid_file) as f:
        os.kill(int(f.read().strip()), signal.SIGHUP)


def test_sigterm_lets_a_stream_finish_charges_and_settles_it(chain, plugin, signing_key, tmp_path):
    served = Served(chain, plugin, signing_key, tmp_path)
    served.start()
    req = urllib.request.Request(f"http://127.0.0.1:{served.port}/stream?count=20&interval_ms=50",
                                 headers={"Host": "elvis.proxy.localhost", "Authorization": f"Bearer {served.token}"})
    with urllib.request.urlopen(req, timeout=30) as resp:
        assert resp.headers["X-Credits-Charged"] == "1"
        first = resp.readline()
        assert first.startswith(b"id: 0")
        served.child.proc.send_signal(signal.SIGTERM)  # mid-stream
        rest = resp.read()
    assert b"event: done" in rest and rest.count(b"event: line") == 20
    assert served.child.proc.wait(timeout=60) == 0
    assert served.ledger("SELECT amount, settled_at IS NOT NULL FROM charges") == [(1, 1)]
    assert chain.dev.credits_of(chain.credits_plan, SUBSCRIBER, 1) == START_CREDITS - 1
