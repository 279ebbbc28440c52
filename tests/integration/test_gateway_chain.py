"""The plan check against a real chain, counted at the RPC: coalescing, caching, failover,
fail-closed, and both plan standards."""

from __future__ import annotations

import asyncio

import pytest

from gateway.dev.chain import DEV_ACCOUNTS, free_port
from tests.support.rpc_proxy import RpcProxy
from tests.support.stack import BROKE, PASS_HOLDER, SUBSCRIBER, base_config

pytestmark = pytest.mark.asyncio
QUERY = {"queries": [{"query": "love"}]}


async def plugin_paths(gateway, plugin) -> list[str]:
    async with gateway.session.get(f"{plugin.url}/debug/requests",
                                   headers={"Authorization": f"Bearer {plugin.secret}"}) as resp:
        return [r["path"] for r in await resp.json()]


async def clear_plugin(gateway, plugin) -> None:
    async with gateway.session.delete(f"{plugin.url}/debug/requests",
                                      headers={"Authorization": f"Bearer {plugin.secret}"}):
        pass


def with_rpc(data: dict, *urls: str) -> dict:
    data["chains"]["local"]["rpc_urls"] = list(urls)
    return data


async def test_100_concurrent_first_calls_cause_exactly_one_eth_call(make_gateway, chain, plugin, signing_key):
    rich = DEV_ACCOUNTS[5][0]
    await asyncio.to_thread(chain.dev.mint_credits, chain.credits_plan, rich, 1, 100)
    async with RpcProxy(chain.rpc_url) as rpc:
        gw = await make_gateway(with_rpc(base_config(chain, plugin, signing_key), rpc.url))
        token = gw.token(rich)
        rpc.hang = True  # hold the first eth_call until every request is waiting on it

        async def one():
            async with gw.request("POST", "/query", json=QUERY, token=token) as resp:
                return resp.status

        calls = [asyncio.create_task(one()) for _ in range(100)]
        while rpc.held < 1:  # the first miss reached the node ...
            await asyncio.sleep(0.001)
        rpc.release()  # ... and only now answers
        assert await asyncio.gather(*calls) == [200] * 100
    assert rpc.counts["eth_call"] == 1


async def test_balances_are_cached_between_calls(make_gateway, chain, plugin, signing_key):
    async with RpcProxy(chain.rpc_url) as rpc:
        gw = await make_gateway(with_rpc(base_config(chain, plugin, signing_key), rpc.url))
        for who, expected in ((SUBSCRIBER, 200), (BROKE, 402)):
            for _ in range(3):
                async with gw.request("POST", "/query", json=QUERY, token=gw.token(who)) as resp:
                    assert resp.status == expected
    assert rpc.counts["eth_call"] == 2  # one per subscriber: positive and negative answers are cached


async def test_rpc_down_is_503_and_nothing_is_forwarded(make_gateway, chain, plugin, signing_key):
    async with RpcProxy(chain.rpc_url) as rpc:
        rpc.down = True
        gw = await make_gateway(with_rpc(base_config(chain, plugin, signing_key), rpc.url))
        await clear_plugin(gw, plugin)
        async with gw.request("POST", "/query", json=QUERY, token=gw.token(SUBSCRIBER)) as resp:
            assert resp.status == 503
            assert (await resp.json(content_type=None))["code"] == "chain_unavailable"
        assert rpc.counts["eth_call"] == 1
    assert "/query" not in await plugin_paths(gw, plugin)


async def test_rpc_that_hangs_past_the_timeout_is_503(make_gateway, chain, plugin, signing_key):
    async with RpcProxy(chain.rpc_url) as rpc:
        rpc.hang = True
        data = with_rpc(base_config(chain, plugin, signing_key), rpc.url)
        data["chains"]["local"]["timeout"] = "200ms"
        gw = await make_gateway(data)
        async with gw.request("POST", "/query", json=QUERY, token=gw.token(SUBSCRIBER)) as resp:
            assert resp.status == 503


async def test_second_rpc_url_takes_over_when_the_first_is_down(make_gateway, chain, plugin, signing_key):
    async with RpcProxy(chain.rpc_url) as first, RpcProxy(chain.rpc_url) as second:
        first.down = True
        gw = await make_gateway(with_rpc(base_config(chain, plugin, signing_key), first.url, second.url))
        async with gw.request("POST", "/query", json=QUERY, token=gw.token(SUBSCRIBER)) as resp:
            assert resp.status == 200
        assert first.counts["eth_call"] == 1 and second.counts["eth_call"] == 1


async def test_refused_connection_fails_over_too(make_gateway, chain, plugin, signing_key):
    dead = f"http://127.0.0.1:{free_port()}"
    gw = await make_gateway(with_rpc(base_config(chain, plugin, signing_key), dead, chain.rpc_url))
    async with gw.request("POST", "/query", json=QUERY, token=gw.token(SUBSCRIBER)) as resp:
        assert resp.status == 200


async def test_erc721_pass_grants_access_to_holders_only(make_gateway, chain, plugin, signing_key):
    plan = {"chain": "local", "standard": "erc721", "contract": chain.access_pass}
    gw = await make_gateway(base_config(chain, plugin, signing_key, plan=plan,
                                        protected_endpoints=["POST /query"]))
    async with gw.request("POST", "/query", json=QUERY, token=gw.token(PASS_HOLDER)) as resp:
        assert resp.status == 200
    async with gw.request("POST", "/query", json=QUERY, token=gw.token(SUBSCRIBER)) as resp:
        assert resp.status == 402
        body = await resp.json(content_type=None)
    assert body["plan"]["standard"] == "erc721" and body["plan"]["balance"] == 0


async def test_credits_bought_on_chain_are_seen_after_the_negative_ttl(make_gateway, chain, plugin, signing_key):
    data = base_config(chain, plugin, signing_key)
    data["plan_cache"] = {"negative_ttl": "1ms"}
    gw = await make_gateway(data)
    async with gw.request("POST", "/query", json=QUERY, token=gw.token(BROKE)) as resp:
        assert resp.status == 402
    await asyncio.to_thread(chain.dev.mint_credits, chain.credits_plan, BROKE, 1, 3)
    async with gw.request("POST", "/query", json=QUERY, token=gw.token(BROKE)) as resp:
        assert resp.status == 200
