"""gateway.credits.plans and gateway.chain.rpc against a real anvil through the counting `RpcProxy`:
ERC-1155 and ERC-721 balances, the cache, invalidation after a burn, and a revert that is the
node's answer, not a failover. The rest is in tests/unit/test_plans.py."""

from __future__ import annotations

import pytest

from gateway.chain.rpc import JsonRpcClient, RpcError
from gateway.config.model import PlanConfig
from gateway.credits.plans import PlanChecker
from tests.support.plans import ALICE, BOB, CACHE, chain_of, closed_port_url
from tests.support.rpc_proxy import RpcProxy

pytestmark = [pytest.mark.asyncio, pytest.mark.timeout(30)]


# --- the whole stack against anvil ------------------------------------------------------------------

def _anvil_or_skip():
    from gateway.dev.chain import anvil_binary

    try:
        anvil_binary()
    except RuntimeError as exc:  # pragma: no cover - depends on `npm ci` having run in chain/
        pytest.skip(str(exc))


@pytest.fixture(scope="module")
def devchain():
    _anvil_or_skip()
    from gateway.dev.chain import Anvil, DevChain

    with Anvil() as node:
        yield node.rpc_url, DevChain(node.rpc_url)


async def test_plan_checks_against_anvil_through_the_proxy(devchain, session):
    rpc_url, chain = devchain
    credits = chain.deploy_credits_plan()
    access_pass = chain.deploy_access_pass()
    chain.mint_credits(credits, ALICE, 1, 100)
    chain.mint_pass(access_pass, ALICE)
    chain.grant_burner(credits, chain.w3.eth.accounts[0])
    credits_plan = PlanConfig(chain="dev", standard="erc1155", contract=credits, token_id=1, credits=1)
    pass_plan = PlanConfig(chain="dev", standard="erc721", contract=access_pass, token_id=None, credits=1)

    async with RpcProxy(rpc_url) as proxy:
        client = JsonRpcClient(chain_of(closed_port_url(), proxy.url), session)
        checker = PlanChecker({"dev": client}, CACHE)
        assert await checker.balance(credits_plan, ALICE) == 100
        assert await checker.balance(credits_plan, BOB) == 0
        assert await checker.balance(pass_plan, ALICE) == 1
        assert await checker.balance(pass_plan, BOB) == 0
        assert await checker.balance(credits_plan, ALICE) == 100  # cached
        assert proxy.counts["eth_call"] == 4

        chain.transact(credits, "CreditsPlan", "burnCredits", ALICE, 1, 30)
        checker.invalidate(credits_plan, ALICE)
        assert await checker.balance(credits_plan, ALICE) == 70

        # ERC-721 balanceOf(address(0)) reverts: the node's answer, not a failover.
        zero = b"\x70\xa0\x82\x31" + bytes(32)
        with pytest.raises(RpcError):
            await client.eth_call(access_pass, zero)
        assert proxy.counts["eth_call"] == 6
