"""The SQLite ledger's own mechanics: its migrations (WAL, refusing a newer schema, v1 -> v2) and
the group commit. The money rules it shares with the PostgreSQL ledger are tested on both
backends in tests/integration/test_ledger.py."""

from __future__ import annotations

import asyncio
import threading

import pytest

from gateway.ledger.database import SqliteDatabase
from gateway.ledger import Account, InsufficientCredits
from gateway.ledger.sqlite import MIGRATIONS, SqliteLedger

pytestmark = pytest.mark.asyncio
ACCOUNT = Account(31337, "0x5FbDB2315678afecb367f032d93F642f64180aa3", 1, "0x3C44CdDdB6a900fa2b585dd299e03d12FA4293BC")


class Clock:
    def __init__(self) -> None:
        self.now = 1_000_000.0

    def __call__(self) -> float:
        return self.now


async def reserve(ledger, amount=1, balance=5, read_at=0.0, account=ACCOUNT, ttl=60.0):
    return await ledger.reserve(account, "elvis", amount, balance, read_at, "req", ttl)


async def test_migrations_apply_once_and_refuse_a_newer_schema(tmp_path):
    db = SqliteDatabase(tmp_path / "l.db")
    assert await db.migrate("ledger", MIGRATIONS) == len(MIGRATIONS)
    assert await db.migrate("ledger", MIGRATIONS) == len(MIGRATIONS)  # idempotent
    with pytest.raises(RuntimeError, match="newer than this gateway"):
        await db.migrate("ledger", MIGRATIONS[:0])
    journal = await db.run(lambda conn: conn.execute("PRAGMA journal_mode").fetchone()[0])
    assert journal == "wal"
    await db.close()


async def test_group_commit_batches_concurrent_writes_and_isolates_a_failing_one(tmp_path):
    db = SqliteDatabase(tmp_path / "g.db")
    await db.run(lambda conn: conn.execute("CREATE TABLE t (v INTEGER UNIQUE)"))

    def insert(v):
        return lambda conn: conn.execute("INSERT INTO t VALUES (?)", (v,)).rowcount

    results = await asyncio.gather(*(db.transaction(insert(v)) for v in [*range(50), 7]), return_exceptions=True)
    assert results[:50] == [1] * 50
    assert isinstance(results[50], Exception) and "UNIQUE" in str(results[50])  # only the duplicate failed
    assert await db.run(lambda conn: conn.execute("SELECT COUNT(*) FROM t").fetchone()[0]) == 50
    assert db.transactions == 51 and db.commits < 51  # fewer fsyncs than transactions
    await db.close()


async def test_a_batch_of_pure_transactions_runs_without_savepoints_and_a_failure_rolls_back_alone(tmp_path):
    db = SqliteDatabase(tmp_path / "p.db")
    await db.run(lambda conn: conn.execute("CREATE TABLE t (v INTEGER)"))
    statements: list[str] = []
    await db.run(lambda conn: conn.set_trace_callback(statements.append))
    gate = threading.Event()
    held = db.run(lambda conn: gate.wait(10))  # the database thread is busy: what follows is one batch

    def insert(v, fail=False):
        def fn(conn):
            conn.execute("INSERT INTO t VALUES (?)", (v,))  # written, then the failure: rolled back
            if fail:
                raise ValueError(f"refused {v}")
            return v
        return fn

    clean = [db.transaction(insert(v), pure=True) for v in range(3)]
    gate.set()
    await held
    assert await asyncio.gather(*clean) == [0, 1, 2]
    assert not any(s.startswith("SAVEPOINT") for s in statements)  # three pure ones: no savepoints

    gate.clear()
    held = db.run(lambda conn: gate.wait(10))
    mixed = [db.transaction(insert(v, fail=v == 4), pure=True) for v in (3, 4, 5)]
    gate.set()
    await held
    results = await asyncio.gather(*mixed, return_exceptions=True)
    assert results[0] == 3 and results[2] == 5 and isinstance(results[1], ValueError)
    assert any(s.startswith("SAVEPOINT") for s in statements)  # run again, each in its savepoint
    rows = await db.run(lambda conn: [r[0] for r in conn.execute("SELECT v FROM t ORDER BY v")])
    assert rows == [0, 1, 2, 3, 5]  # the failed one's insert is gone, the others are committed once
    await db.close()


async def test_charges_made_together_share_one_transaction_and_each_lease_pays_only_what_it_holds(tmp_path):
    clock = Clock()
    db = SqliteDatabase(tmp_path / "c.db")
    ledger = SqliteLedger(db, clock=clock)
    await ledger.open()
    other = Account(ACCOUNT.chain_id, ACCOUNT.contract, ACCOUNT.token_id, "0x" + "ab" * 20)
    roomy = await ledger.reserve(ACCOUNT, "elvis", 10, 100, 0.0, "r1", 60.0)
    short = await ledger.reserve(other, "elvis", 2, 100, 0.0, "r2", 60.0)
    dying = await ledger.reserve(ACCOUNT, "elvis", 5, 100, 0.0, "r3", 1.0)
    clock.now += 2.0  # `dying` expired
    statements: list[str] = []
    await db.run(lambda conn: conn.set_trace_callback(statements.append))
    gate = threading.Event()
    held = db.run(lambda conn: gate.wait(10))  # the database thread is busy: the charges below wait together
    calls = [(roomy, 3), (short, 1), (roomy, 2), (short, 1), (short, 1), (dying, 1)]
    # Each call joins the open batch when it is made: all six are one batch.
    charging = [ledger.charge_part(lease, n, f"c{i}", "elvis", 100, 0.0) for i, (lease, n) in enumerate(calls)]
    gate.set()
    await held
    results = await asyncio.gather(*charging, return_exceptions=True)
    assert [type(r).__name__ for r in results] == ["int", "int", "int", "int", "ReservationExpired",
                                                   "ReservationExpired"]
    assert sum(s.startswith("INSERT INTO charges") for s in statements) == 1  # the four charges in one
    (row,) = [r for r in await ledger.usage() if r["subscriber"] == ACCOUNT.subscriber]
    assert (row["calls"], row["charged"]) == (2, 5)
    (row,) = [r for r in await ledger.usage() if r["subscriber"] == other.subscriber]
    assert (row["calls"], row["charged"]) == (2, 2)  # the third call did not fit in the 2 held
    # Remaining, as `available` says after the batch: 100 - 5 charged - 5 still held by `roomy`.
    assert results[2] == await ledger.available(ACCOUNT, 100, 0.0) == 90
    await db.close()


async def test_migration_to_v2_carries_unsettled_totals_over(tmp_path):
    db = SqliteDatabase(tmp_path / "old.db")
    await db.migrate("ledger", MIGRATIONS[:1])  # a v1 ledger with two unsettled charges
    await db.run(lambda conn: conn.executemany(
        "INSERT INTO charges (reservation_id, request_id, chain_id, contract, token_id, subscriber, service, amount,"
        " created_at) VALUES (?, 'r', ?, ?, '1', ?, 'elvis', ?, 0)",
        [("a", 31337, ACCOUNT.contract, ACCOUNT.subscriber, 2), ("b", 31337, ACCOUNT.contract, ACCOUNT.subscriber, 1)]))
    ledger = SqliteLedger(db, clock=Clock())
    await ledger.open()
    with pytest.raises(InsufficientCredits) as short:
        await reserve(ledger, amount=3)
    assert short.value.available == 2  # 5 on chain - 3 charged before the upgrade
    await db.close()
