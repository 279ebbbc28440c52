"""gateway.credits.plans (cached, coalesced, fail-closed balance checks) and gateway.chain.rpc (failover JSON-RPC).

Unit tests use a fake ChainReader and an injected clock; the JsonRpcClient tests talk real HTTP on
loopback to `RpcProxy` fakes; the whole stack against anvil is in
tests/integration/test_plans_anvil.py.
"""

from __future__ import annotations

import asyncio
import time

import pytest
from eth_abi import encode
from eth_utils import function_signature_to_4byte_selector

from gateway.chain.rpc import ChainUnavailable, JsonRpcClient, RpcError, redact_url
from gateway.config.model import PlanCacheConfig, PlanConfig
from gateway.credits.plans import PlanChecker, PlanUnreadable, balance_calldata
from gateway.http.refusals import problem_for
from tests.support.plans import ALICE, BOB, CACHE, chain_of, closed_port_url
from tests.support.rpc_proxy import JsonRpcFault, RpcProxy

pytestmark = [pytest.mark.asyncio, pytest.mark.timeout(30)]

CONTRACT = "0x5FbDB2315678afecb367f032d93F642f64180aa3"
CREDITS = PlanConfig(chain="dev", standard="erc1155", contract=CONTRACT, token_id=1, credits=1)
PASS = PlanConfig(chain="dev", standard="erc721", contract=CONTRACT, token_id=None, credits=1)


def word(value: int) -> bytes:
    return encode(["uint256"], [value])


class FakeClock:
    def __init__(self) -> None:
        self.now = 1000.0

    def __call__(self) -> float:
        return self.now


class FakeReader:
    """A ChainReader: answers `balance` (or `raw`), or raises `error`; `gate` holds calls open."""

    def __init__(self, balance: int = 5) -> None:
        self.balance = balance
        self.raw: bytes | None = None
        self.error: Exception | None = None
        self.gate: asyncio.Event | None = None
        self.calls: list[tuple[str, bytes, str]] = []

    async def eth_call(self, to: str, data: bytes, block: str = "latest") -> bytes:
        self.calls.append((to, data, block))
        if self.gate is not None:
            await self.gate.wait()
        if self.error is not None:
            raise self.error
        return self.raw if self.raw is not None else word(self.balance)


def answered(error: BaseException) -> tuple[int, str]:
    """(status, code) the http layer answers a plan-check error with (`gateway.http.refusals`)."""
    problem = problem_for(error)
    return problem.status, problem.code


def checker_with(reader: FakeReader, cache: PlanCacheConfig = CACHE, clock: FakeClock | None = None) -> PlanChecker:
    return PlanChecker({"dev": reader}, cache, clock=clock or FakeClock())


async def until(predicate, what: str) -> None:
    """Yield to the loop until `predicate()` holds (no sleeps with a duration)."""
    for _ in range(10_000):
        if predicate():
            return
        await asyncio.sleep(0)
    raise AssertionError(f"never happened: {what}")


# --- calldata ---------------------------------------------------------------------------------------

async def test_erc1155_calldata_is_balanceof_address_uint256():
    reader = FakeReader(balance=42)
    assert await checker_with(reader).balance(CREDITS, ALICE) == 42
    selector = function_signature_to_4byte_selector("balanceOf(address,uint256)")
    assert selector.hex() == "00fdd58e"
    assert reader.calls == [(CONTRACT, selector + encode(["address", "uint256"], [ALICE, 1]), "latest")]
    data = reader.calls[0][1]
    assert len(data) == 4 + 64
    assert data[4:36] == bytes(12) + bytes.fromhex(ALICE[2:])
    assert data[36:] == (1).to_bytes(32, "big")


async def test_erc721_calldata_is_balanceof_address():
    reader = FakeReader(balance=1)
    assert await checker_with(reader).balance(PASS, ALICE) == 1
    selector = function_signature_to_4byte_selector("balanceOf(address)")
    assert selector.hex() == "70a08231"
    assert reader.calls == [(CONTRACT, selector + encode(["address"], [ALICE]), "latest")]


