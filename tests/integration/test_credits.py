"""Credits end to end (real gateway app, real chain, real upstreams): reservations, charges,
dynamic prices, releases, batched burns, refused burns and shortfalls."""

from __future__ import annotations

import asyncio
import sqlite3

import pytest

from gateway.app import RUNTIME
from gateway.ledger.database import sqlite_path
from tests.support.stack import DEV_ACCOUNTS, OWNER, START_CREDITS, SUBSCRIBER, base_config
from tests.support.upstreams import HeldUpstream

pytestmark = pytest.mark.asyncio
QUERY = {"queries": [{"query": "love"}]}
ASK = {"question": "what happens on the blue highway"}
OPERATOR = DEV_ACCOUNTS[0]    # deployed the plan: holds the burner role
NO_ROLE = DEV_ACCOUNTS[6]     # an operator key without the burner role
SINK = DEV_ACCOUNTS[7][0]


def metered(chain, plugin, signing_key, operator=OPERATOR, **service):
    data = base_config(chain, plugin, signing_key, **service)
    data["metering"] |= {"operator_key": operator[1], "settle_every": "1h"}
    return data


def ledger_rows(gw, sql: str, *args) -> list[tuple]:
    with sqlite3.connect(sqlite_path(gw.config.metering.ledger)) as conn:
        return conn.execute(sql, args).fetchall()


def settler(gw):
    return gw.app[RUNTIME].settler


async def test_concurrent_calls_never_spend_more_than_the_balance_and_settle_exactly(
        make_gateway, chain, plugin, signing_key):
    gw = await make_gateway(metered(chain, plugin, signing_key))
    token = gw.token(SUBSCRIBER)

    async def one():
        async with gw.request("POST", "/query", json=QUERY, token=token) as resp:
            await resp.read()
            return resp.status, resp.headers.get("X-Credits-Charged")

    results = await asyncio.gather(*(one() for _ in range(5 * START_CREDITS)))
    statuses = sorted(status for status, _ in results)
    assert statuses.count(200) == START_CREDITS and statuses.count(402) == 4 * START_CREDITS
    charged = sum(int(c) for status, c in results if status == 200)
    assert ledger_rows(gw, "SELECT SUM(amount), COUNT(*) FROM charges") == [(charged, START_CREDITS)]
    assert ledger_rows(gw, "SELECT COUNT(*) FROM reservations") == [(0,)]

    report = await settler(gw).settle_once()
    assert len(report.sent) == 1 and report.confirmed == report.sent  # one burn for the whole group
    assert chain.dev.credits_of(chain.credits_plan, SUBSCRIBER, 1) == START_CREDITS - charged
    assert ledger_rows(gw, "SELECT COUNT(*) FROM charges WHERE settled_at IS NULL") == [(0,)]
    # Settling again burns nothing twice.
    assert (await settler(gw).settle_once()).sent == []
    assert chain.dev.credits_of(chain.credits_plan, SUBSCRIBER, 1) == START_CREDITS - charged


async def test_charge_headers_and_remaining_credits(make_gateway, chain, plugin, signing_key):
    gw = await make_gateway(metered(chain, plugin, signing_key))
    token = gw.token(SUBSCRIBER)
    async with gw.request("POST", "/ask", json=ASK, token=token) as resp:
        assert resp.status == 200
        assert (resp.headers["X-Credits-Charged"], resp.headers["X-Credits-Remaining"]) == ("2", str(START_CREDITS - 2))
    async with gw.request("POST", "/query", json=QUERY, token=token) as resp:
        assert resp.headers["X-Credits-Remaining"] == str(START_CREDITS - 3)


