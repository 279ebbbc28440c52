"""The x402 payments' record on PostgreSQL: the same table, transitions and rules as
`gateway.x402.store.X402Store` (read its docstring), for replicas sharing one database.

The unique (network, asset, payer, nonce) key holds across replicas: one authorization is accepted
once by all of them. Times are the hosts' clocks, as in SQLite: they only decide when an abandoned
`accepted` row is voided and when an `owed` row is no longer being settled by its request, both
with margins of a minute or more, far above the skew of synchronized hosts.
"""

from __future__ import annotations

import json
import time
from typing import Any, Callable

from gateway.ledger.postgres_database import Connection, PostgresDatabase
from gateway.x402.store import COMPONENT, AlreadySeen, Payment, Row, merged_usage, row_of

MIGRATIONS = [
    """
    CREATE TABLE x402_payments (
        id BIGSERIAL PRIMARY KEY,
        service TEXT NOT NULL,
        request_id TEXT NOT NULL,
        network TEXT NOT NULL,
        asset TEXT NOT NULL,
        payer TEXT NOT NULL,
        nonce TEXT NOT NULL,
        pay_to TEXT NOT NULL,
        amount TEXT NOT NULL,
        valid_before BIGINT NOT NULL,
        payload TEXT NOT NULL,
        requirements TEXT NOT NULL,
        status TEXT NOT NULL,
        tx_hash TEXT,
        error TEXT,
        created_at DOUBLE PRECISION NOT NULL,
        expires_at DOUBLE PRECISION NOT NULL,
        updated_at DOUBLE PRECISION NOT NULL,
        UNIQUE (network, asset, payer, nonce)
    );
    CREATE INDEX x402_payments_status ON x402_payments (status, updated_at)
    """,
]


class PostgresX402Store:
    def __init__(self, db: PostgresDatabase, clock: Callable[[], float] = time.time) -> None:
        self.db, self.clock = db, clock

    async def open(self) -> None:
        await self.db.migrate(COMPONENT, MIGRATIONS)

    async def record(self, p: Payment) -> int:
        now = self.clock()

        async def insert(conn: Connection) -> int:
            # Why ON CONFLICT: two replicas given one authorization at once; exactly one row wins.
            found = await conn.fetchval(
                "INSERT INTO x402_payments (service, request_id, network, asset, payer, nonce, pay_to, amount,"
                " valid_before, payload, requirements, status, created_at, expires_at, updated_at)"
                " VALUES ($1, $2, $3, $4, $5, $6, $7, $8, $9, $10, $11, 'accepted', $12, $13, $12)"
                " ON CONFLICT (network, asset, payer, nonce) DO NOTHING RETURNING id",
                p.service, p.request_id, p.network, p.asset.lower(), p.payer.lower(), p.nonce.lower(), p.pay_to,
                str(p.amount), p.valid_before, json.dumps(p.payload), json.dumps(p.requirements), now, p.expires_at)
            if found is None:
                raise AlreadySeen(p.nonce)
            return int(found)

        return await self.db.transaction(insert)

    async def seen(self, network: str, asset: str, payer: str, nonce: str) -> bool:
        async def select(conn: Connection) -> bool:
            return await conn.fetchval(
                "SELECT 1 FROM x402_payments WHERE network = $1 AND asset = $2 AND payer = $3 AND nonce = $4",
                network, asset.lower(), payer.lower(), nonce.lower()) is not None

        return await self.db.run(select)

    async def mark(self, payment_id: int, frm: tuple[str, ...], to: str, tx_hash: str | None = None,
                   error: str | None = None) -> bool:
        now = self.clock()

        async def update(conn: Connection) -> bool:
            done = await conn.fetchval(
                "UPDATE x402_payments SET status = $1, tx_hash = COALESCE($2, tx_hash), error = COALESCE($3, error),"
                " updated_at = $4 WHERE id = $5 AND status = ANY($6::text[]) RETURNING 1",
                to, tx_hash, error, now, payment_id, list(frm))
            return done is not None

        return await self.db.transaction(update)

    async def unfinished(self, owed_before: float) -> list[Row]:
        now = self.clock()

        async def select(conn: Connection) -> list[Row]:
            found = await conn.fetch(
                "SELECT * FROM x402_payments WHERE (status = 'owed' AND updated_at <= $1)"
                " OR (status = 'accepted' AND expires_at < $2) ORDER BY id LIMIT 500", owed_before, now)
            return [row_of(r) for r in found]

        return await self.db.run(select)

    async def get(self, payment_id: int) -> Row | None:
        async def select(conn: Connection) -> Row | None:
            found = await conn.fetchrow("SELECT * FROM x402_payments WHERE id = $1", payment_id)
            return row_of(found) if found is not None else None

        return await self.db.run(select)

    async def usage(self, service: str | None = None, payer: str | None = None) -> list[dict[str, Any]]:
        async def select(conn: Connection) -> list[dict[str, Any]]:
            found = await conn.fetch(
                "SELECT service, payer, network, asset, status, COUNT(*) AS payments, amount,"
                " MIN(created_at) AS first_at, MAX(created_at) AS last_at FROM x402_payments"
                " WHERE ($1::text IS NULL OR service = $1) AND ($2::text IS NULL OR payer = $2)"
                " GROUP BY service, payer, network, asset, status, amount ORDER BY service, payer, status",
                service, payer.lower() if payer else None)
            return [dict(r) for r in found]

        return merged_usage(await self.db.run(select))
