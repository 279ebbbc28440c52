"""MCP at the edge (issue 10, item 8), against the real gateway app, the real chain and the real
example MCP server: what is not a tool call costs nothing, and what an attacker can make the
gateway answer or log is bounded, whatever the batch."""

from __future__ import annotations

import asyncio
import json
import sqlite3
import subprocess
import sys
import textwrap
from pathlib import Path

import pytest
from structlog.testing import capture_logs

from gateway.ledger.database import sqlite_path
from tests.support.mcp import mcp_config, rpc
from tests.support.stack import BROKE, SUBSCRIBER
from tests.support.upstreams import HeldUpstream

REPO = Path(__file__).resolve().parents[2]
ANSWER_BOUND = 32 * 1024   # a refused batch of 100 calls answers less than this
LOG_LINE_BOUND = 4 * 1024  # the access-log line of any request stays under this


def ledger_count(gw, table: str) -> int:
    with sqlite3.connect(sqlite_path(gw.config.metering.ledger)) as conn:
        return conn.execute(f"SELECT COUNT(*) FROM {table}").fetchone()[0]


@pytest.mark.asyncio
async def test_an_mcp_event_stream_or_session_end_is_not_refused_for_want_of_credits(
        make_gateway, chain, signing_key, mcp_upstream):
    gw = await make_gateway(mcp_config(chain, signing_key, mcp_upstream))
    token = gw.token(BROKE)  # a valid token, zero credits
    for method in ("GET", "DELETE"):
        async with gw.request(method, "/mcp", token=token, headers={"Accept": "text/event-stream"}) as resp:
            # Forwarded: whatever the MCP server answers, never a 402 from the gateway.
            assert resp.status != 402, (method, resp.status, await resp.text())
            assert "X-Credits-Charged" not in resp.headers
        async with gw.request(method, "/mcp") as resp:
            assert resp.status == 401, method  # but never without a token
    assert (ledger_count(gw, "reservations"), ledger_count(gw, "charges")) == (0, 0)


@pytest.mark.asyncio
async def test_an_open_mcp_event_stream_holds_no_credits(make_gateway, chain, signing_key):
    async with HeldUpstream() as upstream:  # /hold stands for the MCP server's GET stream
        gw = await make_gateway(mcp_config(chain, signing_key, upstream.url, path="/hold"))
        call = asyncio.create_task(gw.request("GET", "/hold", token=gw.token(SUBSCRIBER)).__aenter__())
        for _ in range(2000):  # the stream reaches the upstream (a 10 s deadline)
            if upstream.requests:
                break
            await asyncio.sleep(0.005)
        assert upstream.requests
        assert ledger_count(gw, "reservations") == 0  # nothing held while it is open
        upstream.release()
        resp = await asyncio.wait_for(call, 10)
        assert resp.status == 200 and "X-Credits-Charged" not in resp.headers
        resp.release()
    assert ledger_count(gw, "charges") == 0


@pytest.mark.asyncio
async def test_a_batch_above_the_cap_is_refused_before_any_pricing(make_gateway, chain, signing_key):
    async with HeldUpstream() as upstream:
        gw = await make_gateway(mcp_config(chain, signing_key, upstream.url, path="/hold", max_batch=5))
        batch = [rpc(i, "tools/call", "search") for i in range(6)]
        async with gw.request("POST", "/hold", token=gw.token(SUBSCRIBER), json=batch) as resp:
            problem = await resp.json(content_type=None)
            assert resp.status == 400 and problem["code"] == "bad_request" and "at most 5" in problem["detail"]
        async with gw.request("POST", "/hold", token=gw.token(BROKE), json=batch[:5]) as resp:
            assert resp.status == 402  # at the cap: priced (and refused for want of credits)
        assert upstream.requests == []


@pytest.mark.asyncio
async def test_a_refused_batch_at_the_cap_answers_a_bounded_size(make_gateway, chain, signing_key, mcp_upstream):
    gw = await make_gateway(mcp_config(chain, signing_key, mcp_upstream))
    batch = [rpc(i, "tools/call", "summarize", song_id="blue-highway") for i in range(100)]  # the default cap
    async with gw.request("POST", "/mcp", token=gw.token(BROKE), json=batch) as resp:
        raw = await resp.read()
        assert resp.status == 402
    assert len(raw) < ANSWER_BOUND, len(raw)
    errors = json.loads(raw)
    assert [e["id"] for e in errors] == list(range(100)) and {e["error"]["code"] for e in errors} == {402}
    assert errors[0]["error"]["data"]["plan"]["credits"] == 500  # the full problem, once
    assert errors[1]["error"]["data"]["code"] == "payment_required"


@pytest.mark.asyncio
async def test_a_huge_batch_of_long_tool_names_logs_a_bounded_line(make_gateway, chain, signing_key):
    async with HeldUpstream() as upstream:
        gw = await make_gateway(mcp_config(chain, signing_key, upstream.url, path="/hold"))
        batch = [rpc(i, "tools/call", f"tool-{i}-" + "x" * 10_000) for i in range(100)]  # ~1 MB of names
        with capture_logs() as logs:
            async with gw.request("POST", "/hold", token=gw.token(BROKE), json=batch) as resp:
                assert resp.status == 402
                assert len(await resp.read()) < ANSWER_BOUND
        line = next(e for e in logs if e["event"] == "request")
        assert len(json.dumps(line, default=str)) < LOG_LINE_BOUND
        assert "(+90 more)" in line["rule"]
        assert upstream.requests == []


def test_a_bad_mcp_batch_cap_is_reported_by_check_config(tmp_path):
    broken = tmp_path / "broken.yaml"
    broken.write_text(textwrap.dedent("""
        base_domain: proxy.localhost
        services:
          elvis:
            upstream: "http://127.0.0.1:9"
            mcp: {max_batch: 0}
    """))
    run = subprocess.run([sys.executable, "-m", "gateway", "check-config", "--config", str(broken)],
                         capture_output=True, text=True, cwd=REPO)
    assert run.returncode == 1
    assert "services.elvis.mcp.max_batch: must be between 1 and 10000" in run.stderr, run.stderr