@pytest.mark.parametrize("reported, charged", [(4, 4), (50, 10), (0, 2)])
async def test_dynamic_price_comes_from_the_upstream_header_clamped(make_gateway, chain, signing_key, reported, charged):
    await asyncio.to_thread(chain.dev.mint_credits, chain.credits_plan, SUBSCRIBER, 1, 100)
    async with HeldUpstream() as upstream:
        gw = await make_gateway(metered(chain, None, signing_key, upstream=upstream.url, protected_endpoints=[
            {"endpoint": "POST /priced/:n", "credits": {"header": "X-Credits-Consumed", "min": 2, "max": 10}}]))
        async with gw.request("POST", f"/priced/{reported}", token=gw.token(SUBSCRIBER)) as resp:
            assert resp.status == 200
            assert resp.headers["X-Credits-Charged"] == str(charged)
            assert "X-Credits-Consumed" not in resp.headers  # the gateway consumes the price header
    assert ledger_rows(gw, "SELECT amount FROM charges") == [(charged,)]


async def test_dynamic_price_reserves_its_maximum(make_gateway, chain, signing_key):
    async with HeldUpstream() as upstream:  # START_CREDITS (5) cannot cover a max of 10
        gw = await make_gateway(metered(chain, None, signing_key, upstream=upstream.url, protected_endpoints=[
            {"endpoint": "POST /priced/:n", "credits": {"header": "X-Credits-Consumed", "min": 1, "max": 10}}]))
        async with gw.request("POST", "/priced/1", token=gw.token(SUBSCRIBER)) as resp:
            assert resp.status == 402
        assert upstream.requests == []


async def test_non_2xx_answers_charge_nothing(make_gateway, chain, plugin, signing_key):
    gw = await make_gateway(metered(chain, plugin, signing_key, protected_endpoints=["GET /status/:code"]))
    for code in (400, 404, 500, 503, 302):
        async with gw.request("GET", f"/status/{code}", token=gw.token(SUBSCRIBER), allow_redirects=False) as resp:
            assert resp.status == code and "X-Credits-Charged" not in resp.headers
    assert ledger_rows(gw, "SELECT COUNT(*) FROM charges") == [(0,)]
    assert ledger_rows(gw, "SELECT COUNT(*) FROM reservations") == [(0,)]


async def test_timeouts_release_the_reservation(make_gateway, chain, signing_key):
    async with HeldUpstream() as upstream:
        gw = await make_gateway(metered(chain, None, signing_key, upstream=upstream.url, timeout="200ms",
                                        protected_endpoints=["GET /hold"]))
        async with gw.request("GET", "/hold", token=gw.token(SUBSCRIBER)) as resp:
            assert resp.status == 504
    assert ledger_rows(gw, "SELECT COUNT(*) FROM reservations") == [(0,)]
    assert ledger_rows(gw, "SELECT COUNT(*) FROM charges") == [(0,)]


async def test_client_leaving_before_a_status_line_that_never_comes_releases_the_reservation(
        make_gateway, chain, signing_key):
    # The call reached the upstream, so the gateway waits for its status line even though the
    # client left (work the upstream did is paid: tests/integration/test_edge_credit_timing_gateway.py); none comes
    # within the timeout: the hold is released, nothing charged.
    async with HeldUpstream() as upstream:
        gw = await make_gateway(metered(chain, None, signing_key, upstream=upstream.url, timeout="300ms",
                                        protected_endpoints=["GET /hold"]))
        call = asyncio.create_task(gw.request("GET", "/hold", token=gw.token(SUBSCRIBER)).__aenter__())
        while not upstream.requests:  # the call reached the upstream: its credits are held
            await asyncio.sleep(0.005)
        assert ledger_rows(gw, "SELECT COUNT(*) FROM reservations") == [(1,)]
        call.cancel()  # the client goes away
        await asyncio.gather(call, return_exceptions=True)
        for _ in range(400):  # the gateway notices the closed connection and releases the hold
            if ledger_rows(gw, "SELECT COUNT(*) FROM reservations") == [(0,)]:
                break
            await asyncio.sleep(0.005)
        assert ledger_rows(gw, "SELECT COUNT(*) FROM reservations") == [(0,)]
    assert ledger_rows(gw, "SELECT COUNT(*) FROM charges") == [(0,)]