async def test_calldata_ignores_subscriber_case_and_needs_token_id_for_erc1155():
    assert balance_calldata(CREDITS, ALICE.lower()) == balance_calldata(CREDITS, ALICE.upper().replace("0X", "0x"))
    broken = PlanConfig(chain="dev", standard="erc1155", contract=CONTRACT, token_id=None, credits=1)
    with pytest.raises(ValueError, match="token_id"):
        balance_calldata(broken, ALICE)


# --- cache ------------------------------------------------------------------------------------------

async def test_cache_hit_within_ttl_and_miss_after_ttl():
    reader, clock = FakeReader(balance=5), FakeClock()
    checker = checker_with(reader, clock=clock)
    assert await checker.balance(CREDITS, ALICE) == 5
    clock.now += 9.9
    reader.balance = 7  # the chain changed, the cache has not expired yet
    assert await checker.balance(CREDITS, ALICE) == 5
    assert len(reader.calls) == 1 and checker.stats["hits"] == 1
    clock.now += 0.2
    assert await checker.balance(CREDITS, ALICE) == 7
    assert len(reader.calls) == 2 and checker.stats["misses"] == 2 and checker.stats["rpc_calls"] == 2


async def test_zero_balance_cached_for_the_shorter_negative_ttl():
    reader, clock = FakeReader(balance=0), FakeClock()
    checker = checker_with(reader, clock=clock)
    assert await checker.balance(CREDITS, ALICE) == 0
    clock.now += 1.9
    assert await checker.balance(CREDITS, ALICE) == 0
    assert len(reader.calls) == 1
    clock.now += 0.2  # 2.1 s: past negative_ttl, far within ttl
    reader.balance = 100  # the subscriber just bought credits
    assert await checker.balance(CREDITS, ALICE) == 100
    assert len(reader.calls) == 2


async def test_distinct_subscribers_and_token_ids_are_distinct_keys_but_case_is_not():
    reader = FakeReader(balance=3)
    checker = checker_with(reader)
    other_token = PlanConfig(chain="dev", standard="erc1155", contract=CONTRACT, token_id=2, credits=1)
    await checker.balance(CREDITS, ALICE)
    await checker.balance(CREDITS, BOB)
    await checker.balance(other_token, ALICE)
    await checker.balance(PASS, ALICE)
    assert len(reader.calls) == 4
    await checker.balance(CREDITS, ALICE.lower())
    await checker.balance(other_token, ALICE)
    assert len(reader.calls) == 4 and checker.stats["hits"] == 2


async def test_invalidate_drops_the_cached_balance():
    reader = FakeReader(balance=10)
    checker = checker_with(reader)
    assert await checker.balance(CREDITS, ALICE) == 10
    await checker.balance(CREDITS, BOB)
    reader.balance = 4  # a settlement burned 6 credits
    checker.invalidate(CREDITS, ALICE)
    assert await checker.balance(CREDITS, ALICE) == 4
    assert await checker.balance(CREDITS, BOB) == 10  # other keys untouched
    assert len(reader.calls) == 3


async def test_invalidate_during_a_call_keeps_its_pre_burn_answer_out_of_the_cache():
    reader = FakeReader(balance=10)
    reader.gate = asyncio.Event()
    checker = checker_with(reader)
    before = asyncio.create_task(checker.balance(CREDITS, ALICE))
    await until(lambda: len(reader.calls) == 1, "first call started")
    checker.invalidate(CREDITS, ALICE)
    reader.gate.set()
    assert await before == 10
    reader.gate, reader.balance = None, 4
    assert await checker.balance(CREDITS, ALICE) == 4
    assert len(reader.calls) == 2


# --- coalescing -------------------------------------------------------------------------------------

