"""The ledger's money rules on both backends, SQLite and PostgreSQL (a real server, see
tests/support/postgres.py): atomic reservations, charges, settlement claims, shortfalls, usage.

SQLite's own mechanics (WAL, group commit, its migrations) are tested in
tests/unit/test_ledger_sqlite.py; what only a shared database can get wrong, in
test_ledger_postgres.py.
"""

from __future__ import annotations

import asyncio

import pytest
import pytest_asyncio

from gateway.ledger import Account, InsufficientCredits, ReservationExpired
from gateway.ledger.database import SqliteDatabase
from gateway.ledger.postgres import PostgresLedger
from gateway.ledger.postgres_database import PostgresDatabase
from gateway.ledger.sqlite import SqliteLedger
from tests.support.postgres import ShiftedClock, postgres  # noqa: F401 - postgres: a fixture

pytestmark = pytest.mark.asyncio
ACCOUNT = Account(31337, "0x5FbDB2315678afecb367f032d93F642f64180aa3", 1, "0x3C44CdDdB6a900fa2b585dd299e03d12FA4293BC")
OTHER = Account(31337, ACCOUNT.contract, 1, "0x90F79bf6EB2c4f870365E785982E1f101E93b906")


class Clock:
    def __init__(self) -> None:
        self.now = 1_000_000.0

    def __call__(self) -> float:
        return self.now


@pytest_asyncio.fixture(params=["sqlite", "postgres"])
async def ledger(request, tmp_path):
    if request.param == "sqlite":
        db = SqliteDatabase(tmp_path / "ledger.db")
        ledger = SqliteLedger(db, clock=Clock())
        await ledger.open()
        yield ledger
        await db.close()
        return
    server = request.getfixturevalue("postgres")
    url = server.new_database()
    # Moving this clock moves the database's clock too: expiry is decided there.
    clock = ShiftedClock(server, url)
    db = PostgresDatabase(url)
    ledger = PostgresLedger(db, clock=clock)
    await ledger.open()
    clock.install()
    yield ledger
    await db.close()


async def reserve(ledger, amount=1, balance=5, read_at=0.0, account=ACCOUNT, ttl=60.0):
    return await ledger.reserve(account, "elvis", amount, balance, read_at, "req", ttl)


async def test_concurrent_reservations_never_exceed_the_balance(ledger):
    results = await asyncio.gather(*(reserve(ledger) for _ in range(20)), return_exceptions=True)
    granted = [r for r in results if not isinstance(r, Exception)]
    assert len(granted) == 5
    assert all(isinstance(r, InsufficientCredits) for r in results if isinstance(r, Exception))
    assert sorted(r.remaining for r in granted) == [0, 1, 2, 3, 4]


async def test_accounts_are_independent(ledger):
    await reserve(ledger, amount=5)
    assert (await reserve(ledger, amount=5, account=OTHER)).remaining == 0


async def test_release_and_expiry_free_the_credits(ledger):
    held = await reserve(ledger, amount=5)
    with pytest.raises(InsufficientCredits):
        await reserve(ledger)
    await ledger.release(held.id)
    expiring = await reserve(ledger, amount=5, ttl=10)
    ledger.clock.now += 11  # the process that held it died: the hold expires by itself
    assert (await reserve(ledger, amount=5)).remaining == 0
    assert expiring.amount == 5


async def test_charges_count_until_burned_and_settled_burns_after_the_read_still_count(ledger):
    held = await reserve(ledger, amount=3)
    assert await ledger.charge(held, 2, balance=5, balance_read_at=0.0) == 3  # charged 2 of 3 reserved
    with pytest.raises(InsufficientCredits) as short:
        await reserve(ledger, amount=4)
    assert short.value.available == 3
    group, = await ledger.pending_groups()
    s = await ledger.record_settlement(group, 2, "0xop", 0, "0xhash", "0xraw")
    await ledger.mark_confirmed(s.id, 10)
    # A balance read before the burn (5) still has the charge subtracted ...
    before = await reserve(ledger, amount=3, balance=5, read_at=0.0)
    assert before.remaining == 0
    await ledger.release(before.id)
    # ... a balance read after it (3, burned) does not subtract it again.
    assert (await reserve(ledger, amount=3, balance=3, read_at=ledger.clock.now + 1)).remaining == 0


async def test_charge_never_exceeds_the_reservation(ledger):
    held = await reserve(ledger, amount=2)
    with pytest.raises(ValueError):
        await ledger.charge(held, 3, 5, 0.0)


async def test_a_charge_is_claimed_by_one_live_settlement_only(ledger):
    held = await reserve(ledger)
    await ledger.charge(held, 1, 5, 0.0)
    group, = await ledger.pending_groups()
    await ledger.record_settlement(group, 1, "0xop", 0, "0xa", "0xraw")
    assert await ledger.pending_groups() == []
    with pytest.raises(RuntimeError, match="already claimed"):
        await ledger.record_settlement(group, 1, "0xop", 1, "0xb", "0xraw")


