"""The authorization server's durable state, on the gateway's database (either backend).

The "oauth" component holds:
- `oauth_clients`: clients registered by RFC 7591 dynamic registration (public clients: no secret);
- `oauth_codes`: authorization codes by their SHA-256 (never the code itself), single use: a code
  presented a second time revokes the grant (family) it started (RFC 6749 §4.1.2);
- `oauth_families`: one per grant (subscriber + client + service + resource), revoked as a whole;
- `oauth_refresh_tokens`: refresh tokens by their SHA-256, rotated on every use; a spent one
  presented again revokes its family (OAuth 2.1 §4.3.1: the thief and the client cannot both go on).

Everything a decision needs is read and written in one transaction, so two workers (or replicas)
redeeming the same code or refresh token at once get one winner. `oauth_store(db)` picks the
implementation for the database: `SqliteOAuthStore` here, `PostgresOAuthStore` (`store_postgres`).
"""

from __future__ import annotations

import json
import sqlite3
from dataclasses import dataclass
from typing import Any, Protocol

from gateway.ledger.database import SqliteDatabase

OAUTH_COMPONENT = "oauth"
CODE_KEPT = 600.0  # seconds a spent or expired code is kept after its expiry, to recognise a replay
UNUSED_CLIENT_KEPT = 86400.0  # a registered client that never got a code is removed after this long
PRUNE_BATCH = 64  # unused clients removed per registration: more than the one it adds, bounded work
SQLITE_MIGRATIONS = [
    """
    CREATE TABLE oauth_clients (client_id TEXT PRIMARY KEY, metadata TEXT NOT NULL, created_at REAL NOT NULL);
    CREATE TABLE oauth_codes (
        code_hash TEXT PRIMARY KEY, family TEXT NOT NULL, grant_json TEXT NOT NULL,
        expires_at REAL NOT NULL, used_at REAL
    );
    CREATE INDEX oauth_codes_expiry ON oauth_codes (expires_at);
    CREATE TABLE oauth_families (
        family TEXT PRIMARY KEY, grant_json TEXT NOT NULL, created_at REAL NOT NULL, revoked_at REAL
    );
    CREATE TABLE oauth_refresh_tokens (
        token_hash TEXT PRIMARY KEY, family TEXT NOT NULL REFERENCES oauth_families (family),
        access_jti TEXT NOT NULL, expires_at REAL NOT NULL, used_at REAL
    );
    CREATE INDEX oauth_refresh_tokens_family ON oauth_refresh_tokens (family)
    """,
    # v2: when a client last got a code (NULL: never), so registrations nobody completed are pruned.
    """
    ALTER TABLE oauth_clients ADD COLUMN used_at REAL;
    CREATE INDEX oauth_clients_unused ON oauth_clients (created_at) WHERE used_at IS NULL
    """,
]


@dataclass(frozen=True)
class RefreshRecord:
    """One refresh token as stored: its grant, and every access token jti its family was given."""

    family: str
    grant: dict[str, Any]
    family_created_at: float
    family_revoked: bool
    expires_at: float
    used: bool
    access_jtis: tuple[str, ...]


class OAuthStore(Protocol):
    async def open(self) -> None: ...
    async def add_client(self, client_id: str, metadata: dict[str, Any], now: float) -> None: ...
    async def client(self, client_id: str) -> dict[str, Any] | None: ...
    async def add_code(self, code_hash: str, family: str, grant: dict[str, Any], expires_at: float,
                       now: float) -> None: ...

    async def take_code(self, code_hash: str, now: float) -> tuple[str, str | None, dict[str, Any] | None]:
        """Spend a code: ("ok", family, grant); ("expired" | "unknown", ...); ("reused", family, None)
        after revoking the family a first redemption started."""

    async def start_family(self, family: str, grant: dict[str, Any], token_hash: str, access_jti: str,
                           expires_at: float, now: float) -> None: ...
    async def refresh_token(self, token_hash: str) -> RefreshRecord | None: ...

    async def rotate(self, token_hash: str, new_hash: str, access_jti: str, expires_at: float, now: float) -> str:
        """Spend a refresh token for a new one in its family: "ok", or "unknown", "expired",
        "revoked", "reused" (the family is revoked)."""

    async def revoke_family(self, family: str, now: float) -> None: ...


def oauth_store(db: Any) -> OAuthStore:
    """The OAuth state kept in `db` (a `gateway.ledger.backends.Database`)."""
    if isinstance(db, SqliteDatabase):
        return SqliteOAuthStore(db)
    from gateway.oauth.store_postgres import PostgresOAuthStore  # asyncpg only where it is used
    return PostgresOAuthStore(db)


