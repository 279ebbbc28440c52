"""Money timing at the edge (issue 10, items 6 and 7), on the SQLite ledger with an injected clock: a
charge never takes more than is still held, so an expired hold cannot get one credit spent twice.
The same against the real gateway app, the real chain and real upstreams is in
tests/integration/test_edge_credit_timing_gateway.py."""

from __future__ import annotations

import pytest

from gateway.ledger.database import SqliteDatabase
from gateway.ledger import Account, ReservationExpired
from gateway.ledger.sqlite import SqliteLedger
from tests.support.stack import BROKE


@pytest.mark.asyncio
async def test_a_charge_on_an_expired_hold_is_refused_instead_of_spending_the_credit_twice(tmp_path):
    now = [1_000_000.0]
    db = SqliteDatabase(tmp_path / "ledger.db")
    ledger = SqliteLedger(db, clock=lambda: now[0])
    await ledger.open()
    try:
        account = Account(31337, "0x5FbDB2315678afecb367f032d93F642f64180aa3", 1, BROKE)
        first = await ledger.reserve(account, "elvis", 1, 1, 0.0, "first", ttl=10)
        assert await ledger.extend(first.id, 10) is True  # a live hold is renewed
        now[0] += 11  # the first hold's process stalled past its lifetime: it expired
        assert await ledger.extend(first.id, 10) is False  # too late to renew: its credit is free again
        second = await ledger.reserve(account, "elvis", 1, 1, 0.0, "second", ttl=10)  # takes that credit
        await ledger.charge(second, 1, 1, 0.0)
        with pytest.raises(ReservationExpired):
            await ledger.charge(first, 1, 1, 0.0)
        assert tuple(await db.run(lambda c: c.execute("SELECT SUM(amount), COUNT(*) FROM charges").fetchone())) == (1, 1)
    finally:
        await db.close()