async def test_owner_calls_are_never_charged(make_gateway, chain, plugin, signing_key):
    gw = await make_gateway(metered(chain, plugin, signing_key))
    async with gw.request("POST", "/ask", json=ASK, token=gw.token(OWNER)) as resp:
        assert resp.status == 200 and "X-Credits-Charged" not in resp.headers
    assert ledger_rows(gw, "SELECT COUNT(*) FROM charges") == [(0,)]


async def test_refused_burn_keeps_charges_pending_until_the_role_is_granted(make_gateway, chain, plugin, signing_key):
    from structlog.testing import capture_logs

    gw = await make_gateway(metered(chain, plugin, signing_key, operator=NO_ROLE))
    async with gw.request("POST", "/ask", json=ASK, token=gw.token(SUBSCRIBER)) as resp:
        assert resp.status == 200
    with capture_logs() as logs:
        report = await settler(gw).settle_once()
    assert report.sent == [] and len(report.refused) == 1
    assert "AccessControlUnauthorizedAccount" in report.refused[0]
    refused = [e for e in logs if e["event"] == "settlement_refused"]
    assert refused and "AccessControlUnauthorizedAccount" in refused[0]["reason"] and refused[0]["log_level"] == "error"
    assert ledger_rows(gw, "SELECT COUNT(*) FROM charges WHERE settled_at IS NULL") == [(1,)]
    assert chain.dev.credits_of(chain.credits_plan, SUBSCRIBER, 1) == START_CREDITS

    await asyncio.to_thread(chain.dev.grant_burner, chain.credits_plan, NO_ROLE[0])
    settler(gw).retry_now()
    report = await settler(gw).settle_once()
    assert len(report.confirmed) == 1
    assert chain.dev.credits_of(chain.credits_plan, SUBSCRIBER, 1) == START_CREDITS - 2


async def test_tokens_moved_away_before_settlement_record_a_shortfall_and_block(make_gateway, chain, plugin, signing_key):
    gw = await make_gateway(metered(chain, plugin, signing_key))
    token = gw.token(SUBSCRIBER)
    for _ in range(2):
        async with gw.request("POST", "/ask", json=ASK, token=token) as resp:
            assert resp.status == 200  # 4 credits charged, 1 left
    # The subscriber moves all but one credit away before the burn.
    await asyncio.to_thread(chain.dev.transact, chain.credits_plan, "CreditsPlan", "safeTransferFrom",
                            SUBSCRIBER, SINK, 1, START_CREDITS - 1, b"", sender_key=DEV_ACCOUNTS[2][1])
    report = await settler(gw).settle_once()
    assert report.shortfalls == 1 and len(report.confirmed) == 1
    assert chain.dev.credits_of(chain.credits_plan, SUBSCRIBER, 1) == 0  # what was there got burned
    assert ledger_rows(gw, "SELECT amount FROM shortfalls WHERE resolved_at IS NULL") == [(3,)]
    # Refused from now on, even after buying more credits, until the shortfall is resolved.
    await asyncio.to_thread(chain.dev.mint_credits, chain.credits_plan, SUBSCRIBER, 1, 10)
    gw.app[RUNTIME].plans.invalidate(gw.config.services["elvis"].plan, SUBSCRIBER)
    async with gw.request("POST", "/query", json=QUERY, token=token) as resp:
        body = await resp.json(content_type=None)
        assert resp.status == 402 and body["shortfall"] == 3
    usage = await gw.app[RUNTIME].ledger.usage(subscriber=SUBSCRIBER)
    assert [(u["charged"], u["settled"], u["pending"], u["shortfall"]) for u in usage] == [(4, 4, 0, 3)]
    assert usage[0]["burn_txs"] == report.confirmed
