"""The PostgreSQL ledger on a real PostgreSQL: what only a shared database can get wrong.

Accounts proceed in parallel (a row lock per account, no table-wide lock), concurrent
reservations from two "replicas" never exceed a balance, the database's clock decides expiry
and "settled after the balance was read" whatever the hosts' clocks say, a hold renewed while
a reservation decides is counted, holds of dead processes are swept, charges are durable
whatever the server's default, and migrations apply once when replicas start together. The
backend-independent money rules run on both backends in tests/integration/test_ledger.py.
"""

from __future__ import annotations

import asyncio
import time

import asyncpg
import pytest
import pytest_asyncio

from gateway.ledger import Account, InsufficientCredits, ReservationExpired
from gateway.ledger.postgres import PostgresLedger
from gateway.ledger.postgres_database import PostgresDatabase
from gateway.ledger.postgres import READ_SLACK
from gateway.ledger.postgres_schema import MIGRATIONS, RESERVE_CALL
from tests.support.postgres import ShiftedClock, postgres, postgres_url  # noqa: F401 - fixtures

pytestmark = pytest.mark.asyncio
ACCOUNT = Account(31337, "0x5FbDB2315678afecb367f032d93F642f64180aa3", 1, "0x3C44CdDdB6a900fa2b585dd299e03d12FA4293BC")
OTHER = Account(31337, ACCOUNT.contract, 1, "0x90F79bf6EB2c4f870365E785982E1f101E93b906")


@pytest_asyncio.fixture
async def replicas(postgres_url):
    """Two ledgers on one database, each with its own pool: two gateways on two machines."""
    dbs = [PostgresDatabase(postgres_url, max_size=10) for _ in range(2)]
    ledgers = [PostgresLedger(db) for db in dbs]
    for ledger in ledgers:
        await ledger.open()
    yield ledgers
    for db in dbs:
        await db.close()


async def test_an_account_locked_elsewhere_does_not_hold_up_another_account(replicas, postgres_url):
    first, second = replicas
    await first.reserve(ACCOUNT, "elvis", 1, 100, time.time(), "r0", 60)  # the account's row exists
    locker = await asyncpg.connect(postgres_url)  # a transaction holding ACCOUNT's lock (a slow reserve)
    locking = locker.transaction()
    await locking.start()
    await locker.execute("SELECT * FROM account_totals WHERE subscriber = $1 FOR UPDATE", ACCOUNT.subscriber)
    waiting = asyncio.ensure_future(second.reserve(ACCOUNT, "elvis", 1, 100, time.time(), "r1", 60))
    # OTHER's reservation completes while ACCOUNT's lock is still held: it did not queue behind it.
    other = await asyncio.wait_for(second.reserve(OTHER, "elvis", 1, 100, time.time(), "r2", 60), 5)
    assert other.remaining == 99
    await asyncio.sleep(0.3)
    assert not waiting.done()  # ... while the same account waits for its row
    await locking.rollback()
    await locker.close()
    assert (await asyncio.wait_for(waiting, 5)).remaining == 98


async def test_concurrent_reservations_on_two_replicas_never_exceed_the_balance(replicas):
    calls = [replicas[i % 2].reserve(ACCOUNT, "elvis", 1, 5, time.time(), f"r{i}", 60) for i in range(20)]
    results = await asyncio.gather(*calls, return_exceptions=True)
    granted = [r for r in results if not isinstance(r, Exception)]
    assert len(granted) == 5
    assert all(isinstance(r, InsufficientCredits) for r in results if isinstance(r, Exception))
    assert sorted(r.remaining for r in granted) == [0, 1, 2, 3, 4]


