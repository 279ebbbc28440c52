"""The request path on fakes: the real gateway app (pipeline, tokens, meter, SQLite ledger in
memory) with a fake chain reader and an in-process upstream. No anvil, no plugin process: each
test runs in milliseconds. The same decisions on the real chain are in test_gateway_answers.py."""

from __future__ import annotations

import time

import pytest
import pytest_asyncio

from gateway.auth.issuer import OwnIssuer
from gateway.chain.rpc import RpcError
from gateway.ops.admin import build_admin_app
from tests.support.fakes import (
    ACCESS_PASS, BROKE, CREDITS_PLAN, OWNER, PASS_HOLDER, SUBSCRIBER, UPSTREAM_SECRET, FakeChain, FakeUpstream,
    fake_config, fake_gateway,
)
from tests.support.upstreams import serve_app

pytestmark = pytest.mark.asyncio
QUERY = {"queries": [{"query": "love"}]}
START_CREDITS = 5


async def problem(resp, status: int, code: str) -> dict:
    assert resp.status == status, await resp.text()
    assert resp.headers["Content-Type"].startswith("application/problem+json")
    body = await resp.json(content_type=None)
    assert body["status"] == status and body["code"] == code
    assert body["request_id"] == resp.headers["X-Request-Id"]
    return body


@pytest_asyncio.fixture
async def upstream():
    async with FakeUpstream() as server:
        yield server


@pytest.fixture
def chain() -> FakeChain:
    chain = FakeChain()
    chain.set_credits(CREDITS_PLAN, SUBSCRIBER, START_CREDITS)
    return chain


@pytest_asyncio.fixture
async def gateway(upstream, chain, signing_key):
    async with fake_gateway(fake_config(upstream.url, signing_key), chain) as gw:
        yield gw


async def test_open_call_is_forwarded_without_a_token_or_a_chain_read(gateway, upstream):
    async with gateway.request("GET", "/health") as resp:
        assert resp.status == 200
        assert (await resp.json())["subscriber"] is None
    [(method, path, headers)] = upstream.requests
    assert (method, path) == ("GET", "/health")
    assert headers["Authorization"] == f"Bearer {UPSTREAM_SECRET}"  # the owner's secret, added by the gateway
    assert not gateway.chain.calls


async def test_protected_call_without_a_token_is_401_and_not_forwarded(gateway, upstream):
    async with gateway.request("POST", "/query", json=QUERY) as resp:
        await problem(resp, 401, "missing_token")
        assert resp.headers["WWW-Authenticate"] == 'Bearer realm="elvis"'
    assert not upstream.requests and not gateway.chain.calls


async def test_garbage_token_is_401_and_a_token_for_another_service_403(gateway, upstream):
    async with gateway.request("POST", "/query", json=QUERY, token="not.a.jwt") as resp:
        await problem(resp, 401, "invalid_token")
    async with gateway.request("POST", "/query", json=QUERY, token=gateway.token(SUBSCRIBER, ["other"])) as resp:
        await problem(resp, 403, "wrong_audience")
    assert not upstream.requests and not gateway.chain.calls


async def test_valid_token_with_credits_is_200_charged_and_in_the_ledger(gateway, upstream):
    async with gateway.request("POST", "/ask", json={"question": "x"}, token=gateway.token(SUBSCRIBER)) as resp:
        assert resp.status == 200
        assert (await resp.json())["subscriber"] == SUBSCRIBER
        assert resp.headers["X-Credits-Charged"] == "2"
        assert resp.headers["X-Credits-Remaining"] == str(START_CREDITS - 2)
    assert len(upstream.requests) == 1 and gateway.chain.calls["eth_call"] == 1
    [row] = await gateway.runtime.ledger.usage(subscriber=SUBSCRIBER)
    assert (row["service"], row["contract"], row["charged"], row["pending"]) == ("elvis", CREDITS_PLAN, 2, 2)


async def test_charges_count_against_the_cached_balance_until_it_is_spent(gateway):
    token = gateway.token(SUBSCRIBER)
    statuses = []
    for _ in range(START_CREDITS + 1):
        async with gateway.request("POST", "/query", json=QUERY, token=token) as resp:
            statuses.append(resp.status)
    assert statuses == [200] * START_CREDITS + [402]
    assert gateway.chain.calls["eth_call"] == 1  # one read, then the cache and the ledger


