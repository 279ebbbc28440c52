"""Leases (gateway/credits/leases.py): one ledger hold lent to many calls in memory.

On the real SQLite ledger (in memory) with its calls counted, and, through the real gateway app
on a fake chain, the meter's use of them: one hold for many calls, never lending more than a lease
holds, released when idle (on a timer the test fires, on a clock the test moves), and an expired
lease refusing its calls (`hold_expired`) with nothing charged."""

from __future__ import annotations

import asyncio
import collections
import time

import pytest
import pytest_asyncio

from gateway.credits.leases import Leases
from gateway.ledger import Account, InsufficientCredits
from gateway.ledger.database import SqliteDatabase
from gateway.ledger.sqlite import SqliteLedger
from tests.support.fakes import CREDITS_PLAN, SUBSCRIBER, FakeChain, FakeUpstream, fake_config, fake_gateway

pytestmark = pytest.mark.asyncio
ACCOUNT = Account(31337, CREDITS_PLAN, 1, SUBSCRIBER)
QUERY = {"queries": [{"query": "love"}]}


class Clock:
    def __init__(self, now: float = 1_000_000.0) -> None:
        self.now = now

    def __call__(self) -> float:
        return self.now


class Timer:
    def __init__(self, at: float, fn, args) -> None:
        self.at, self.fn, self.args, self.cancelled = at, fn, args, False

    def cancel(self) -> None:
        self.cancelled = True


class Timers:
    """`call_later` for the leases: the test fires what is due when it moves the clock."""

    def __init__(self, clock: Clock) -> None:
        self.clock, self.pending = clock, []

    def __call__(self, delay, fn, *args) -> Timer:
        self.pending.append(timer := Timer(self.clock.now + delay, fn, args))
        return timer

    def advance(self, seconds: float) -> None:
        self.clock.now += seconds
        due = [t for t in self.pending if t.at <= self.clock.now]
        self.pending = [t for t in self.pending if t.at > self.clock.now]
        for timer in due:
            if not timer.cancelled:
                timer.fn(*timer.args)


def counted(ledger) -> collections.Counter:
    """Count the ledger's request-path calls (the same object the leases and the meter use)."""
    calls: collections.Counter[str] = collections.Counter()
    for name in ("reserve", "charge", "charge_part", "release", "extend"):
        method = getattr(ledger, name)

        async def counting(*args, _method=method, _name=name, **kwargs):
            calls[_name] += 1
            return await _method(*args, **kwargs)

        setattr(ledger, name, counting)
    return calls


@pytest_asyncio.fixture
async def ledger():
    db = SqliteDatabase(":memory:")
    ledger = SqliteLedger(db, clock=Clock())
    await ledger.open()
    yield ledger
    await db.close()


async def test_concurrent_calls_never_borrow_more_than_their_lease_holds(ledger):
    calls = counted(ledger)
    leases = Leases(ledger, lease_max=5)
    lent = await asyncio.gather(*(leases.lend(ACCOUNT, "elvis", 1, 100, 0.0, f"r{n}", 60.0) for n in range(12)))
    # The first call finds the account in no use: its own price; the others: 5 + 5 + 1 of a fourth.
    assert calls["reserve"] == 4
    assert all(0 <= lease.lent <= lease.held for lease in set(lent))
    for n, lease in enumerate(lent):  # every call's charge is covered by its lease's hold
        await ledger.charge_part(lease.reservation, 1, f"r{n}", "elvis", 100, 0.0)
        leases.give_back(lease, 1, 1)
    (row,) = await ledger.usage()
    assert (row["calls"], row["charged"]) == (12, 12)
    assert leases.free(ACCOUNT) == 4
    await leases.close()
    assert await ledger.available(ACCOUNT, 100, 0.0) == 88  # the unused 4 went back


