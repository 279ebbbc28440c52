"""Token revocation, and the durable sign-in state it shares a schema with.

The "auth" component of the gateway's SQLite database (`gateway.ledger.database`) holds:
- `auth_revocations`: one row per `gateway token revoke` (a jti, or a subscriber);
- `auth_used_nonces`: sign-in nonces already spent, kept until they expire (`gateway.auth.signin`);
- `auth_secrets`: the random key that makes sign-in nonces unforgeable, shared by every worker
  and replica on the same database.

`RevocationList` is each process's view of the revocations. It is refreshed from the database
at most every `tokens.revocation_refresh` seconds (incrementally: only rows added since the last
read) and consulted on every protected call, verified-token cache hits included. So a revocation
takes effect everywhere within `revocation_refresh` (default 5 s) of being recorded. If the
database cannot be read when a refresh is due, calls are refused 503 (fail closed).

Revoking a subscriber revokes every token issued to them up to that moment (`iat` at or before
the revocation; a token without `iat` counts as older). A later sign-in proves the wallet again
and gets a new, valid token.
"""

from __future__ import annotations

import asyncio
import math
import sqlite3
import time
from typing import Callable

import structlog
from eth_utils import to_checksum_address

from gateway.config.model import GatewayConfig
from gateway.inflight import InFlight
from gateway.ledger.database import SqliteDatabase, sqlite_path

log = structlog.get_logger("gateway.revocations")  # JSON lines like every other log (ops.observability)

AUTH_COMPONENT = "auth"
AUTH_MIGRATIONS = [
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


async def migrate_auth(db: SqliteDatabase) -> None:
    await db.migrate(AUTH_COMPONENT, AUTH_MIGRATIONS)


async def revoke(db: SqliteDatabase, *, jti: str | None = None, subscriber: str | None = None,
                 now: float | None = None) -> float:
    """Record a revocation (exactly one of jti / subscriber); returns its time."""
    if (jti is None) == (subscriber is None):
        raise ValueError("revoke exactly one of: a jti, a subscriber")
    if jti is not None and not jti:
        raise ValueError("the jti must not be empty")
    who = to_checksum_address(subscriber) if subscriber is not None else None
    at = time.time() if now is None else now
    await migrate_auth(db)
    await db.transaction(lambda conn: conn.execute(
        "INSERT INTO auth_revocations (jti, subscriber, revoked_at) VALUES (?, ?, ?)", (jti, who, at)))
    return at


class RevocationsUnavailable(Exception):
    """The revocation list cannot be read: protected calls are refused (fail closed)."""

    def __init__(self) -> None:
        super().__init__("the token revocation list cannot be read; try again later")


class RevocationList:
    """One process's copy of the revocations, refreshed at most every `refresh` seconds."""

    def __init__(self, db: SqliteDatabase, refresh: float, clock: Callable[[], float] = time.monotonic) -> None:
        self._db, self._refresh, self._clock = db, max(0.0, refresh), clock
        self._jtis: set[str] = set()
        self._subscribers: dict[str, float] = {}  # lower-case address -> latest revocation time
        self._last_id = 0
        self._loaded_at = -math.inf  # clock() when the last successful read began
        self._inflight: InFlight[None, None] = InFlight()

    async def is_revoked(self, subscriber: str, token_id: str | None, issued_at: float | None) -> bool:
        if self._clock() - self._loaded_at >= self._refresh:
            await self._refresh_shared()
        if token_id is not None and token_id in self._jtis:
            return True
        revoked_at = self._subscribers.get(subscriber.lower())
        # Why "<=" and a missing iat counts as old: when in doubt, the token predates the revocation.
        return revoked_at is not None and (issued_at is None or issued_at <= revoked_at)

    async def _refresh_shared(self) -> None:
        # Why one shared read: a burst of calls when the list goes stale costs one query; a
        # caller that goes away does not cancel the read the others wait for.
        await self._inflight.run(None, self._load)

    async def _load(self) -> None:
        started = self._clock()
        try:
            rows = await self._db.run(lambda conn: conn.execute(
                "SELECT id, jti, subscriber, revoked_at FROM auth_revocations WHERE id > ? ORDER BY id",
                (self._last_id,)).fetchall())
        except sqlite3.Error as exc:
            # Why fail closed: a gateway that cannot see revocations must not honour revoked tokens.
            log.error("revocations_unreadable", error=str(exc))
            raise RevocationsUnavailable() from exc
        for row_id, jti, subscriber, revoked_at in rows:
            if jti is not None:
                self._jtis.add(jti)
            else:
                key = subscriber.lower()
                self._subscribers[key] = max(revoked_at, self._subscribers.get(key, -math.inf))
            self._last_id = row_id
        self._loaded_at = started


def revoke_command(config: GatewayConfig, *, jti: str | None, subscriber: str | None) -> str:
    """`gateway token revoke`: record the revocation in the ledger's database; what to print."""

    async def run() -> float:
        db = SqliteDatabase(sqlite_path(config.metering.ledger))
        try:
            return await revoke(db, jti=jti, subscriber=subscriber)
        finally:
            await db.close()

    asyncio.run(run())
    what = f"token {jti}" if jti is not None else f"every token issued to {subscriber} until now"
    return (f"revoked {what}; running gateways on {config.metering.ledger} refuse it "
            f"within {config.tokens.revocation_refresh:g}s")
