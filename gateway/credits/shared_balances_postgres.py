"""Plan balances shared through PostgreSQL: by the workers of every replica on the database.

The same rules as `gateway.credits.shared_balances` (a fresh balance is used as is, a claimed key
is waited for, bounded tables), with one difference: the replicas are different machines, so a
time stored here is never a host's clock. A balance read is stored as the database time it began
(the host's age of the read, subtracted from the database's clock) and handed back as a time on
the reading host's clock the same way. Only durations cross between machines, so clock skew
between hosts cannot make a balance look fresher than it is, nor move it against a settlement's
time (which the ledger also keeps on the database's clock: `gateway.ledger.postgres`).
"""

from __future__ import annotations

from gateway.credits.shared_balances import _CLAIMED, _WAIT, PRUNE_BATCH, SharedBalance, SharedBalances
from gateway.ledger.postgres_database import Connection

NOW = "EXTRACT(EPOCH FROM clock_timestamp())::float8"
MIGRATIONS = [
    """
    CREATE TABLE plan_balances (key TEXT PRIMARY KEY, balance NUMERIC(78) NOT NULL,
                                read_at DOUBLE PRECISION NOT NULL);  -- the database's clock
    CREATE TABLE plan_fetches (key TEXT PRIMARY KEY, claimed_at DOUBLE PRECISION NOT NULL);
    CREATE INDEX plan_balances_read_at ON plan_balances (read_at);
    CREATE INDEX plan_fetches_claimed_at ON plan_fetches (claimed_at)
    """,
]


class PostgresSharedBalances(SharedBalances):
    """The same waiting loop (`SharedBalances.acquire`), the SQL of PostgreSQL and its clock."""

    migrations = MIGRATIONS

    async def _check_or_claim(self, conn: Connection, key: str, ttl: float, negative_ttl: float):
        if (found := await self._fresh(conn, key, ttl, negative_ttl)) is not None:
            return found
        # Why one statement: two replicas missing at once; the row lock lets one claim, one wait.
        claimed = await conn.fetchval(
            f"INSERT INTO plan_fetches AS f VALUES ($1, {NOW}) ON CONFLICT (key) DO UPDATE SET claimed_at = {NOW}"
            f" WHERE f.claimed_at < {NOW} - $2 RETURNING 1", key, self.lease)
        if not claimed:
            return _WAIT  # another worker is reading the chain for this key right now
        # Why look again: each statement sees what was committed when it began, so a publish that
        # committed between the read above and the claim (it deletes the claim it answers) would
        # otherwise send this worker to the chain for a balance that is already here.
        if (found := await self._fresh(conn, key, ttl, negative_ttl)) is not None:
            await conn.execute("DELETE FROM plan_fetches WHERE key = $1", key)
            return found
        return _CLAIMED

    async def _fresh(self, conn: Connection, key: str, ttl: float, negative_ttl: float) -> SharedBalance | None:
        row = await conn.fetchrow(f"SELECT balance, read_at, {NOW} AS now FROM plan_balances WHERE key = $1", key)
        if row is not None:
            balance, age = int(row["balance"]), row["now"] - row["read_at"]
            if age < (ttl if balance > 0 else negative_ttl):
                return SharedBalance(balance, self.clock() - age)  # the same age, on this host's clock
        return None

    async def publish(self, key: str, balance: SharedBalance | None) -> None:
        async def publish(conn: Connection) -> None:
            if balance is not None:
                await conn.execute(
                    f"INSERT INTO plan_balances VALUES ($1, $2, {NOW} - $3) ON CONFLICT (key)"
                    " DO UPDATE SET balance = excluded.balance, read_at = excluded.read_at",
                    key, balance.amount, max(self.clock() - balance.read_at, 0.0))
            await conn.execute("DELETE FROM plan_fetches WHERE key = $1", key)
            # Why prune (see shared_balances): rows past any ttl are never read again.
            await conn.execute(f"DELETE FROM plan_balances WHERE key IN (SELECT key FROM plan_balances"
                               f" WHERE read_at < {NOW} - $1 ORDER BY read_at LIMIT $2 FOR UPDATE SKIP LOCKED)",
                               self.keep + 1.0, PRUNE_BATCH)
            await conn.execute(f"DELETE FROM plan_fetches WHERE key IN (SELECT key FROM plan_fetches"
                               f" WHERE claimed_at < {NOW} - $1 ORDER BY claimed_at LIMIT $2 FOR UPDATE SKIP LOCKED)",
                               self.lease + 1.0, PRUNE_BATCH)

        await self.db.transaction(publish, durable=False)

    async def count(self) -> int:
        """Rows in the shared balances table (for tests and operators)."""
        return await self.db.run(lambda conn: conn.fetchval("SELECT COUNT(*) FROM plan_balances"))
