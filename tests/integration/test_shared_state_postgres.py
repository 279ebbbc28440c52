"""What replicas share through PostgreSQL besides the ledger, on a real PostgreSQL: the sign-in
state (one nonce spent once across replicas, one nonce secret), revocations announced to every
replica at once, plan balances shared with only durations crossing machines, the one settler's
lease, and an unreachable database answered as `LedgerUnavailable`."""

from __future__ import annotations

import asyncio
import time
from urllib.parse import urlsplit

import asyncpg
import pytest
import pytest_asyncio

from gateway.auth.revocation import RevocationList, revoke
from gateway.auth.state import auth_state
from gateway.credits.shared_balances import _WAIT, SharedBalance, shared_balances
from gateway.ledger import LedgerUnavailable
from gateway.ledger.backends import ledger_on, open_database
from gateway.ledger.settler_lease import LEASE_KEY, PostgresSettlerLease, settler_lease
from tests.support.postgres import postgres, postgres_url  # noqa: F401 - fixtures
from tests.support.tcp_proxy import TcpProxy

pytestmark = pytest.mark.asyncio
SUB = "0x3C44CdDdB6a900fa2b585dd299e03d12FA4293BC"


@pytest_asyncio.fixture
async def two_replicas(postgres_url):
    """Two databases objects on one PostgreSQL database: two gateways on two machines."""
    dbs = [open_database(postgres_url) for _ in range(2)]
    yield dbs
    for db in dbs:
        await db.close()


async def test_both_replicas_share_one_nonce_secret_and_a_nonce_is_spent_once(two_replicas):
    states = [auth_state(db) for db in two_replicas]
    secrets = await asyncio.gather(*(s.open() for s in states))
    assert secrets[0] == secrets[1] and len(secrets[0]) == 32
    now = time.time()
    # The same signed message presented to both replicas at once: exactly one spends the nonce.
    spent = await asyncio.gather(*(s.spend_nonce("ab" * 36, now + 60, SUB, now) for s in states for _ in range(5)))
    assert sorted(spent) == [False] * 9 + [True]


async def test_a_revocation_reaches_the_other_replica_by_notification_not_by_its_refresh(two_replicas):
    there, here = (auth_state(db) for db in two_replicas)
    await there.open()
    await here.open()
    stale = asyncio.Event()

    class Observed(RevocationList):
        def mark_stale(self) -> None:  # what the replica's listener calls on a NOTIFY
            super().mark_stale()
            stale.set()

    # A refresh interval of an hour: only the NOTIFY can make the other replica see it in time.
    revocations = Observed(here, refresh=3600.0)
    assert not await revocations.is_revoked(SUB, "jti-1", time.time())
    # Wait until the listener is connected: it marks the list stale once when it (re)connects.
    await asyncio.wait_for(stale.wait(), timeout=10)
    stale.clear()
    await revoke(there, jti="jti-1")
    await asyncio.wait_for(stale.wait(), timeout=10)
    assert await revocations.is_revoked(SUB, "jti-1", time.time())
    await here.close()
    await there.close()


async def test_a_shared_balance_crosses_replicas_as_an_age_whatever_the_hosts_clocks_say(two_replicas):
    skew = 3600.0  # the second host's clock is an hour ahead
    first = shared_balances(two_replicas[0], lease=5.0, clock=time.time)
    second = shared_balances(two_replicas[1], lease=5.0, clock=lambda: time.time() + skew)
    await first.open()
    await second.open()
    assert await first.acquire("plan|a", ttl=30.0, negative_ttl=5.0) is None  # ours to read from the chain
    read_at = time.time() - 2.0  # the chain read began 2 s ago on the first host
    await first.publish("plan|a", SharedBalance(7, read_at))
    found = await second.acquire("plan|a", ttl=30.0, negative_ttl=5.0)
    assert found is not None and found.amount == 7
    age_on_second = (time.time() + skew) - found.read_at
    assert 2.0 <= age_on_second < 3.0  # the same age, on the second host's clock: not an hour off
    # Past its ttl on the database's clock it is not used, however the hosts' clocks disagree.
    assert await second.acquire("plan|b", ttl=30.0, negative_ttl=5.0) is None
    await second.publish("plan|b", SharedBalance(5, time.time() + skew - 31.0))
    assert await first.acquire("plan|b", ttl=30.0, negative_ttl=5.0) is None


async def test_a_key_claimed_by_one_replica_is_waited_for_by_the_other(two_replicas):
    first = shared_balances(two_replicas[0], lease=5.0)
    second = shared_balances(two_replicas[1], lease=5.0)
    await first.open()
    assert await first.acquire("plan|c", ttl=30.0, negative_ttl=5.0) is None  # first claims
    checks = asyncio.Queue()
    check = second._check_or_claim
    second._check_or_claim = lambda *args: _observed(check(*args), checks)
    waiting = asyncio.ensure_future(second.acquire("plan|c", ttl=30.0, negative_ttl=5.0))
    assert await checks.get() is _WAIT  # the second waits for the first's chain read instead of making its own
    await first.publish("plan|c", SharedBalance(9, time.time()))
    assert (await asyncio.wait_for(waiting, timeout=5)).amount == 9


async def _observed(outcome, into: asyncio.Queue):
    result = await outcome
    into.put_nowait(result)
    return result


async def test_one_settler_lease_per_database_and_a_dead_holder_hands_it_over(two_replicas, postgres_url):
    for db in two_replicas:
        await ledger_on(db).open()
    first, second = (settler_lease(db) for db in two_replicas)
    assert isinstance(first, PostgresSettlerLease)
    assert await first.held() and await first.held()  # taken, then confirmed
    assert not await second.held()
    # The holder's session dies (what kill -9 of its process does to it): the server drops the lock.
    admin = await asyncpg.connect(postgres_url)
    killed = await admin.fetchval(
        "SELECT pg_terminate_backend(pid) FROM pg_locks WHERE locktype = 'advisory' AND granted"
        " AND ((classid::bigint << 32) | objid::bigint) = $1", LEASE_KEY)
    assert killed
    await admin.close()
    assert await second.held()
    assert not await first.held()  # it notices its session is gone, and the lease is taken
    await first.release()
    await second.release()


async def test_an_unreachable_database_is_ledger_unavailable_and_the_same_object_recovers(postgres_url):
    target = urlsplit(postgres_url)
    with TcpProxy(target.hostname, target.port) as path:
        db = open_database(postgres_url.replace(f":{target.port}/", f":{path.port}/"))
        ledger = ledger_on(db)
        await ledger.open()
        path.cut()  # the network to the database goes away: the next call fails closed...
        with pytest.raises(LedgerUnavailable):
            await ledger.usage()
        path.restore()  # ...and once it is back, the same pool connects again: no restart needed
        assert await ledger.usage() == []
        await db.close()
    unreachable = open_database(postgres_url.replace(f":{target.port}/", f":{path.port}/"))  # nobody there now
    with pytest.raises(LedgerUnavailable):
        await ledger_on(unreachable).open()
    await unreachable.close()
