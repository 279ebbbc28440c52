"""On-chain plan checks: a subscriber's balance on a plan contract, cached and coalesced.

`PlanChecker.balance(plan, subscriber)` answers ERC-1155 `balanceOf(subscriber, token_id)` (the
credit balance) or ERC-721 `balanceOf(subscriber)` (passes held). Comparing it with the call's
price and the unsettled charges is the caller's job: this module only knows the chain.

- Cached per (chain, contract, token_id, subscriber) in a bounded TTL cache: positive balances for
  `ttl`, zero balances for the shorter `negative_ttl` (a subscriber who just bought credits should
  not wait long).
- Concurrent misses for one key share ONE `eth_call`: a burst of requests from one subscriber
  costs the node one call, not a hundred.
- Fail closed: when the chain cannot answer, `PlanUnreadable` (503 `chain_unavailable`), unless
  `stale_if_error` allows a positive answer younger than `ttl + stale_if_error`. Never a zero or a
  guess: a gateway that lets calls through when it cannot see the chain gives the service away.
"""

from __future__ import annotations

import asyncio
import time
from typing import Callable, Mapping, NamedTuple, Protocol

from cachetools import TLRUCache
from eth_abi import decode, encode

from gateway.chain.rpc import ChainUnavailable, RpcError
from gateway.config.model import PlanCacheConfig, PlanConfig
from gateway.inflight import InFlight
from gateway.credits.shared_balances import SharedBalance, SharedBalances

# Selectors (first 4 bytes of keccak of the signature), checked against eth_utils in the tests.
ERC1155_BALANCE_OF = bytes.fromhex("00fdd58e")  # balanceOf(address,uint256)
ERC721_BALANCE_OF = bytes.fromhex("70a08231")  # balanceOf(address)

CacheKey = tuple[str, str, "int | None", str]


class PlanUnreadable(Exception):
    """The plan's balance cannot be known (no RPC client for its chain, no node answered, or the
    node answered an error): the call must be refused. The message is for the client (no RPC
    URLs); the full reason is the `__cause__`."""

    def __init__(self, chain: str, message: str) -> None:
        super().__init__(message)
        self.chain = chain


class ChainReader(Protocol):
    """What the plan checker needs from a chain: one read-only call.

    `JsonRpcClient` is the real one; it raises `ChainUnavailable` when no node answers and
    `RpcError` when the node answers with an error. Tests use a small fake.
    """

    async def eth_call(self, to: str, data: bytes, block: str = "latest") -> bytes: ...


def credits_calldata(holder: str, token_id: int) -> bytes:
    """ERC-1155 `balanceOf(holder, token_id)` calldata (the plan check and the settler's pre-burn read)."""
    return ERC1155_BALANCE_OF + encode(["address", "uint256"], [holder.lower(), token_id])


def balance_calldata(plan: PlanConfig, subscriber: str) -> bytes:
    """The `balanceOf` calldata for a plan: erc1155 (subscriber, token_id), erc721 (subscriber)."""
    holder = subscriber.lower()  # eth_abi takes any-case hex; the checksum was the token's concern
    if plan.standard == "erc1155":
        if plan.token_id is None:
            raise ValueError(f"erc1155 plan {plan.contract} has no token_id")
        return credits_calldata(holder, plan.token_id)
    if plan.standard == "erc721":
        return ERC721_BALANCE_OF + encode(["address"], [holder])
    raise ValueError(f"unknown plan standard {plan.standard!r}")


class Balance(NamedTuple):
    amount: int
    read_at: float  # wall-clock time.time() when the read began


