"""Exactly one settler among the gateways that share a ledger.

On SQLite (one machine) the question is settled before this: `gateway serve` holds an exclusive
flock on the ledger (`gateway.process.ledger_lock`), so its slot-0 worker is the one settler and
`SoleSettler` always says yes.

On PostgreSQL, every replica's slot-0 worker asks `PostgresSettlerLease.held()` at the start of
each settlement cycle and before each burn it records. The lease is a session-level advisory lock
on a connection of its own: the server releases it the moment that session ends, whatever ended
it (kill -9, a crash, a network cut), so another replica takes it on its next cycle, within one
`settle_every`. A held lease is confirmed with a round trip on its connection: a session the
server closed (and so a lock it released) is noticed before the next burn is recorded.

The lease is for order, not for safety: even two settlers at once could not burn a charge twice,
because recording a settlement claims its charges atomically (`record_settlement` refuses charges
another settlement holds) and the new settler first reconciles what the old one left recorded or
sent, by its signed transaction and nonce (`gateway.credits.settlement`).
"""

from __future__ import annotations

import contextlib
from typing import Protocol

import asyncpg
import structlog

from gateway.ledger.postgres_database import UNREACHABLE, PostgresDatabase

log = structlog.get_logger("gateway.settlement")

LEASE_KEY = 0x67772D736574746C  # pg_advisory_lock key ("gw-settl"), one per database


class SettlerLease(Protocol):
    async def held(self) -> bool:
        """True if this process is (now) the one settler; takes the lease when it is free."""

    async def release(self) -> None: ...


class SoleSettler:
    """One gateway per ledger (SQLite): the process lock already made this process the settler."""

    async def held(self) -> bool:
        return True

    async def release(self) -> None:
        pass


class PostgresSettlerLease:
    def __init__(self, db: PostgresDatabase) -> None:
        self.db = db
        self._conn: asyncpg.Connection | None = None

    async def held(self) -> bool:
        if self._conn is not None:
            try:
                await self._conn.fetchval("SELECT 1", timeout=self.db.timeout)
                return True  # the session lives, so does its lock
            except (*UNREACHABLE, asyncpg.PostgresError) as exc:
                log.warning("settler_lease_lost", error=type(exc).__name__)
                await self._drop()
        try:
            conn = await asyncpg.connect(self.db.url, timeout=self.db.timeout, **self.db.connect_options())
        except UNREACHABLE:
            return False  # no database, no settling (nothing could be recorded anyway)
        try:
            got = await conn.fetchval("SELECT pg_try_advisory_lock($1)", LEASE_KEY, timeout=self.db.timeout)
        except (*UNREACHABLE, asyncpg.PostgresError):
            got = False
        if not got:  # another replica settles
            with contextlib.suppress(Exception):
                await conn.close(timeout=1.0)
            return False
        self._conn = conn
        log.info("settler_lease_taken")
        return True

    async def _drop(self) -> None:
        conn, self._conn = self._conn, None
        if conn is not None:
            with contextlib.suppress(Exception):
                await conn.close(timeout=1.0)

    async def release(self) -> None:
        """Give the lease up (shutdown): closing the session releases the lock at once."""
        await self._drop()


def settler_lease(db) -> SettlerLease:
    """The lease for the ledger kept in `db` (a `gateway.ledger.backends.Database`)."""
    return PostgresSettlerLease(db) if isinstance(db, PostgresDatabase) else SoleSettler()