async def test_100_concurrent_misses_for_one_key_make_one_eth_call():
    reader = FakeReader(balance=8)
    reader.gate = asyncio.Event()
    checker = checker_with(reader)
    tasks = [asyncio.create_task(checker.balance(CREDITS, ALICE)) for _ in range(100)]
    await until(lambda: checker.stats["misses"] == 100 and reader.calls, "all 100 callers waiting")
    assert len(reader.calls) == 1
    reader.gate.set()
    assert await asyncio.gather(*tasks) == [8] * 100
    assert len(reader.calls) == 1
    assert checker.stats["coalesced"] == 99 and checker.stats["rpc_calls"] == 1
    assert await checker.balance(CREDITS, ALICE) == 8 and len(reader.calls) == 1  # and now cached


async def test_an_error_reaches_every_waiter_and_the_next_call_retries():
    reader = FakeReader(balance=8)
    reader.gate, reader.error = asyncio.Event(), ChainUnavailable("all nodes down")
    checker = checker_with(reader)
    tasks = [asyncio.create_task(checker.balance(CREDITS, ALICE)) for _ in range(10)]
    await until(lambda: checker.stats["misses"] == 10, "all 10 callers waiting")
    reader.gate.set()
    results = await asyncio.gather(*tasks, return_exceptions=True)
    assert all(isinstance(r, PlanUnreadable) and answered(r) == (503, "chain_unavailable") for r in results)
    assert len(reader.calls) == 1 and checker.stats["errors"] == 1
    reader.error = None
    assert await checker.balance(CREDITS, ALICE) == 8
    assert len(reader.calls) == 2


async def test_cancelling_one_waiter_does_not_cancel_the_shared_call():
    reader = FakeReader(balance=6)
    reader.gate = asyncio.Event()
    checker = checker_with(reader)
    tasks = [asyncio.create_task(checker.balance(CREDITS, ALICE)) for _ in range(3)]
    await until(lambda: checker.stats["misses"] == 3, "all callers waiting")
    tasks[0].cancel()  # e.g. the first client disconnected: its task started the call
    await asyncio.gather(tasks[0], return_exceptions=True)
    assert tasks[0].cancelled()
    reader.gate.set()
    assert await asyncio.gather(tasks[1], tasks[2]) == [6, 6]
    assert len(reader.calls) == 1


async def test_a_call_whose_waiters_all_left_still_completes_and_is_cached():
    reader = FakeReader(balance=6)
    reader.gate = asyncio.Event()
    checker = checker_with(reader)
    task = asyncio.create_task(checker.balance(CREDITS, ALICE))
    await until(lambda: len(reader.calls) == 1, "call started")
    task.cancel()
    await asyncio.gather(task, return_exceptions=True)
    reader.gate.set()
    await until(lambda: checker.in_flight == 0, "call finished")
    assert await checker.balance(CREDITS, ALICE) == 6 and len(reader.calls) == 1


# --- failing closed ---------------------------------------------------------------------------------

STALE = PlanCacheConfig(ttl=10.0, negative_ttl=2.0, stale_if_error=30.0, size=1000)


async def test_stale_if_error_serves_a_recent_positive_answer():
    reader, clock = FakeReader(balance=5), FakeClock()
    checker = checker_with(reader, STALE, clock)
    assert await checker.balance(CREDITS, ALICE) == 5
    clock.now += 35  # past ttl, within ttl + stale_if_error
    reader.error = ChainUnavailable("down")
    assert await checker.balance(CREDITS, ALICE) == 5
    assert checker.stats["stale"] == 1 and len(reader.calls) == 2  # it did ask the chain first
    reader.error = None
    reader.balance = 3
    assert await checker.balance(CREDITS, ALICE) == 3  # chain back: fresh answer, not the stale one


async def test_stale_answer_refused_when_too_old():
    reader, clock = FakeReader(balance=5), FakeClock()
    checker = checker_with(reader, STALE, clock)
    await checker.balance(CREDITS, ALICE)
    clock.now += 40.1
    reader.error = ChainUnavailable("down")
    with pytest.raises(PlanUnreadable) as refused:
        await checker.balance(CREDITS, ALICE)
    assert answered(refused.value) == (503, "chain_unavailable")


