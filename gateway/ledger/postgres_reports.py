"""The PostgreSQL ledger's reports (`gateway.ledger.postgres`): settlement lag, shortfalls resolved
by an operator, `gateway usage`. Read-mostly queries, kept apart from the money decisions."""

from __future__ import annotations

from typing import Any

from gateway.ledger import Account
from gateway.ledger.postgres_database import Connection, PostgresDatabase, rowcount
from gateway.ledger.postgres_schema import ACCOUNT


def _key(a: Account) -> tuple[int, str, str, str]:
    """The account as the queries' $1..$4."""
    return (a.chain_id, a.contract, str(a.token_id), a.subscriber)


class PostgresReports:
    """Mixed into `PostgresLedger`, which gives it `db`."""

    db: PostgresDatabase

    async def oldest_unsettled_age(self) -> float:
        """Seconds since the oldest charge not burned yet was made (0 when none): settlement lag."""
        async def query(conn: Connection) -> float:
            age = await conn.fetchval("SELECT EXTRACT(EPOCH FROM ledger_now() - MIN(created_at))::float8"
                                      " FROM charges WHERE settled_at IS NULL")
            return max(age, 0.0) if age is not None else 0.0

        return await self.db.run(query)

    async def resolve_shortfalls(self, account: Account, note: str) -> int:
        async def resolve(conn: Connection) -> int:
            return rowcount(await conn.execute(
                f"UPDATE shortfalls SET resolved_at = ledger_now(), note = $5 WHERE {ACCOUNT} AND resolved_at IS NULL",
                *_key(account), note))

        return await self.db.transaction(resolve)

    async def usage(self, service: str | None = None, subscriber: str | None = None) -> list[dict[str, Any]]:
        async def usage(conn: Connection) -> list[dict[str, Any]]:
            # $1/$2: NULL means every service / subscriber.
            found = await conn.fetch(
                "SELECT c.service, c.subscriber, c.chain_id, c.contract, c.token_id, COUNT(*) AS calls,"
                " SUM(c.amount) AS charged, SUM(CASE WHEN c.settled_at IS NOT NULL THEN c.amount ELSE 0 END) AS settled,"
                " array_remove(array_agg(DISTINCT CASE WHEN s.status = 'confirmed' THEN s.tx_hash END), NULL) AS burn_txs,"
                " (SELECT COALESCE(SUM(f.amount), 0) FROM shortfalls f WHERE f.chain_id = c.chain_id AND"
                "  f.contract = c.contract AND f.token_id = c.token_id AND f.subscriber = c.subscriber"
                "  AND f.resolved_at IS NULL) AS shortfall"
                " FROM charges c LEFT JOIN settlements s ON s.id = c.settlement_id"
                " WHERE ($1::text IS NULL OR c.service = $1) AND ($2::text IS NULL OR LOWER(c.subscriber) = LOWER($2))"
                " GROUP BY c.service, c.subscriber, c.chain_id, c.contract, c.token_id ORDER BY c.service, c.subscriber",
                service or None, subscriber or None)
            rows = []
            for r in found:
                row = {k: r[k] for k in ("service", "subscriber", "chain_id", "contract", "token_id", "calls")}
                row.update(charged=int(r["charged"]), settled=int(r["settled"]), burn_txs=sorted(r["burn_txs"]))
                row.update(pending=row["charged"] - row["settled"], shortfall=int(r["shortfall"]))
                rows.append(row)
            return rows

        return await self.db.run(usage)