class PlanChecker:
    """Balances of subscribers on plan contracts: cached, coalesced, failing closed."""

    def __init__(
        self,
        readers: Mapping[str, ChainReader],
        cache: PlanCacheConfig,
        clock: Callable[[], float] = time.monotonic,
        wall_clock: Callable[[], float] = time.time,
        shared: SharedBalances | None = None,
        on_event: Callable[[str], None] | None = None,
    ) -> None:
        self._wall = wall_clock
        self._on_event = on_event  # each event of `stats` as it happens (metrics: Metrics.count_plan)
        self._shared = shared  # balances read by the other worker processes
        self._readers = dict(readers)  # chain name (PlanConfig.chain) -> reader
        self._config = cache
        self._clock = clock
        # Entries live as long as they can still be served: negatives for negative_ttl, positives
        # for ttl + stale_if_error (the stale tail is only served when the chain fails).
        self._cache: TLRUCache[CacheKey, tuple[int, float, float]] = TLRUCache(
            maxsize=max(1, cache.size), ttu=self._expires, timer=clock
        )
        self._inflight: InFlight[CacheKey, Balance] = InFlight()  # one eth_call per key at a time
        # hits: served from the cache; misses: not (each either started a call or joined one);
        # coalesced: misses that joined a call in flight; rpc_calls: eth_calls sent; errors: those
        # that failed; stale: failures answered with a stale positive balance.
        self.stats: dict[str, int] = dict.fromkeys(
            ("hits", "misses", "coalesced", "rpc_calls", "errors", "stale", "shared"), 0
        )

    def _count(self, event: str) -> None:
        self.stats[event] += 1
        if self._on_event is not None:
            self._on_event(event)

    @property
    def in_flight(self) -> int:
        """Balance calls currently waiting for the chain (read by the tests; no metric exports it)."""
        return len(self._inflight)

    def _expires(self, _key: CacheKey, value: tuple[int, float, float], _now: float) -> float:
        balance, fetched_at, _ = value
        if balance > 0:
            return fetched_at + self._config.ttl + max(0.0, self._config.stale_if_error)
        return fetched_at + self._config.negative_ttl

    @staticmethod
    def _key(plan: PlanConfig, subscriber: str) -> CacheKey:
        # contract is checksummed by the config; subscribers are compared case-insensitively.
        return (plan.chain, plan.contract, plan.token_id, subscriber.lower())

    async def balance(self, plan: PlanConfig, subscriber: str) -> int:
        """The subscriber's balance on the plan; `PlanUnreadable` when unknown."""
        return (await self.read(plan, subscriber)).amount

    async def read(self, plan: PlanConfig, subscriber: str) -> Balance:
        """The balance and the wall-clock time its read began (burns settled after that time
        are not reflected in it: the ledger subtracts them)."""
        key = self._key(plan, subscriber)
        entry = self._cache.get(key)
        if entry is not None:
            balance, fetched_at, wall = entry
            ttl = self._config.ttl if balance > 0 else self._config.negative_ttl
            if self._clock() - fetched_at < ttl:
                self._count("hits")
                return Balance(balance, wall)
        self._count("misses")
        if self._inflight.running(key):
            self._count("coalesced")
        # The calldata is built only by the caller that starts the call: its errors are that caller's.
        # A waiter that is cancelled (client gone) does not cancel the call the others share.
        return await self._inflight.run(key, lambda: self._fetch(key, plan, balance_calldata(plan, subscriber)))

    async def _fetch(self, key: CacheKey, plan: PlanConfig, calldata: bytes) -> Balance:
        reader = self._readers.get(plan.chain)
        if reader is None:
            raise PlanUnreadable(plan.chain, f"chain {plan.chain!r} has no configured RPC client")
        shared_key = "|".join(map(str, key))
        if self._shared is not None:
            found = await self._shared.acquire(shared_key, self._config.ttl, self._config.negative_ttl)
            if found is not None:  # another worker read it (or just did): no second eth_call
                self._count("shared")
                age = max(self._wall() - found.read_at, 0.0)
                if self._inflight.is_current(key):
                    self._cache[key] = (found.amount, self._clock() - age, found.read_at)
                return Balance(found.amount, found.read_at)
        try:
            balance = await self._read_chain(key, plan, calldata, reader)
        except BaseException:
            if self._shared is not None:
                await asyncio.shield(self._shared.publish(shared_key, None))  # let the others try
            raise
        if self._shared is not None:
            await self._shared.publish(shared_key, SharedBalance(balance.amount, balance.read_at))
        return balance

    async def _read_chain(self, key: CacheKey, plan: PlanConfig, calldata: bytes, reader: ChainReader) -> Balance:
        started, wall = self._clock(), self._wall()  # the answer is at least this fresh
        self._count("rpc_calls")
        try:
            raw = await reader.eth_call(plan.contract, calldata)
            if len(raw) != 32:
                raise ChainUnavailable(
                    f"balanceOf on {plan.contract} returned {len(raw)} bytes, not 32"
                    + (" (no contract at that address?)" if not raw else "")
                )
            (balance,) = decode(["uint256"], raw)
        except (ChainUnavailable, RpcError) as exc:
            # An RpcError (revert, "header not found", ...) is treated like an outage: whatever
            # the reason, the gateway does not know the balance, so it must not allow the call.
            self._count("errors")
            return self._stale_or_refuse(key, plan, exc)
        if self._inflight.is_current(key):  # not invalidated meanwhile
            self._cache[key] = (balance, started, wall)
        return Balance(balance, wall)

    def _stale_or_refuse(self, key: CacheKey, plan: PlanConfig, exc: Exception) -> Balance:
        window = self._config.ttl + self._config.stale_if_error
        entry = self._cache.get(key)
        if self._config.stale_if_error > 0 and entry is not None:
            balance, fetched_at, wall = entry
            if balance > 0 and self._clock() - fetched_at < window:
                # Only positive answers, only for a bounded time: a known-good subscriber keeps
                # working through a short RPC outage; an unknown one is never let in.
                self._count("stale")
                return Balance(balance, wall)
        reason = "the node returned an error" if isinstance(exc, RpcError) else "no RPC node answered"
        # The detail goes to the client: no RPC URLs in it. The full reason is the __cause__.
        detail = f"cannot read the plan on chain {plan.chain!r}: {reason}; try again later"
        raise PlanUnreadable(plan.chain, detail) from exc

    def invalidate(self, plan: PlanConfig, subscriber: str) -> None:
        """Forget a subscriber's cached balance, so that the next call reads the chain.

        A call already in flight keeps answering its waiters but no longer writes the cache,
        so a balance read before a burn cannot be cached after it. Nothing in the gateway calls
        this today (a settlement needs no invalidation: the ledger subtracts the charges settled
        after a balance's `read_at`); the tests use it to see a balance they changed on chain.
        """
        key = self._key(plan, subscriber)
        self._cache.pop(key, None)
        self._inflight.forget(key)