async def test_a_lease_is_released_after_its_idle_time_on_the_timer(ledger):
    clock = Clock(0.0)
    timers = Timers(clock)
    leases = Leases(ledger, lease_max=10, idle=1.0, call_later=timers, clock=clock)
    leases.last_call[ACCOUNT] = clock.now  # a call a moment ago: the account is in use
    lease = await leases.lend(ACCOUNT, "elvis", 1, 100, 0.0, "r", 60.0)
    assert await ledger.available(ACCOUNT, 100, 0.0) == 90
    leases.give_back(lease, 1)  # the call was released: nothing charged, the lease stays for the next
    timers.advance(0.5)
    assert lease.open and leases.free(ACCOUNT) == 10  # not idle long enough
    again = await leases.lend(ACCOUNT, "elvis", 1, 100, 0.0, "r", 60.0)
    assert again is lease
    timers.advance(1.0)
    assert lease.open  # a call in flight: never released under it
    leases.give_back(lease, 1)
    timers.advance(0.5)
    assert lease.open  # 0.5 s since its last call
    timers.advance(0.5)
    await asyncio.gather(*leases._releasing)
    assert not lease.open and leases.free(ACCOUNT) == 0
    assert await ledger.available(ACCOUNT, 100, 0.0) == 100


async def test_near_the_end_of_a_balance_a_lease_is_one_calls_price_and_goes_back_with_it(ledger):
    calls = counted(ledger)
    leases = Leases(ledger, workers=2)
    lease = await leases.lend(ACCOUNT, "elvis", 2, 10, 0.0, "r", 60.0)  # 10 // (4 * 2) < 2
    assert lease.held == 2 and lease.single
    assert leases.give_back(lease, 2)  # released: release it now, as one hold per call did
    await leases.release(lease)
    assert await ledger.available(ACCOUNT, 10, 0.0) == 10 and calls["reserve"] == 1


async def test_a_refusal_with_nothing_held_elsewhere_does_not_wait(ledger):
    leases = Leases(ledger, wait=3600.0)  # a wait would hang the test
    with pytest.raises(InsufficientCredits):
        await leases.lend(ACCOUNT, "elvis", 1, 0, 0.0, "r", 60.0)
    held = await leases.lend(ACCOUNT, "elvis", 1, 1, 0.0, "r", 60.0)  # the last credit, lent here
    with pytest.raises(InsufficientCredits):
        await leases.lend(ACCOUNT, "elvis", 1, 1, 0.0, "r", 60.0)  # held by this worker: no wait either
    assert held.lent == 1


async def test_a_refusal_while_another_worker_holds_credits_waits_for_them_once(ledger):
    calls = counted(ledger)
    waiting = asyncio.Event()
    other_went_idle = asyncio.Event()

    async def pause(seconds):  # the refused worker's wait, ended when the test says
        waiting.set()
        await other_went_idle.wait()

    other, mine = Leases(ledger, workers=2), Leases(ledger, workers=2, pause=pause)
    theirs = await other.lend(ACCOUNT, "elvis", 1, 8, 0.0, "r", 60.0)  # 8 // 8 = 1: one call's lease
    for n in range(7):
        await mine.lend(ACCOUNT, "elvis", 1, 8, 0.0, f"m{n}", 60.0)
    late = asyncio.ensure_future(mine.lend(ACCOUNT, "elvis", 1, 8, 0.0, "late", 60.0))
    await waiting.wait()  # refused once: the last credit is the other worker's
    assert calls["reserve"] == 9 and not late.done()
    assert other.give_back(theirs, 1)  # the other worker's call was released: its lease goes back
    await other.release(theirs)
    other_went_idle.set()
    assert (await late).lent == 1 and calls["reserve"] == 10


async def test_a_lone_call_holds_only_its_price_and_its_charge_leaves_no_hold(ledger):
    calls = counted(ledger)
    clock = Clock(0.0)
    leases = Leases(ledger, idle=1.0, clock=clock)
    lease = await leases.lend(ACCOUNT, "elvis", 2, 100, 0.0, "r1", 60.0)  # no call in the last second
    assert lease.held == 2 and await ledger.available(ACCOUNT, 100, 0.0) == 98
    await ledger.charge_part(lease.reservation, 2, "r1", "elvis", 100, 0.0)
    assert not leases.give_back(lease, 2, 2)  # emptied: the ledger deleted the hold with the charge
    assert leases.free(ACCOUNT) == 0 and await ledger.available(ACCOUNT, 100, 0.0) == 98
    clock.now += 0.5  # the next call within `idle`: the account is in use, it gets a lease
    lease = await leases.lend(ACCOUNT, "elvis", 2, 100, 0.0, "r2", 60.0)
    # Sized on what the ledger last said was available (100, this call's hold included): 100 // 4.
    assert lease.held == 25 and (calls["reserve"], calls["release"]) == (2, 0)
    await leases.close()