async def test_the_database_clock_expires_a_hold_and_its_charge_is_refused(postgres_url):
    db = PostgresDatabase(postgres_url)
    ledger = PostgresLedger(db, clock=lambda: 1_000_000.0)  # the host's clock stands still
    await ledger.open()
    held = await ledger.reserve(ACCOUNT, "elvis", 5, 5, 0.0, "r", ttl=0.2)
    await asyncio.sleep(0.4)  # the database's clock moves on: the hold expired there
    assert not await ledger.extend(held.id, 60)
    again = await ledger.reserve(ACCOUNT, "elvis", 5, 5, 0.0, "r2", ttl=60)  # its credits are free again
    with pytest.raises(ReservationExpired):
        await ledger.charge(held, 5, 5, 0.0)
    assert await ledger.pending_groups() == []  # nothing charged
    assert await ledger.charge(again, 5, 5, 0.0) == 0
    await db.close()


async def test_a_hold_renewed_while_a_reservation_decides_is_counted_by_it(postgres, postgres_url):
    """extend() checked the hold live and is about to commit when the hold's time runs out and a
    reservation of the same account runs: that reservation must still count the hold, which its
    owner goes on to charge."""
    clock = ShiftedClock(postgres, postgres_url)
    db = PostgresDatabase(postgres_url)
    ledger = PostgresLedger(db, clock=clock)
    await ledger.open()
    clock.install()
    held = await ledger.reserve(ACCOUNT, "elvis", 5, 5, 0.0, "slow call", ttl=10)
    renewing = await asyncpg.connect(postgres_url)  # extend's transaction, not committed yet
    renewal = renewing.transaction()
    await renewal.start()
    assert await renewing.execute("UPDATE reservations SET expires_at = ledger_now() + interval '60 s'"
                                  " WHERE id = $1 AND expires_at >= ledger_now()", held.id) == "UPDATE 1"
    clock.now += 11  # the old expiry has passed on the database's clock
    deciding = asyncio.ensure_future(ledger.reserve(ACCOUNT, "elvis", 5, 5, 0.0, "other call", ttl=10))
    await asyncio.sleep(0.3)
    assert not deciding.done()  # it waits for the renewal's row ...
    await renewal.commit()
    await renewing.close()
    with pytest.raises(InsufficientCredits):  # ... and then counts the renewed hold
        await asyncio.wait_for(deciding, 5)
    assert await ledger.charge(held, 5, 5, 0.0) == 0
    await db.close()


async def test_holds_of_dead_processes_are_swept_once_a_settlement_cycle(postgres, postgres_url):
    clock = ShiftedClock(postgres, postgres_url)
    db = PostgresDatabase(postgres_url)
    ledger = PostgresLedger(db, clock=clock)
    await ledger.open()
    clock.install()
    await ledger.reserve(ACCOUNT, "elvis", 1, 5, 0.0, "dead", ttl=10)  # never reserved again: never swept by one
    live = await ledger.reserve(OTHER, "elvis", 1, 5, 0.0, "live", ttl=600)
    clock.now += 100
    assert await ledger.pending_groups() == []
    assert [r["id"] for r in await db.run(lambda conn: conn.fetch("SELECT id FROM reservations"))] == [live.id]
    await db.close()


@pytest.mark.parametrize("skew", [-3600.0, 3600.0])
async def test_settled_after_the_read_is_decided_without_comparing_two_machines_clocks(postgres_url, skew):
    """A replica whose clock is an hour off: a burn confirmed after its balance read still counts
    (else credits are sold twice), one confirmed before does not (else they are refused twice)."""
    db = PostgresDatabase(postgres_url)
    ledger = PostgresLedger(db, clock=lambda: time.time() + skew)
    await ledger.open()
    read_before_burn = ledger.clock()  # the replica reads 5 on chain
    await ledger.charge(await ledger.reserve(ACCOUNT, "elvis", 2, 5, read_before_burn, "r", 60), 2, 5, read_before_burn)
    group, = await ledger.pending_groups()
    s = await ledger.record_settlement(group, 2, "0xop", 0, "0xa", "0xraw")
    await ledger.mark_confirmed(s.id, 10)  # the burn is mined: 3 left on chain
    # The cached read of 5 predates the burn: the 2 burned still count against it.
    assert await ledger.available(ACCOUNT, 5, read_before_burn) == 3
    with pytest.raises(InsufficientCredits):
        await ledger.reserve(ACCOUNT, "elvis", 4, 5, read_before_burn, "r2", 60)
    # A new read: 3, the burn included. Later than the burn by more than the slack the ledger
    # allows for the trip to the server (a burn confirmed within it would count once more).
    await asyncio.sleep(0.1 + READ_SLACK)
    read_after_burn = ledger.clock()
    assert await ledger.available(ACCOUNT, 3, read_after_burn) == 3
    assert (await ledger.reserve(ACCOUNT, "elvis", 3, 3, read_after_burn, "r3", 60)).remaining == 0
    await db.close()


