"""Plan balances shared by the worker processes of one gateway, through the ledger database.

`shared_balances(db, ...)` picks the implementation for the database: `SharedBalances` here (SQLite,
one machine), `PostgresSharedBalances` (`shared_balances_postgres`: every replica's workers).

Each worker has its own in-memory plan cache; without this, N workers read a new
subscriber's balance from the chain N times. On a local miss a worker first
looks here: a fresh balance read by another worker is used as is; if another
worker is reading it right now, this one waits for that answer (briefly polling
the table, bounded by the RPC lease) instead of asking the chain again.

The table is bounded: a row is only ever used while it is fresh (the plan cache's `ttl`), so
every `publish` also deletes up to `PRUNE_BATCH` rows older than that (and claims older than
the lease). Each publish adds at most one row and a sign-in by a new address is what adds one,
so the table holds about (new addresses per second) x ttl rows, never the history of every
address that ever signed in.
"""

from __future__ import annotations

import asyncio
import sqlite3
import time
from typing import Callable, NamedTuple

from gateway.ledger.database import SqliteDatabase

MIGRATIONS = [
    """
    CREATE TABLE plan_balances (key TEXT PRIMARY KEY, balance TEXT NOT NULL, read_at REAL NOT NULL);
    CREATE TABLE plan_fetches (key TEXT PRIMARY KEY, claimed_at REAL NOT NULL)
    """,
    """
    CREATE INDEX plan_balances_read_at ON plan_balances (read_at);
    CREATE INDEX plan_fetches_claimed_at ON plan_fetches (claimed_at)
    """,
]
POLL = 0.005  # while another worker reads the chain for the same key
PRUNE_BATCH = 64  # expired rows deleted per publish: more than the one it adds, bounded work


class SharedBalance(NamedTuple):
    amount: int
    read_at: float  # wall clock: when the read of the chain began


_WAIT = object()
_CLAIMED = object()


def shared_balances(db, lease: float, clock: Callable[[], float] = time.time):
    """The shared balances kept in `db` (a `gateway.ledger.backends.Database`)."""
    if isinstance(db, SqliteDatabase):
        return SharedBalances(db, lease, clock)
    from gateway.credits.shared_balances_postgres import PostgresSharedBalances
    return PostgresSharedBalances(db, lease, clock)


class SharedBalances:
    """On SQLite. `PostgresSharedBalances` keeps the waiting loop (`acquire`) and replaces the SQL:
    `_check_or_claim` (answering a balance, `_WAIT` or `_CLAIMED`), `publish` and `count`."""

    migrations = MIGRATIONS

    def __init__(self, db, lease: float, clock: Callable[[], float] = time.time) -> None:
        self.db, self.lease, self.clock = db, lease, clock
        self.keep = lease  # how long a row can be of use: the longest ttl `acquire` was asked for

    async def open(self) -> None:
        await self.db.migrate("plan_cache", self.migrations)

    async def acquire(self, key: str, ttl: float, negative_ttl: float) -> SharedBalance | None:
        """A fresh balance another worker read; or None: the caller now holds the claim and must
        read the chain and `publish` (also when it fails, to let the others try)."""
        self.keep = max(self.keep, ttl, negative_ttl)
        deadline = self.clock() + self.lease
        while True:
            found = await self.db.transaction(lambda conn: self._check_or_claim(conn, key, ttl, negative_ttl),
                                              durable=False)
            if found is _CLAIMED:
                return None
            if found is not _WAIT:
                return found
            if self.clock() > deadline:
                return None  # the other reader is stuck: read it ourselves
            await asyncio.sleep(POLL)

    def _check_or_claim(self, conn: sqlite3.Connection, key: str, ttl: float, negative_ttl: float):
        now = self.clock()
        row = conn.execute("SELECT balance, read_at FROM plan_balances WHERE key = ?", (key,)).fetchone()
        if row is not None:
            balance = int(row[0])
            if now - row[1] < (ttl if balance > 0 else negative_ttl):
                return SharedBalance(balance, row[1])
        claim = conn.execute("SELECT claimed_at FROM plan_fetches WHERE key = ?", (key,)).fetchone()
        if claim is not None and now - claim[0] < self.lease:
            return _WAIT
        conn.execute("INSERT OR REPLACE INTO plan_fetches VALUES (?, ?)", (key, now))
        return _CLAIMED

    async def publish(self, key: str, balance: SharedBalance | None) -> None:
        def publish(conn: sqlite3.Connection) -> None:
            if balance is not None:
                conn.execute("INSERT OR REPLACE INTO plan_balances VALUES (?, ?, ?)",
                             (key, str(balance.amount), balance.read_at))
            conn.execute("DELETE FROM plan_fetches WHERE key = ?", (key,))
            self._prune(conn)

        await self.db.transaction(publish, durable=False)

    def _prune(self, conn: sqlite3.Connection) -> None:
        # Why (module doc): rows past any ttl are never read again; without this every address
        # that ever signed in (free to make) stays in the table. A bounded batch on an index
        # keeps each publish cheap; one more second of margin covers clock steps between workers.
        now = self.clock()
        conn.execute("DELETE FROM plan_balances WHERE rowid IN (SELECT rowid FROM plan_balances "
                     "WHERE read_at < ? ORDER BY read_at LIMIT ?)", (now - self.keep - 1.0, PRUNE_BATCH))
        conn.execute("DELETE FROM plan_fetches WHERE rowid IN (SELECT rowid FROM plan_fetches "
                     "WHERE claimed_at < ? ORDER BY claimed_at LIMIT ?)", (now - self.lease - 1.0, PRUNE_BATCH))

    async def count(self) -> int:
        """Rows in the shared balances table (for tests and operators)."""
        return await self.db.transaction(
            lambda conn: conn.execute("SELECT COUNT(*) FROM plan_balances").fetchone()[0], durable=False)