class SqliteOAuthStore:
    def __init__(self, db: SqliteDatabase) -> None:
        self.db = db

    async def open(self) -> None:
        await self.db.migrate(OAUTH_COMPONENT, SQLITE_MIGRATIONS)

    async def add_client(self, client_id: str, metadata: dict[str, Any], now: float) -> None:
        def add(conn: sqlite3.Connection) -> None:
            # Why prune: registration is open to anyone (RFC 7591); a client that never got a code
            # within a day is of no use to anyone, and keeping it would let registrations fill the
            # database. Clients that did get one were authorized by a wallet signature: they stay.
            conn.execute("DELETE FROM oauth_clients WHERE rowid IN (SELECT rowid FROM oauth_clients"
                         " WHERE used_at IS NULL AND created_at < ? ORDER BY created_at LIMIT ?)",
                         (now - UNUSED_CLIENT_KEPT, PRUNE_BATCH))
            conn.execute("INSERT INTO oauth_clients (client_id, metadata, created_at) VALUES (?, ?, ?)",
                         (client_id, json.dumps(metadata), now))

        await self.db.transaction(add)

    async def client(self, client_id: str) -> dict[str, Any] | None:
        row = await self.db.run(lambda conn: conn.execute(
            "SELECT metadata FROM oauth_clients WHERE client_id = ?", (client_id,)).fetchone())
        return json.loads(row[0]) if row else None

    async def add_code(self, code_hash: str, family: str, grant: dict[str, Any], expires_at: float,
                       now: float) -> None:
        def add(conn: sqlite3.Connection) -> None:
            # Why prune here: a code long past its expiry is refused as unknown all the same.
            conn.execute("DELETE FROM oauth_codes WHERE expires_at < ?", (now - CODE_KEPT,))
            conn.execute("INSERT INTO oauth_codes (code_hash, family, grant_json, expires_at) VALUES (?, ?, ?, ?)",
                         (code_hash, family, json.dumps(grant), expires_at))
            conn.execute("UPDATE oauth_clients SET used_at = ? WHERE client_id = ?", (now, grant["client_id"]))

        await self.db.transaction(add)

    async def take_code(self, code_hash: str, now: float) -> tuple[str, str | None, dict[str, Any] | None]:
        def take(conn: sqlite3.Connection) -> tuple[str, str | None, dict[str, Any] | None]:
            row = conn.execute("SELECT family, grant_json, expires_at, used_at FROM oauth_codes WHERE code_hash = ?",
                               (code_hash,)).fetchone()
            if row is None:
                return "unknown", None, None
            family, grant, expires_at, used_at = row
            if used_at is not None:
                # Why revoke: a code seen twice was stolen or replayed; what it bought is withdrawn.
                _revoke(conn, family, now)
                return "reused", family, None
            conn.execute("UPDATE oauth_codes SET used_at = ? WHERE code_hash = ?", (now, code_hash))
            if now >= expires_at:
                return "expired", family, None
            return "ok", family, json.loads(grant)

        return await self.db.transaction(take)

    async def start_family(self, family: str, grant: dict[str, Any], token_hash: str, access_jti: str,
                           expires_at: float, now: float) -> None:
        def start(conn: sqlite3.Connection) -> None:
            conn.execute("INSERT INTO oauth_families (family, grant_json, created_at) VALUES (?, ?, ?)",
                         (family, json.dumps(grant), now))
            conn.execute("INSERT INTO oauth_refresh_tokens (token_hash, family, access_jti, expires_at)"
                         " VALUES (?, ?, ?, ?)", (token_hash, family, access_jti, expires_at))

        await self.db.transaction(start)

    async def refresh_token(self, token_hash: str) -> RefreshRecord | None:
        def read(conn: sqlite3.Connection) -> RefreshRecord | None:
            row = conn.execute(
                "SELECT t.family, f.grant_json, f.created_at, f.revoked_at, t.expires_at, t.used_at"
                " FROM oauth_refresh_tokens t JOIN oauth_families f ON f.family = t.family WHERE t.token_hash = ?",
                (token_hash,)).fetchone()
            if row is None:
                return None
            jtis = conn.execute("SELECT access_jti FROM oauth_refresh_tokens WHERE family = ?", (row[0],)).fetchall()
            return RefreshRecord(row[0], json.loads(row[1]), row[2], row[3] is not None, row[4], row[5] is not None,
                                 tuple(j for (j,) in jtis))

        return await self.db.run(read)

    async def rotate(self, token_hash: str, new_hash: str, access_jti: str, expires_at: float, now: float) -> str:
        def rotate(conn: sqlite3.Connection) -> str:
            row = conn.execute(
                "SELECT t.family, f.revoked_at, t.expires_at, t.used_at FROM oauth_refresh_tokens t"
                " JOIN oauth_families f ON f.family = t.family WHERE t.token_hash = ?", (token_hash,)).fetchone()
            if row is None:
                return "unknown"
            family, revoked_at, old_expiry, used_at = row
            if revoked_at is not None:
                return "revoked"
            if used_at is not None:
                _revoke(conn, family, now)  # Why: a spent refresh token again is a stolen copy in use
                return "reused"
            if now >= old_expiry:
                return "expired"
            conn.execute("UPDATE oauth_refresh_tokens SET used_at = ? WHERE token_hash = ?", (now, token_hash))
            conn.execute("INSERT INTO oauth_refresh_tokens (token_hash, family, access_jti, expires_at)"
                         " VALUES (?, ?, ?, ?)", (new_hash, family, access_jti, expires_at))
            return "ok"

        return await self.db.transaction(rotate)

    async def revoke_family(self, family: str, now: float) -> None:
        await self.db.transaction(lambda conn: _revoke(conn, family, now))


def _revoke(conn: sqlite3.Connection, family: str, now: float) -> None:
    conn.execute("UPDATE oauth_families SET revoked_at = ? WHERE family = ? AND revoked_at IS NULL", (now, family))