async def test_charges_are_durable_whatever_the_server_default(postgres, postgres_url):
    postgres.psql(postgres_url, "ALTER DATABASE " + postgres_url.rsplit("/", 1)[1] + " SET synchronous_commit = off")
    db = PostgresDatabase(postgres_url)
    await PostgresLedger(db).open()

    async def setting(conn):
        return await conn.fetchval("SHOW synchronous_commit")

    async def reserving(conn):
        await conn.fetchrow(RESERVE_CALL, 31337, ACCOUNT.contract, "1", ACCOUNT.subscriber, 0.0, "r1", "elvis", 1,
                            "req", 60.0, 5, READ_SLACK)
        return await setting(conn)

    assert await db.transaction(setting) == "on"  # charges, settlements
    assert await db.transaction(setting, durable=False) == "off"  # holds only: extend, release
    assert await db.transaction(reserving) == "off"  # and reserve, whose function says so
    await db.close()


async def test_migrations_apply_once_even_when_replicas_start_together(postgres_url):
    dbs = [PostgresDatabase(postgres_url) for _ in range(3)]
    assert await asyncio.gather(*(db.migrate("ledger", MIGRATIONS) for db in dbs)) == [len(MIGRATIONS)] * 3
    assert await dbs[0].migrate("ledger", MIGRATIONS) == len(MIGRATIONS)  # idempotent

    async def versions(conn):
        return [tuple(r) for r in await conn.fetch("SELECT component, version FROM schema_versions")]

    assert await dbs[0].run(versions) == [("ledger", len(MIGRATIONS))]
    with pytest.raises(RuntimeError, match="newer than this gateway"):
        await dbs[1].migrate("ledger", MIGRATIONS[:0])
    for db in dbs:
        await db.close()


class StallingSend:
    """The host's clock as a reservation reads it when its call took `stall` seconds to reach the
    server: the send is stamped `stall` seconds before the server starts on it."""

    def __init__(self, stall: float) -> None:
        self.stall, self.calls = stall, 0

    def __call__(self) -> float:
        self.calls += 1
        return time.time() - (self.stall if self.calls % 2 == 1 else 0.0)  # odd: the send, even: the answer


async def test_a_reservation_whose_trip_outlasted_the_slack_still_counts_a_burn_in_the_gap(postgres_url):
    db = PostgresDatabase(postgres_url)
    ledger = PostgresLedger(db)
    await ledger.open()
    read_before_burn = time.time()  # the replica reads 5 on chain
    await ledger.charge(await ledger.reserve(ACCOUNT, "elvis", 2, 5, read_before_burn, "r", 60), 2, 5, read_before_burn)
    group, = await ledger.pending_groups()
    s = await ledger.record_settlement(group, 2, "0xop", 0, "0xa", "0xraw")
    await ledger.mark_confirmed(s.id, 10)  # mined: 3 left on chain, while the read of 5 is cached
    # A call whose trip to the server took 2 s: the read's age it sent is 2 s short, so the
    # function's bound falls after the burn. The gap is checked: the burn still counts.
    ledger.clock = StallingSend(2.0)
    with pytest.raises(InsufficientCredits) as refused:
        await ledger.reserve(ACCOUNT, "elvis", 4, 5, read_before_burn, "r2", 60)
    assert refused.value.available == 3
    assert (await ledger.reserve(ACCOUNT, "elvis", 3, 5, read_before_burn, "r3", 60)).remaining == 0
    assert await db.run(lambda conn: conn.fetchval("SELECT COUNT(*) FROM reservations")) == 1  # r2 held nothing
    await db.close()
