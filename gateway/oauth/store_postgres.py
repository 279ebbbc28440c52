"""The authorization server's state (`gateway.oauth.store`) on PostgreSQL, shared by replicas.

Same tables and rules as on SQLite. A code or refresh token is redeemed under `SELECT ... FOR
UPDATE` of its row, so two replicas presenting the same one at once get one winner and the other
sees it spent (and revokes the family, as a replay must).
"""

from __future__ import annotations

import json
from typing import Any

from gateway.ledger.postgres_database import Connection, PostgresDatabase
from gateway.oauth.store import CODE_KEPT, OAUTH_COMPONENT, PRUNE_BATCH, UNUSED_CLIENT_KEPT, RefreshRecord

MIGRATIONS = [
    """
    CREATE TABLE oauth_clients (client_id TEXT PRIMARY KEY, metadata TEXT NOT NULL,
                                created_at DOUBLE PRECISION NOT NULL);
    CREATE TABLE oauth_codes (
        code_hash TEXT PRIMARY KEY, family TEXT NOT NULL, grant_json TEXT NOT NULL,
        expires_at DOUBLE PRECISION NOT NULL, used_at DOUBLE PRECISION
    );
    CREATE INDEX oauth_codes_expiry ON oauth_codes (expires_at);
    CREATE TABLE oauth_families (
        family TEXT PRIMARY KEY, grant_json TEXT NOT NULL, created_at DOUBLE PRECISION NOT NULL,
        revoked_at DOUBLE PRECISION
    );
    CREATE TABLE oauth_refresh_tokens (
        token_hash TEXT PRIMARY KEY, family TEXT NOT NULL REFERENCES oauth_families (family),
        access_jti TEXT NOT NULL, expires_at DOUBLE PRECISION NOT NULL, used_at DOUBLE PRECISION
    );
    CREATE INDEX oauth_refresh_tokens_family ON oauth_refresh_tokens (family)
    """,
    # v2: when a client last got a code (NULL: never), so registrations nobody completed are pruned.
    """
    ALTER TABLE oauth_clients ADD COLUMN used_at DOUBLE PRECISION;
    CREATE INDEX oauth_clients_unused ON oauth_clients (created_at) WHERE used_at IS NULL
    """,
]