async def test_stale_answer_refused_when_stale_if_error_is_disabled():
    reader, clock = FakeReader(balance=5), FakeClock()
    checker = checker_with(reader, CACHE, clock)
    await checker.balance(CREDITS, ALICE)
    clock.now += 10.1
    reader.error = ChainUnavailable("down")
    with pytest.raises(PlanUnreadable) as refused:
        await checker.balance(CREDITS, ALICE)
    assert answered(refused.value) == (503, "chain_unavailable")
    assert isinstance(refused.value.__cause__, ChainUnavailable)


async def test_stale_if_error_never_serves_a_zero_balance():
    reader, clock = FakeReader(balance=0), FakeClock()
    checker = checker_with(reader, STALE, clock)
    await checker.balance(CREDITS, ALICE)
    clock.now += 2.5
    reader.error = ChainUnavailable("down")
    with pytest.raises(PlanUnreadable) as refused:
        await checker.balance(CREDITS, ALICE)
    assert "chain_unavailable" in str(problem_for(refused.value))


@pytest.mark.parametrize("raw", [b"", bytes(31), bytes(64)], ids=["empty", "short", "long"])
async def test_malformed_answer_is_503_chain_unavailable(raw):
    reader = FakeReader()
    reader.raw = raw
    checker = checker_with(reader)
    with pytest.raises(PlanUnreadable) as refused:
        await checker.balance(CREDITS, ALICE)
    assert answered(refused.value) == (503, "chain_unavailable")
    assert f"returned {len(raw)} bytes" in str(refused.value.__cause__)
    assert checker.stats["errors"] == 1


async def test_node_error_is_503_and_the_detail_has_no_rpc_urls():
    reader = FakeReader()
    reader.error = RpcError(3, "execution reverted", "0x")
    with pytest.raises(PlanUnreadable) as refused:
        await checker_with(reader).balance(CREDITS, ALICE)
    assert answered(refused.value) == (503, "chain_unavailable")
    reader.error = ChainUnavailable("chain 'dev': no RPC URL answered eth_call: https://rpc.example/…: HTTP 503")
    with pytest.raises(PlanUnreadable) as refused:
        await checker_with(reader).balance(CREDITS, ALICE)
    assert "rpc.example" not in problem_for(refused.value).detail and "dev" in problem_for(refused.value).detail


async def test_plan_on_an_unconfigured_chain_is_503():
    checker = PlanChecker({}, CACHE)
    with pytest.raises(PlanUnreadable) as refused:
        await checker.balance(CREDITS, ALICE)
    assert "chain_unavailable" in str(problem_for(refused.value))


def fake_node(balance: int = 9):
    def respond(method: str, params: list):
        if method == "eth_call":
            return "0x" + word(balance).hex()
        if method == "eth_chainId":
            return "0x7a69"
        raise JsonRpcFault(-32601, f"method {method} not found")
    return respond


# --- JsonRpcClient over real HTTP -------------------------------------------------------------------

async def test_eth_call_sends_hex_calldata_and_ids_increment(session):
    async with RpcProxy(None, responder=fake_node(9)) as node:
        client = JsonRpcClient(chain_of(node.url), session)
        assert client.last_success is None
        assert await client.eth_call(CONTRACT, b"\x01\x02") == word(9)
        assert await client.request("eth_chainId", []) == "0x7a69"
        assert node.calls[0] == ("eth_call", [{"to": CONTRACT, "data": "0x0102"}, "latest"])
        assert node.ids[1] == node.ids[0] + 1
        assert client.last_success is not None and client.last_success <= time.monotonic()


async def test_failover_when_the_first_url_answers_503_and_the_preferred_url_is_remembered(session):
    async with RpcProxy(None, responder=fake_node()) as first, RpcProxy(None, responder=fake_node()) as second:
        first.down = True
        client = JsonRpcClient(chain_of(first.url, second.url), session)
        assert await client.eth_call(CONTRACT, b"") == word(9)
        assert (first.counts["eth_call"], second.counts["eth_call"]) == (1, 1)
        assert await client.eth_call(CONTRACT, b"") == word(9)
        assert (first.counts["eth_call"], second.counts["eth_call"]) == (1, 2)  # straight to the second
        second.down, first.down = True, False
        assert await client.eth_call(CONTRACT, b"") == word(9)  # and back when the second fails
        assert (first.counts["eth_call"], second.counts["eth_call"]) == (2, 3)


