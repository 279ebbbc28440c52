"""The auth state (`gateway.auth.state`) on PostgreSQL, shared by replicas on several machines.

Same tables and rules as on SQLite, plus: each revocation is announced with `NOTIFY` in the
transaction that records it, so every replica that `watch`es (one LISTEN connection per process)
refreshes its list at once instead of at its next `tokens.revocation_refresh`. The periodic refresh
stays the bound: a replica whose LISTEN connection is down (it reconnects every few seconds) still
sees the revocation within the refresh interval. Revocation times are the database's clock.
"""

from __future__ import annotations

import asyncio
import contextlib
import secrets
from typing import Callable

import asyncpg
import structlog

from gateway.auth.state import AUTH_COMPONENT, Revocation
from gateway.ledger.postgres_database import UNREACHABLE, Connection, PostgresDatabase, rowcount

log = structlog.get_logger("gateway.revocations")

CHANNEL = "gateway_revocations"
RELISTEN_EVERY = 3.0  # seconds between attempts to get the LISTEN connection back
DB_EPOCH = "EXTRACT(EPOCH FROM clock_timestamp())::float8"

MIGRATIONS = [
    """
    CREATE TABLE auth_secrets (name TEXT PRIMARY KEY, value BYTEA NOT NULL);
    CREATE TABLE auth_used_nonces (
        nonce TEXT PRIMARY KEY, expires_at DOUBLE PRECISION NOT NULL, used_at DOUBLE PRECISION NOT NULL,
        subscriber TEXT NOT NULL
    );
    CREATE INDEX auth_used_nonces_expiry ON auth_used_nonces (expires_at);
    CREATE TABLE auth_revocations (
        id BIGSERIAL PRIMARY KEY,
        jti TEXT,
        subscriber TEXT,
        revoked_at DOUBLE PRECISION NOT NULL,
        CHECK ((jti IS NULL) <> (subscriber IS NULL))
    )
    """,
]


class PostgresAuthState:
    def __init__(self, db: PostgresDatabase) -> None:
        self.db = db
        self._listener: asyncio.Task | None = None
        self._on_revoked: Callable[[], None] = lambda: None

    async def open(self) -> bytes:
        await self.db.migrate(AUTH_COMPONENT, MIGRATIONS)

        async def secret(conn: Connection) -> bytes:
            await conn.execute("INSERT INTO auth_secrets (name, value) VALUES ('nonce_hmac', $1)"
                               " ON CONFLICT (name) DO NOTHING", secrets.token_bytes(32))
            return bytes(await conn.fetchval("SELECT value FROM auth_secrets WHERE name = 'nonce_hmac'"))

        return await self.db.transaction(secret)

    async def spend_nonce(self, nonce: str, expires_at: float, subscriber: str, now: float) -> bool:
        async def spend(conn: Connection) -> bool:
            # Why prune here: spent nonces past their expiry are refused by the nonce check anyway.
            await conn.execute("DELETE FROM auth_used_nonces WHERE expires_at < $1", now)
            # Why ON CONFLICT: two replicas spending one nonce at once: the primary key picks one.
            return rowcount(await conn.execute(
                "INSERT INTO auth_used_nonces (nonce, expires_at, used_at, subscriber) VALUES ($1, $2, $3, $4)"
                " ON CONFLICT (nonce) DO NOTHING", nonce, expires_at, now, subscriber)) == 1

        return await self.db.transaction(spend)

    async def revoke(self, jti: str | None, subscriber: str | None, at: float | None) -> float:
        await self.db.migrate(AUTH_COMPONENT, MIGRATIONS)  # a CLI command may come first

        async def revoke(conn: Connection) -> float:
            when = await conn.fetchval(
                f"INSERT INTO auth_revocations (jti, subscriber, revoked_at) VALUES ($1, $2, COALESCE($3, {DB_EPOCH}))"
                " RETURNING revoked_at", jti, subscriber, at)
            await conn.execute(f"NOTIFY {CHANNEL}")  # delivered to the listeners when this commits
            return when

        return await self.db.transaction(revoke)

    async def revocations_after(self, last_id: int) -> list[Revocation]:
        found = await self.db.run(lambda conn: conn.fetch(
            "SELECT id, jti, subscriber, revoked_at FROM auth_revocations WHERE id > $1 ORDER BY id", last_id))
        return [(r["id"], r["jti"], r["subscriber"], r["revoked_at"]) for r in found]

    def watch(self, on_revoked: Callable[[], None]) -> None:
        """The latest caller is told (a reload replaces the revocation list; one LISTEN per process)."""
        self._on_revoked = on_revoked
        if self._listener is None:
            self._listener = asyncio.get_running_loop().create_task(self._listen())

    async def _listen(self) -> None:
        """Keep one LISTEN connection; after losing it, mark the list stale (a NOTIFY may have been
        missed) and try again every RELISTEN_EVERY seconds."""
        while True:
            conn: asyncpg.Connection | None = None
            try:
                conn = await asyncpg.connect(self.db.url, timeout=self.db.timeout, **self.db.connect_options())
                lost = asyncio.get_running_loop().create_future()
                conn.add_termination_listener(lambda _c: lost.done() or lost.set_result(None))
                await conn.add_listener(CHANNEL, lambda *_: self._on_revoked())
                self._on_revoked()  # anything recorded while we were not listening
                await lost
            except UNREACHABLE as exc:
                log.warning("revocation_listener_down", error=type(exc).__name__, retry_in=RELISTEN_EVERY)
            finally:
                if conn is not None and not conn.is_closed():
                    with contextlib.suppress(Exception):
                        await conn.close(timeout=1.0)
            self._on_revoked()
            await asyncio.sleep(RELISTEN_EVERY)  # reconnecting to a database that is down, not a busy loop

    async def close(self) -> None:
        if self._listener is not None:
            self._listener.cancel()
            await asyncio.gather(self._listener, return_exceptions=True)
            self._listener = None