class PostgresOAuthStore:
    def __init__(self, db: PostgresDatabase) -> None:
        self.db = db

    async def open(self) -> None:
        await self.db.migrate(OAUTH_COMPONENT, MIGRATIONS)

    async def add_client(self, client_id: str, metadata: dict[str, Any], now: float) -> None:
        async def add(conn: Connection) -> None:
            # Why prune: see the SQLite store (registration is open; unused clients would pile up).
            await conn.execute("DELETE FROM oauth_clients WHERE client_id IN (SELECT client_id FROM oauth_clients"
                               " WHERE used_at IS NULL AND created_at < $1 ORDER BY created_at LIMIT $2"
                               " FOR UPDATE SKIP LOCKED)", now - UNUSED_CLIENT_KEPT, PRUNE_BATCH)
            await conn.execute("INSERT INTO oauth_clients (client_id, metadata, created_at) VALUES ($1, $2, $3)",
                               client_id, json.dumps(metadata), now)

        await self.db.transaction(add)

    async def client(self, client_id: str) -> dict[str, Any] | None:
        found = await self.db.run(lambda conn: conn.fetchval(
            "SELECT metadata FROM oauth_clients WHERE client_id = $1", client_id))
        return json.loads(found) if found is not None else None

    async def add_code(self, code_hash: str, family: str, grant: dict[str, Any], expires_at: float,
                       now: float) -> None:
        async def add(conn: Connection) -> None:
            await conn.execute("DELETE FROM oauth_codes WHERE expires_at < $1", now - CODE_KEPT)
            await conn.execute("INSERT INTO oauth_codes (code_hash, family, grant_json, expires_at)"
                               " VALUES ($1, $2, $3, $4)", code_hash, family, json.dumps(grant), expires_at)
            await conn.execute("UPDATE oauth_clients SET used_at = $1 WHERE client_id = $2", now, grant["client_id"])

        await self.db.transaction(add)

    async def take_code(self, code_hash: str, now: float) -> tuple[str, str | None, dict[str, Any] | None]:
        async def take(conn: Connection) -> tuple[str, str | None, dict[str, Any] | None]:
            row = await conn.fetchrow("SELECT family, grant_json, expires_at, used_at FROM oauth_codes"
                                      " WHERE code_hash = $1 FOR UPDATE", code_hash)
            if row is None:
                return "unknown", None, None
            if row["used_at"] is not None:
                await _revoke(conn, row["family"], now)  # Why: a code seen twice was stolen or replayed
                return "reused", row["family"], None
            await conn.execute("UPDATE oauth_codes SET used_at = $1 WHERE code_hash = $2", now, code_hash)
            if now >= row["expires_at"]:
                return "expired", row["family"], None
            return "ok", row["family"], json.loads(row["grant_json"])

        return await self.db.transaction(take)

    async def start_family(self, family: str, grant: dict[str, Any], token_hash: str, access_jti: str,
                           expires_at: float, now: float) -> None:
        async def start(conn: Connection) -> None:
            await conn.execute("INSERT INTO oauth_families (family, grant_json, created_at) VALUES ($1, $2, $3)",
                               family, json.dumps(grant), now)
            await conn.execute("INSERT INTO oauth_refresh_tokens (token_hash, family, access_jti, expires_at)"
                               " VALUES ($1, $2, $3, $4)", token_hash, family, access_jti, expires_at)

        await self.db.transaction(start)

    async def refresh_token(self, token_hash: str) -> RefreshRecord | None:
        async def read(conn: Connection) -> RefreshRecord | None:
            row = await conn.fetchrow(
                "SELECT t.family, f.grant_json, f.created_at, f.revoked_at, t.expires_at, t.used_at"
                " FROM oauth_refresh_tokens t JOIN oauth_families f ON f.family = t.family WHERE t.token_hash = $1",
                token_hash)
            if row is None:
                return None
            jtis = await conn.fetch("SELECT access_jti FROM oauth_refresh_tokens WHERE family = $1", row["family"])
            return RefreshRecord(row["family"], json.loads(row["grant_json"]), row["created_at"],
                                 row["revoked_at"] is not None, row["expires_at"], row["used_at"] is not None,
                                 tuple(j["access_jti"] for j in jtis))

        return await self.db.run(read)

    async def rotate(self, token_hash: str, new_hash: str, access_jti: str, expires_at: float, now: float) -> str:
        async def rotate(conn: Connection) -> str:
            row = await conn.fetchrow(
                "SELECT t.family, f.revoked_at, t.expires_at, t.used_at FROM oauth_refresh_tokens t"
                " JOIN oauth_families f ON f.family = t.family WHERE t.token_hash = $1 FOR UPDATE OF t",
                token_hash)
            if row is None:
                return "unknown"
            if row["revoked_at"] is not None:
                return "revoked"
            if row["used_at"] is not None:
                await _revoke(conn, row["family"], now)  # Why: a spent refresh token again is a stolen copy
                return "reused"
            if now >= row["expires_at"]:
                return "expired"
            await conn.execute("UPDATE oauth_refresh_tokens SET used_at = $1 WHERE token_hash = $2", now, token_hash)
            await conn.execute("INSERT INTO oauth_refresh_tokens (token_hash, family, access_jti, expires_at)"
                               " VALUES ($1, $2, $3, $4)", new_hash, row["family"], access_jti, expires_at)
            return "ok"

        return await self.db.transaction(rotate)

    async def revoke_family(self, family: str, now: float) -> None:
        async def revoke(conn: Connection) -> None:
            await _revoke(conn, family, now)

        await self.db.transaction(revoke)


async def _revoke(conn: Connection, family: str, now: float) -> None:
    await conn.execute("UPDATE oauth_families SET revoked_at = $1 WHERE family = $2 AND revoked_at IS NULL",
                       now, family)
