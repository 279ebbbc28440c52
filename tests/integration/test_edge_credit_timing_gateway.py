"""Money timing at the edge (issue 10, items 6 and 7), against the real gateway app, the real
chain and real upstreams:

- a credit hold never expires while its call is in flight (it is renewed), and a charge never
  takes more than is still held: a trickled upload cannot get one credit spent twice;
- work the upstream did is paid: a client that leaves after its complete request reached the
  upstream is charged for the 2xx; one that leaves before gets its hold released.
"""

from __future__ import annotations

import asyncio
import json
import socket
import sqlite3
import subprocess
import sys
import textwrap
import time
from pathlib import Path

import pytest
import yaml
from structlog.testing import capture_logs

from gateway.config.load import load_config
from gateway.ledger.database import sqlite_path
from gateway.auth.issuer import OwnIssuer
from tests.support.edge import wait_until
from tests.support.edge_upstreams import WorkUpstream
from tests.support.served import Served
from tests.support.stack import BROKE, HOST, base_config
from tests.support.upstreams import HeldUpstream

REPO = Path(__file__).resolve().parents[2]
DEADLINE = 10.0  # generous: every wait below is for a condition, this only bounds a failure


def ledger_rows(gw, sql: str, *args) -> list[tuple]:
    with sqlite3.connect(sqlite_path(gw.config.metering.ledger)) as conn:
        return conn.execute(sql, args).fetchall()


async def until(condition, what: str, deadline: float = DEADLINE):
    """Wait for `condition()` to be truthy (polling), or fail naming `what`."""
    end = time.monotonic() + deadline
    while not (value := condition()):
        if time.monotonic() > end:
            raise AssertionError(f"timed out waiting for {what}")
        await asyncio.sleep(0.01)
    return value


async def one_credit(chain) -> str:
    """A subscriber holding exactly one credit (BROKE starts with none; the chain is reverted after the test)."""
    await asyncio.to_thread(chain.dev.mint_credits, chain.credits_plan, BROKE, 1, 1)
    return BROKE


def config(chain, signing_key, upstream_url: str, **service) -> dict:
    data = base_config(chain, None, signing_key, upstream=upstream_url, **service)
    data["metering"] |= {"settle_every": "1h"}
    return data


# --- item 6: no credit spent twice ----------------------------------------------------------------

@pytest.mark.asyncio
async def test_a_trickled_upload_outliving_its_hold_period_never_spends_a_credit_twice(
        make_gateway, chain, signing_key):
    subscriber = await one_credit(chain)
    async with HeldUpstream() as upstream:
        # Hold lifetime: timeout (2 s) + hold_margin (0 s) = 2 s; the upload below takes longer.
        data = config(chain, signing_key, upstream.url, timeout="2s", protected_endpoints=["POST /echo/:x"])
        data["metering"]["hold_margin"] = "0s"
        gw = await make_gateway(data)
        token = gw.token(subscriber)
        finish = asyncio.Event()

        async def trickle():
            yield b'{"slow":'
            while not finish.is_set():  # the attack: a byte now and then, for longer than the hold period
                yield b" "
                await asyncio.sleep(0.1)
            yield b"1}"

        async def slow_call():
            async with gw.request("POST", "/echo/slow", token=token, data=trickle()) as resp:
                return resp.status, resp.headers.get("X-Credits-Charged"), await resp.read()

        slow = asyncio.create_task(slow_call())
        (first_expiry,) = await until(lambda: ledger_rows(gw, "SELECT expires_at FROM reservations"),
                                      "the slow call's hold")
        # Past the moment the hold would have expired without renewal (plus margin) ...
        await until(lambda: time.time() > first_expiry[0] + 0.5, "the original hold period to pass")
        # ... the credit is still held: a second call cannot reserve it again.
        async with gw.request("POST", "/echo/fast", token=token, json={"fast": 1}) as resp:
            assert resp.status == 402, await resp.text()
        (renewed,) = ledger_rows(gw, "SELECT expires_at FROM reservations")
        assert renewed[0] > first_expiry[0]  # renewed while the upload trickled
        finish.set()
        status, charged, body = await asyncio.wait_for(slow, DEADLINE)
    assert (status, charged) == (200, "1"), body
    assert ledger_rows(gw, "SELECT COALESCE(SUM(amount), 0), COUNT(*) FROM charges") == [(1, 1)]
    assert ledger_rows(gw, "SELECT COUNT(*) FROM reservations") == [(0,)]


