"""Plan balances shared by the worker processes of one gateway, through the ledger database.

Each worker has its own in-memory plan cache; without this, N workers read a new
subscriber's balance from the chain N times. On a local miss a worker first
looks here: a fresh balance read by another worker is used as is; if another
worker is reading it right now, this one waits for that answer (briefly polling
the table, bounded by the RPC lease) instead of asking the chain again.
"""

from __future__ import annotations

import asyncio
import sqlite3
import time
from typing import Callable, NamedTuple

from gateway.database import SqliteDatabase

MIGRATIONS = [
    """
    CREATE TABLE plan_balances (key TEXT PRIMARY KEY, balance TEXT NOT NULL, read_at REAL NOT NULL);
    CREATE TABLE plan_fetches (key TEXT PRIMARY KEY, claimed_at REAL NOT NULL)
    """,
]
POLL = 0.005  # while another worker reads the chain for the same key


class SharedBalance(NamedTuple):
    amount: int
    read_at: float  # wall clock: when the read of the chain began


_WAIT = object()
_CLAIMED = object()


class SharedBalances:
    def __init__(self, db: SqliteDatabase, lease: float, clock: Callable[[], float] = time.time) -> None:
        self.db, self.lease, self.clock = db, lease, clock

    async def open(self) -> None:
        await self.db.migrate("plan_cache", MIGRATIONS)

    async def acquire(self, key: str, ttl: float, negative_ttl: float) -> SharedBalance | None:
        """A fresh balance another worker read; or None: the caller now holds the claim and must
        read the chain and `publish` (also when it fails, to let the others try)."""
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

        await self.db.transaction(publish, durable=False)