async def test_failover_when_the_first_url_refuses_connections(session):
    async with RpcProxy(None, responder=fake_node()) as second:
        client = JsonRpcClient(chain_of(closed_port_url(), second.url), session)
        assert await client.eth_call(CONTRACT, b"") == word(9)
        assert client.preferred_url == second.url


async def test_failover_when_the_first_url_hangs_past_the_timeout(session):
    async with RpcProxy(None, responder=fake_node()) as first, RpcProxy(None, responder=fake_node()) as second:
        first.hang = True
        client = JsonRpcClient(chain_of(first.url, second.url, timeout=0.2), session)
        started = time.monotonic()
        assert await client.eth_call(CONTRACT, b"") == word(9)
        assert 0.2 <= time.monotonic() - started < 1.5
        started = time.monotonic()
        assert await client.eth_call(CONTRACT, b"") == word(9)
        assert time.monotonic() - started < 0.2  # no second timeout: the hung URL is not tried first
        assert (first.counts["eth_call"], second.counts["eth_call"]) == (1, 2)


async def test_failover_when_the_first_url_answers_something_that_is_not_json(session):
    async with RpcProxy(None, responder=fake_node()) as first, RpcProxy(None, responder=fake_node()) as second:
        first.garbage = True
        client = JsonRpcClient(chain_of(first.url, second.url), session)
        assert await client.eth_call(CONTRACT, b"") == word(9)
        assert second.counts["eth_call"] == 1


async def test_all_urls_down_is_chain_unavailable_naming_each_without_secrets(session):
    async with RpcProxy(None, responder=fake_node()) as node:
        node.down = True
        secret_url = node.url.replace("http://", "http://user:s3cr3t@") + "v2/k3y?apikey=t0ken"
        dead = closed_port_url()
        client = JsonRpcClient(chain_of(secret_url, dead), session)
        with pytest.raises(ChainUnavailable) as failed:
            await client.eth_call(CONTRACT, b"")
    message = str(failed.value)
    assert "HTTP 503" in message and "connection failed" in message
    assert redact_url(secret_url) in message and redact_url(dead) in message
    for secret in ("s3cr3t", "k3y", "t0ken", "user"):
        assert secret not in message
    assert client.last_success is None


async def test_jsonrpc_error_is_rpc_error_without_failover(session):
    def reverting(method, params):
        raise JsonRpcFault(3, "execution reverted", "0x03dee4c5")

    async with RpcProxy(None, responder=reverting) as first, RpcProxy(None, responder=fake_node()) as second:
        client = JsonRpcClient(chain_of(first.url, second.url), session)
        with pytest.raises(RpcError) as failed:
            await client.eth_call(CONTRACT, b"")
        assert (failed.value.code, failed.value.message, failed.value.data) == (3, "execution reverted", "0x03dee4c5")
        assert second.counts["eth_call"] == 0
        assert client.last_success is not None  # the node answered: it is alive


async def test_eth_call_result_that_is_not_hex_is_chain_unavailable(session):
    async with RpcProxy(None, responder=lambda method, params: "0xzz") as node:
        with pytest.raises(ChainUnavailable, match="not hex"):
            await JsonRpcClient(chain_of(node.url), session).eth_call(CONTRACT, b"")


async def test_redact_url_keeps_scheme_host_and_port_only():
    assert redact_url("https://u:p@rpc.example:8545/v3/KEY?x=1") == "https://rpc.example:8545/…"
    assert redact_url("http://127.0.0.1:8545") == "http://127.0.0.1:8545"
    assert redact_url("http://[::1]:8545/") == "http://[::1]:8545"