async def test_a_refused_worker_asks_again_until_the_credits_come_back_or_its_wait_ends(ledger):
    clock = Clock(0.0)
    asked: list[float] = []
    other = Leases(ledger, workers=2, clock=clock)
    other.last_call[ACCOUNT] = 0.0  # in use there: a lease of 8 // 8 = 1 credit, kept while idle
    theirs = await other.lend(ACCOUNT, "elvis", 1, 8, 0.0, "o", 60.0)
    other.give_back(theirs, 1)

    async def pause(seconds):  # the refused worker's pause: moves the clock; the lease comes back at the 3rd
        asked.append(seconds)
        clock.now += seconds
        if len(asked) == 3 and theirs.open:
            await other.release(theirs)

    mine = Leases(ledger, workers=2, wait=1.5, retry_every=0.1, clock=clock, pause=pause)
    for n in range(7):
        await mine.lend(ACCOUNT, "elvis", 1, 8, 0.0, f"m{n}", 60.0)
    assert (await mine.lend(ACCOUNT, "elvis", 1, 8, 0.0, "late", 60.0)).lent >= 1 and asked == [0.1] * 3
    # Held elsewhere (all 8 lent to calls in flight there) and never given back: a third worker
    # asks every `retry_every` and is refused once `wait` has passed.
    asked.clear()
    third = Leases(ledger, workers=2, wait=1.5, retry_every=0.1, clock=clock, pause=pause)
    with pytest.raises(InsufficientCredits):
        await third.lend(ACCOUNT, "elvis", 1, 8, 0.0, "refused", 60.0)
    assert len(asked) == 15


# ---- through the meter, on the real gateway app ---------------------------------------------------

async def test_a_lease_serves_many_calls_with_one_ledger_hold(signing_key):
    chain = FakeChain()
    chain.set_credits(CREDITS_PLAN, SUBSCRIBER, 1000)
    async with FakeUpstream() as upstream, fake_gateway(fake_config(upstream.url, signing_key), chain) as gw:
        calls = counted(gw.runtime.ledger)
        token = gw.token(SUBSCRIBER)
        remaining = []
        for _ in range(20):
            async with gw.request("POST", "/query", json=QUERY, token=token) as resp:
                assert resp.status == 200 and resp.headers["X-Credits-Charged"] == "1"
                remaining.append(int(resp.headers["X-Credits-Remaining"]))
        # The first call, alone: a hold of its price that its charge empties (and deletes); then
        # one lease for the 19 others.
        assert (calls["reserve"], calls["charge_part"], calls["charge"], calls["release"]) == (2, 20, 0, 0)
        assert remaining == list(range(999, 979, -1))  # the lease's unlent credits are the subscriber's
        (row,) = await gw.runtime.ledger.usage()
        assert (row["calls"], row["charged"]) == (20, 20)
        async with gw.request("GET", "/.gateway/plan", token=token) as resp:
            assert (await resp.json())["plan"]["balance"] == 980


async def test_an_expired_lease_refuses_its_calls_and_charges_nothing(signing_key):
    chain = FakeChain()
    chain.set_credits(CREDITS_PLAN, SUBSCRIBER, 1000)
    clock = Clock(time.time())
    async with FakeUpstream() as upstream, \
            fake_gateway(fake_config(upstream.url, signing_key), chain, clock=clock) as gw:
        token = gw.token(SUBSCRIBER)
        for _ in range(2):  # the second call finds the account in use: it opens a lease
            async with gw.request("POST", "/query", json=QUERY, token=token) as resp:
                assert resp.status == 200
        # The worker stalled for the lease's whole lifetime (timeout + hold margin): its hold expired.
        clock.now += gw.config.services["elvis"].timeout + gw.config.metering.hold_margin + 1
        async with gw.request("POST", "/query", json=QUERY, token=token) as resp:
            assert resp.status == 503 and (await resp.json(content_type=None))["code"] == "hold_expired"
        (row,) = await gw.runtime.ledger.usage()
        assert (row["calls"], row["charged"]) == (2, 2)  # nothing charged for the refused call
        async with gw.request("POST", "/query", json=QUERY, token=token) as resp:
            assert resp.status == 200  # a new lease
        (row,) = await gw.runtime.ledger.usage()
        assert (row["calls"], row["charged"]) == (3, 3)