async def test_token_without_credits_is_402_with_the_plan(gateway, upstream):
    async with gateway.request("POST", "/query", json=QUERY, token=gateway.token(BROKE)) as resp:
        body = await problem(resp, 402, "payment_required")
        assert "Payment-Required" in resp.headers
    assert body["plan"] == {
        "chain_id": 31337, "contract": CREDITS_PLAN, "token_id": 1, "standard": "erc1155",
        "credits": 1, "balance": 0, "checkout_url": "https://example.com/buy",
    }
    assert not upstream.requests


async def test_chain_down_is_503_chain_unavailable_and_nothing_is_forwarded(gateway, upstream):
    gateway.chain.fail()  # fail closed: a gateway that cannot see the chain must not give the call away
    async with gateway.request("POST", "/query", json=QUERY, token=gateway.token(SUBSCRIBER)) as resp:
        await problem(resp, 503, "chain_unavailable")
    assert not upstream.requests and gateway.chain.calls["eth_call"] == 1


async def test_node_error_is_503_too(gateway, upstream):
    gateway.chain.fail(RpcError(-32000, "header not found"))
    async with gateway.request("POST", "/query", json=QUERY, token=gateway.token(SUBSCRIBER)) as resp:
        await problem(resp, 503, "chain_unavailable")
    assert not upstream.requests


async def test_unlisted_endpoint_is_404_endpoint_not_exposed(gateway, upstream):
    async with gateway.request("POST", "/upsert", json={}, token=gateway.token(SUBSCRIBER)) as resp:
        await problem(resp, 404, "endpoint_not_exposed")
    assert not upstream.requests and not gateway.chain.calls


async def test_owner_calls_are_free_and_read_no_chain(gateway, upstream):
    async with gateway.request("POST", "/query", json=QUERY, token=gateway.token(OWNER)) as resp:
        assert resp.status == 200 and "X-Credits-Charged" not in resp.headers
    assert len(upstream.requests) == 1 and not gateway.chain.calls
    assert await gateway.runtime.ledger.usage() == []


async def test_erc721_pass_holder_is_let_in_and_others_get_402(upstream, signing_key):
    chain = FakeChain()
    chain.give_pass(ACCESS_PASS, PASS_HOLDER)
    plan = {"chain": "local", "standard": "erc721", "contract": ACCESS_PASS, "checkout_url": "https://example.com/pass"}
    async with fake_gateway(fake_config(upstream.url, signing_key, plan=plan,
                                           protected_endpoints=["POST /query"]), chain) as gw:
        for who, expected in ((PASS_HOLDER, 200), (BROKE, 402)):
            async with gw.request("POST", "/query", json=QUERY, token=gw.token(who)) as resp:
                assert resp.status == expected, await resp.text()
    assert len(upstream.requests) == 1


async def test_the_injected_clock_decides_token_expiry_and_stamps_the_ledger(upstream, chain, signing_key):
    later = time.time() + 31 * 86400  # past the token's lifetime (the own issuer's default ttl is 30 days)
    async with fake_gateway(fake_config(upstream.url, signing_key), chain, clock=lambda: later) as gw:
        async with gw.request("POST", "/query", json=QUERY, token=gw.token(SUBSCRIBER)) as resp:
            await problem(resp, 401, "invalid_token")
        token = OwnIssuer(gw.config.tokens.own, clock=lambda: later).issue(SUBSCRIBER, ["elvis"])
        async with gw.request("POST", "/query", json=QUERY, token=token) as resp:
            assert resp.status == 200
        [(created_at,)] = await gw.runtime.db.run(lambda conn: conn.execute("SELECT created_at FROM charges").fetchall())
    assert created_at == later


async def test_admin_sees_the_fake_chain_and_the_ledger(gateway):
    runner, url = await serve_app(build_admin_app(gateway.app))
    try:
        async with gateway.session.get(f"{url}/readyz") as resp:
            body = await resp.json()
        assert resp.status == 200 and body["chains"] == {"local": True} and body["ledger"] is True
        gateway.chain.fail()
        async with gateway.session.get(f"{url}/readyz") as resp:
            assert resp.status == 503 and (await resp.json())["chains"] == {"local": False}
    finally:
        await runner.cleanup()
