"""The durable state of sign-in and revocation, on the gateway's database (either backend).

The "auth" component holds:
- `auth_secrets`: the random key that makes sign-in nonces unforgeable, shared by every worker
  and replica on the same database;
- `auth_used_nonces`: sign-in nonces already spent, kept until they expire (`gateway.auth.signin`);
- `auth_revocations`: one row per `gateway token revoke` (a jti, or a subscriber), read
  incrementally by id (`gateway.auth.revocation`).

`AuthState` is the small interface both use; `auth_state(db)` picks the implementation for the
database: `SqliteAuthState` here, `PostgresAuthState` (`state_postgres`) for replicas, which also
announces each revocation to every replica at once (LISTEN/NOTIFY). A database that cannot be
read raises `LedgerUnavailable`, whichever the backend.
"""

from __future__ import annotations

import secrets
import sqlite3
import time
from typing import Any, Callable, Protocol

from gateway.ledger import LedgerUnavailable
from gateway.ledger.database import SqliteDatabase

AUTH_COMPONENT = "auth"
SQLITE_MIGRATIONS = [
    """
    CREATE TABLE auth_secrets (name TEXT PRIMARY KEY, value BLOB NOT NULL);
    CREATE TABLE auth_used_nonces (
        nonce TEXT PRIMARY KEY, expires_at REAL NOT NULL, used_at REAL NOT NULL, subscriber TEXT NOT NULL
    );
    CREATE INDEX auth_used_nonces_expiry ON auth_used_nonces (expires_at);
    CREATE TABLE auth_revocations (
        id INTEGER PRIMARY KEY AUTOINCREMENT,
        jti TEXT,
        subscriber TEXT,
        revoked_at REAL NOT NULL,
        CHECK ((jti IS NULL) <> (subscriber IS NULL))
    )
    """,
]

Revocation = tuple[int, "str | None", "str | None", float]  # (id, jti, subscriber, revoked_at epoch seconds)


class AuthState(Protocol):
    async def open(self) -> bytes:
        """Create the schema if needed; return the nonce secret (made by the first process to ask)."""

    async def spend_nonce(self, nonce: str, expires_at: float, subscriber: str, now: float) -> bool:
        """Record the nonce as spent; False if it already was (atomically: one winner)."""

    async def revoke(self, jti: str | None, subscriber: str | None, at: float | None) -> float:
        """Record a revocation (`at` None: now, on the state's own clock); return its time."""

    async def revocations_after(self, last_id: int) -> list[Revocation]:
        """Revocations recorded after `last_id`, oldest first."""

    def watch(self, on_revoked: Callable[[], None]) -> None:
        """Call `on_revoked` as soon as any process records a revocation (where the backend can)."""

    async def close(self) -> None: ...


def auth_state(db: Any) -> AuthState:
    """The auth state kept in `db` (a `gateway.ledger.backends.Database`)."""
    if isinstance(db, SqliteDatabase):
        return SqliteAuthState(db)
    from gateway.auth.state_postgres import PostgresAuthState  # asyncpg only where it is used
    return PostgresAuthState(db)


class SqliteAuthState:
    """One machine: revocations reach the other workers by their periodic refresh."""

    def __init__(self, db: SqliteDatabase) -> None:
        self.db = db

    async def open(self) -> bytes:
        await self.db.migrate(AUTH_COMPONENT, SQLITE_MIGRATIONS)

        def secret(conn: sqlite3.Connection) -> bytes:
            conn.execute("INSERT OR IGNORE INTO auth_secrets (name, value) VALUES ('nonce_hmac', ?)",
                         (secrets.token_bytes(32),))
            return bytes(conn.execute("SELECT value FROM auth_secrets WHERE name = 'nonce_hmac'").fetchone()[0])

        return await self.db.transaction(secret)

    async def spend_nonce(self, nonce: str, expires_at: float, subscriber: str, now: float) -> bool:
        def spend(conn: sqlite3.Connection) -> bool:
            # Why prune here: spent nonces past their expiry are refused by the nonce check anyway.
            conn.execute("DELETE FROM auth_used_nonces WHERE expires_at < ?", (now,))
            cursor = conn.execute(
                "INSERT OR IGNORE INTO auth_used_nonces (nonce, expires_at, used_at, subscriber) VALUES (?, ?, ?, ?)",
                (nonce, expires_at, now, subscriber))
            return cursor.rowcount == 1

        return await self.db.transaction(spend)

    async def revoke(self, jti: str | None, subscriber: str | None, at: float | None) -> float:
        when = time.time() if at is None else at
        await self.db.migrate(AUTH_COMPONENT, SQLITE_MIGRATIONS)  # a CLI command may come first
        await self.db.transaction(lambda conn: conn.execute(
            "INSERT INTO auth_revocations (jti, subscriber, revoked_at) VALUES (?, ?, ?)", (jti, subscriber, when)))
        return when

    async def revocations_after(self, last_id: int) -> list[Revocation]:
        try:
            found = await self.db.run(lambda conn: conn.execute(
                "SELECT id, jti, subscriber, revoked_at FROM auth_revocations WHERE id > ? ORDER BY id",
                (last_id,)).fetchall())
        except sqlite3.Error as exc:
            raise LedgerUnavailable(str(exc)) from exc
        return [tuple(row) for row in found]

    def watch(self, on_revoked: Callable[[], None]) -> None:
        """Nothing to listen to in a file: the refresh interval is the bound."""

    async def close(self) -> None:
        """The database is shared and closed by its owner."""