async def test_failed_settlement_returns_its_charges_to_pending(ledger):
    for _ in range(2):
        await ledger.charge(await reserve(ledger), 1, 5, 0.0)
    group, = await ledger.pending_groups()
    assert group.amount == 2 and len(group.charge_ids) == 2
    s = await ledger.record_settlement(group, 2, "0xop", 0, "0xa", "0xraw")
    assert [u.id for u in await ledger.unfinished_settlements()] == [s.id]
    await ledger.mark_failed(s.id, "nonce used by another transaction")
    assert await ledger.unfinished_settlements() == []
    again, = await ledger.pending_groups()
    assert again.charge_ids == group.charge_ids


async def test_short_burn_records_a_shortfall_that_blocks_until_resolved(ledger):
    await ledger.charge(await reserve(ledger, amount=4), 4, 5, 0.0)
    group, = await ledger.pending_groups()
    s = await ledger.record_settlement(group, 1, "0xop", 0, "0xa", "0xraw")
    await ledger.mark_confirmed(s.id, 3)
    with pytest.raises(InsufficientCredits) as blocked:
        await reserve(ledger, balance=100, read_at=ledger.clock.now + 1)
    assert blocked.value.shortfall == 3
    assert await ledger.resolve_shortfalls(ACCOUNT, "paid by invoice") == 1
    await reserve(ledger, balance=100, read_at=ledger.clock.now + 1)


async def test_usage_sums_per_service_and_subscriber(ledger):
    for amount in (1, 2):
        await ledger.charge(await reserve(ledger, amount=amount), amount, 5, 0.0)
    group, = await ledger.pending_groups()
    s = await ledger.record_settlement(group, 3, "0xop", 0, "0xabc", "0xraw")
    await ledger.mark_confirmed(s.id, 7)
    await ledger.charge(await reserve(ledger, amount=1, balance=10), 1, 10, 0.0)
    (row,) = await ledger.usage()
    assert (row["calls"], row["charged"], row["settled"], row["pending"], row["shortfall"], row["burn_txs"]) == \
        (3, 4, 3, 1, 0, ["0xabc"])


# ---- charge_part: calls charged from a worker's lease (one hold, many charges) -------------------

async def test_charge_part_takes_from_the_lease_and_never_more_than_it_holds(ledger):
    lease = await reserve(ledger, amount=4, balance=10)
    assert await ledger.charge_part(lease, 1, "req-1", "elvis", 10, 0.0) == 6  # 10 - 1 charged - 3 still held
    assert await ledger.charge_part(lease, 2, "req-2", "elvis", 10, 0.0) == 6  # 10 - 3 charged - 1 still held
    with pytest.raises(ReservationExpired):
        await ledger.charge_part(lease, 2, "req-3", "elvis", 10, 0.0)  # holds 1: nothing charged
    assert await ledger.charge_part(lease, 1, "req-4", "elvis", 10, 0.0) == 6  # empty now: the hold is gone
    assert (await reserve(ledger, amount=6, balance=10)).remaining == 0
    (row,) = await ledger.usage()
    assert (row["calls"], row["charged"]) == (3, 4)


async def test_charge_part_of_an_expired_or_released_lease_charges_nothing(ledger):
    lease = await reserve(ledger, amount=3, ttl=10)
    ledger.clock.now += 11  # the worker stalled: its lease expired and its credits are free again
    with pytest.raises(ReservationExpired):
        await ledger.charge_part(lease, 1, "req", "elvis", 5, 0.0)
    released = await reserve(ledger, amount=3)
    await ledger.release(released.id)
    with pytest.raises(ReservationExpired):
        await ledger.charge_part(released, 1, "req", "elvis", 5, 0.0)
    assert await ledger.usage() == []
    assert (await reserve(ledger, amount=5)).remaining == 0  # nothing charged, nothing held


async def test_concurrent_charge_parts_never_exceed_the_lease(ledger):
    lease = await reserve(ledger, amount=5, balance=20)
    results = await asyncio.gather(*(ledger.charge_part(lease, 1, f"req-{n}", "elvis", 20, 0.0) for n in range(8)),
                                   return_exceptions=True)
    assert sum(1 for r in results if not isinstance(r, Exception)) == 5
    assert all(isinstance(r, ReservationExpired) for r in results if isinstance(r, Exception))
    (row,) = await ledger.usage()
    assert (row["calls"], row["charged"]) == (5, 5)


async def test_a_refusal_says_how_much_is_held(ledger):
    await reserve(ledger, amount=4)
    with pytest.raises(InsufficientCredits) as short:
        await reserve(ledger, amount=2)
    assert (short.value.available, short.value.held) == (1, 4)