@pytest.mark.asyncio
async def test_a_call_whose_hold_expired_anyway_is_refused_instead_of_charged_twice(make_gateway, chain, signing_key):
    """Should a hold expire despite renewal (a process stalled for its whole lifetime: simulated
    here by expiring the row), another call may take its credit; the late call is then refused
    with 503 `hold_expired` and charged nothing."""
    subscriber = await one_credit(chain)
    async with HeldUpstream() as upstream:
        gw = await make_gateway(config(chain, signing_key, upstream.url, protected_endpoints=["POST /echo/:x"]))
        token = gw.token(subscriber)
        finish = asyncio.Event()

        async def gated():
            yield b'{"late":'
            await finish.wait()
            yield b" 1}"

        async def late_call():
            async with gw.request("POST", "/echo/late", token=token, data=gated()) as resp:
                return resp.status, await resp.json(content_type=None)

        late = asyncio.create_task(late_call())
        await until(lambda: ledger_rows(gw, "SELECT COUNT(*) FROM reservations") == [(1,)], "the late call's hold")
        with sqlite3.connect(sqlite_path(gw.config.metering.ledger)) as conn:
            conn.execute("UPDATE reservations SET expires_at = 0")  # the stall: its lifetime is over
        async with gw.request("POST", "/echo/fast", token=token, json={"fast": 1}) as resp:
            assert (resp.status, resp.headers["X-Credits-Charged"]) == (200, "1")  # takes the freed credit
        finish.set()
        status, problem = await asyncio.wait_for(late, DEADLINE)
    assert (status, problem["code"]) == (503, "hold_expired")
    assert ledger_rows(gw, "SELECT COALESCE(SUM(amount), 0), COUNT(*) FROM charges") == [(1, 1)]


def test_a_bad_hold_margin_is_reported_by_check_config(tmp_path):
    broken = tmp_path / "broken.yaml"
    broken.write_text(textwrap.dedent("""
        base_domain: proxy.localhost
        services:
          elvis: {upstream: "http://127.0.0.1:9"}
        metering: {hold_margin: soon}
    """))
    run = subprocess.run([sys.executable, "-m", "gateway", "check-config", "--config", str(broken)],
                         capture_output=True, text=True, cwd=REPO)
    assert run.returncode == 1
    assert "metering.hold_margin: not a duration" in run.stderr, run.stderr


# --- item 7: work the upstream did is paid --------------------------------------------------------

def raw_post(path: str, token: str, body: bytes, announced: int | None = None) -> bytes:
    length = len(body) if announced is None else announced
    return (f"POST {path} HTTP/1.1\r\nHost: {HOST}\r\nAuthorization: Bearer {token}\r\n"
            f"Content-Type: application/json\r\nContent-Length: {length}\r\nConnection: close\r\n\r\n").encode() + body


async def open_raw(gw):
    host, port = gw.url.removeprefix("http://").split(":")
    return await asyncio.open_connection(host, int(port))


@pytest.mark.asyncio
async def test_a_client_leaving_after_its_request_reached_the_upstream_still_pays(make_gateway, chain, signing_key):
    subscriber = await one_credit(chain)
    async with WorkUpstream() as upstream:
        gw = await make_gateway(config(chain, signing_key, upstream.url, protected_endpoints=["POST /work"]))
        body = b'{"prompt": "an expensive LLM call"}'
        with capture_logs() as logs:
            reader, writer = await open_raw(gw)
            writer.write(raw_post("/work", gw.token(subscriber), body))
            await writer.drain()
            await asyncio.wait_for(upstream.arrived.wait(), DEADLINE)  # the upstream has done the work
            writer.transport.abort()  # the client leaves before the status line
            await until(lambda: any(e["event"] == "client_left_call_carried_through" for e in logs),
                        "the gateway to notice the client left")
            assert ledger_rows(gw, "SELECT COUNT(*) FROM reservations") == [(1,)]  # still held, not released
            upstream.release()  # the upstream answers 200
            await until(lambda: ledger_rows(gw, "SELECT COUNT(*) FROM charges") == [(1,)], "the charge")
            await until(lambda: any(e["event"] == "request" for e in logs), "the access-log line")
        assert upstream.applied == [body]
        assert ledger_rows(gw, "SELECT amount FROM charges") == [(1,)]
        assert ledger_rows(gw, "SELECT COUNT(*) FROM reservations") == [(0,)]
        line = next(e for e in logs if e["event"] == "request")
        assert (line["status"], line["upstream_status"], line["credits"]) == (499, 200, 1)


@pytest.mark.asyncio
async def test_a_client_leaving_before_its_request_reached_the_upstream_pays_nothing(make_gateway, chain, signing_key):
    subscriber = await one_credit(chain)
    async with WorkUpstream() as upstream:
        gw = await make_gateway(config(chain, signing_key, upstream.url, protected_endpoints=["POST /work"]))
        reader, writer = await open_raw(gw)
        # Announces 100 bytes, sends 10: the gateway holds the credit and streams what it has.
        writer.write(raw_post("/work", gw.token(subscriber), b'{"part": 1', announced=100))
        await writer.drain()
        await until(lambda: ledger_rows(gw, "SELECT COUNT(*) FROM reservations") == [(1,)], "the hold")
        writer.transport.abort()  # leaves mid-upload
        await until(lambda: ledger_rows(gw, "SELECT COUNT(*) FROM reservations") == [(0,)], "the release")
        upstream.release()
    assert upstream.applied == []  # the upstream never had a complete request
    assert ledger_rows(gw, "SELECT COUNT(*) FROM charges") == [(0,)]


@pytest.mark.asyncio
async def test_a_client_closing_right_after_its_body_never_gets_the_upstreams_work_free(
        make_gateway, chain, signing_key):
    """The attack as sent: the whole request, then close at once. Whether the gateway forwarded it
    before noticing depends on timing; either way no work is done unpaid."""
    subscriber = await one_credit(chain)
    async with WorkUpstream() as upstream:
        gw = await make_gateway(config(chain, signing_key, upstream.url, protected_endpoints=["POST /work"]))
        with capture_logs() as logs:
            reader, writer = await open_raw(gw)
            writer.write(raw_post("/work", gw.token(subscriber), b'{"prompt": "free?"}'))
            await writer.drain()
            writer.close()
            logged = lambda: any(e["event"] == "request" for e in logs)  # noqa: E731
            await until(lambda: upstream.arrived.is_set() or logged(), "the upstream or the gateway's log line")
            if upstream.arrived.is_set():
                upstream.release()
            await until(logged, "the access-log line")
        applied = len(upstream.applied)
        assert ledger_rows(gw, "SELECT COUNT(*), COALESCE(SUM(amount), 0) FROM charges") == [(applied, applied)]
        assert ledger_rows(gw, "SELECT COUNT(*) FROM reservations") == [(0,)]


# --- the same two attacks against the real `gateway serve` process (2 workers, one ledger) ---------

def served_edge(chain, plugin, signing_key, tmp_path, subscriber: str, **service) -> Served:
    """`gateway serve` with 2 workers; `service` keys changed on the `elvis` service."""
    served = Served(chain, plugin, signing_key, tmp_path, workers=2)
    data = yaml.safe_load(served.path.read_text())
    data["services"]["elvis"].update(service)
    data["metering"]["hold_margin"] = "0s"
    served.path.write_text(yaml.safe_dump(data))
    served.config = load_config(served.path)
    served.token = OwnIssuer(served.config.tokens.own).issue(subscriber, ["elvis"])
    return served


def test_a_trickled_upload_to_the_real_gateway_never_spends_a_credit_twice(chain, plugin, signing_key, tmp_path):
    chain.dev.mint_credits(chain.credits_plan, BROKE, 1, 1)  # one credit
    served = served_edge(chain, plugin, signing_key, tmp_path, BROKE, timeout="2s")  # hold: 2 s
    served.start()
    try:
        body = json.dumps({"queries": [{"query": "love"}]}).encode()[:-1] + b" " * 400 + b"}"
        with socket.create_connection(("127.0.0.1", served.port), timeout=30) as sock:
            sock.sendall(raw_post("/query", served.token, body[:1], announced=len(body)))
            assert wait_until(lambda: served.ledger("SELECT COUNT(*) FROM reservations") == [(1,)], DEADLINE)
            (first_expiry,), = served.ledger("SELECT expires_at FROM reservations")
            sent = 1
            while time.time() < first_expiry + 0.5:  # the attack: a byte now and then, past the hold period
                sock.sendall(body[sent:sent + 1])
                sent += 1
                time.sleep(0.05)
            status, _ = served.call("/query", {"queries": [{"query": "love"}]})
            assert status == 402  # the credit is still held: not reserved a second time
            sock.sendall(body[sent:])
            answer = b"".join(iter(lambda: sock.recv(65536), b""))  # Connection: close
        assert answer.startswith(b"HTTP/1.1 200") and b"X-Credits-Charged: 1" in answer, answer[:500]
        assert served.ledger("SELECT COALESCE(SUM(amount), 0), COUNT(*) FROM charges") == [(1, 1)]
    finally:
        served.stop()


@pytest.mark.asyncio
async def test_a_client_leaving_the_real_gateway_after_its_request_reached_the_upstream_still_pays(
        chain, plugin, signing_key, tmp_path):
    async with WorkUpstream() as upstream:
        served = served_edge(chain, plugin, signing_key, tmp_path, BROKE, upstream=upstream.url,
                             protected_endpoints=["POST /work"])
        await asyncio.to_thread(chain.dev.mint_credits, chain.credits_plan, BROKE, 1, 1)
        served.start()  # blocks until it listens (the upstream is not needed meanwhile)
        try:
            reader, writer = await asyncio.open_connection("127.0.0.1", served.port)
            writer.write(raw_post("/work", served.token, b'{"prompt": "an expensive LLM call"}'))
            await writer.drain()
            await asyncio.wait_for(upstream.arrived.wait(), DEADLINE)  # the upstream has done the work
            writer.transport.abort()  # the client leaves before the status line
            await until(lambda: any("client_left_call_carried_through" in line for line in served.child.lines),
                        "the gateway to notice the client left")
            upstream.release()
            await until(lambda: served.ledger("SELECT COUNT(*) FROM charges") == [(1,)], "the charge")
            assert served.ledger("SELECT amount FROM charges") == [(1,)]
            await until(lambda: served.ledger("SELECT COUNT(*) FROM reservations") == [(0,)], "the hold to go")
        finally:
            served.stop()
    assert len(upstream.applied) == 1
