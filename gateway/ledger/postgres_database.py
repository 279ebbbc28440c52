"""The PostgreSQL database behind the shared ledger (`metering.ledger: postgresql://...`, issue 12).

A pool of asyncpg connections. Why asyncpg: a ledger transaction costs about a third of
psycopg 3's time and CPU (measured here: 0.10 ms against 0.30 ms for a two-statement
transaction), and the reservation path is all small transactions; the CLI commands run the
same async ledger under `asyncio.run`, so a synchronous API would buy nothing. The URL is
libpq's: the password may come from `PGPASSWORD` or a `PGPASSFILE`, never the config file.
Behind pgbouncer in transaction mode, pass `statement_cache_size=0`.

Every connection runs with `synchronous_commit = on` whatever the server's default: a
transaction that returned is on disk (and on the synchronous standbys the operator configured).
Writes that may be lost in a crash (credit holds) opt out per transaction with
`SET LOCAL synchronous_commit = off`.

Unlike the SQLite side there is no group commit and no global write lock: concurrent
transactions run in parallel in the server, and each component locks only the rows it decides
on. Each component (ledger, and later the auth state) owns a list of migrations; the applied
version is kept per component in `schema_versions`, as on SQLite.
"""

from __future__ import annotations

import asyncio
import contextlib
from typing import AsyncIterator, Awaitable, Callable, Sequence, TypeVar

import asyncpg

from gateway.ledger import LedgerUnavailable

T = TypeVar("T")
Connection = asyncpg.Connection
Migration = str  # one SQL script (no parameters); its position in the list (from 1) is its version

# pg_advisory_xact_lock key for migrations ("gw-schm"): replicas starting at once migrate one by one.
MIGRATION_LOCK = 0x67772D7363686D

# What "the database cannot be reached" looks like: refused or lost connections, a server shutting
# down or starting, no free connection within `timeout`. Anything else (a constraint, a bug) is not
# an outage and propagates as itself.
UNREACHABLE = (OSError, asyncio.TimeoutError, asyncpg.PostgresConnectionError, asyncpg.InterfaceError,
               asyncpg.exceptions.OperatorInterventionError, asyncpg.exceptions.TooManyConnectionsError)


def is_postgres_url(url: str) -> bool:
    return url.startswith(("postgresql://", "postgres://"))


class PostgresDatabase:
    def __init__(self, url: str, min_size: int = 1, max_size: int = 10, timeout: float = 10.0,
                 statement_cache_size: int = 100, password: str | None = None) -> None:
        if not is_postgres_url(url):  # a guard: the config refuses other schemes first
            raise ValueError("not a postgresql:// URL")
        self.url = url
        self._options = {"min_size": min_size, "max_size": max_size, "timeout": timeout,
                         "statement_cache_size": statement_cache_size}
        self._password = password  # None: libpq's environment (PGPASSWORD, PGPASSFILE), as asyncpg reads it
        self.timeout = timeout
        self.pool: asyncpg.Pool | None = None
        self._opening: asyncio.Lock | None = None

    async def open(self) -> None:
        """Connect (idempotent); `LedgerUnavailable` if the server cannot be reached within `timeout`."""
        if self.pool is not None:
            return
        self._opening = self._opening or asyncio.Lock()
        async with self._opening, _reachable():
            if self.pool is None:
                # Why on every connection: "a charge is durable once `charge` returns" must not depend
                # on the server's default (an operator may have turned synchronous_commit off).
                # reset: nothing to undo on release (the gateway never sets session state or takes
                # session locks on pooled connections), which saves asyncpg's default reset query,
                # one round trip per use. An open transaction is still rolled back by the pool.
                self.pool = await asyncpg.create_pool(self.url, **self._options, **self.connect_options(),
                                                      reset=_nothing_to_reset)

    def connect_options(self) -> dict:
        """asyncpg.connect's options for a connection of this gateway (the pool's, and any of its own)."""
        options: dict = {"server_settings": {"synchronous_commit": "on", "application_name": "gateway"}}
        if self._password is not None:
            options["password"] = self._password
        return options

    async def run(self, fn: Callable[[Connection], Awaitable[T]]) -> T:
        """`await fn(conn)` on a pooled connection, each statement on its own (reads)."""
        await self.open()
        async with _reachable(), self.pool.acquire(timeout=self.timeout) as conn:
            return await fn(conn)

    async def transaction(self, fn: Callable[[Connection], Awaitable[T]], durable: bool = True) -> T:
        """`await fn(conn)` in one transaction, committed when this returns (rolled back if fn raises).

        `durable=False`: the commit need not be flushed before returning (a crash may lose it), for
        state that is void after a crash anyway (credit holds). Others see it at once all the same."""
        await self.open()
        async with _reachable(), self.pool.acquire(timeout=self.timeout) as conn:
            async with conn.transaction():
                if not durable:
                    await conn.execute("SET LOCAL synchronous_commit = off")
                return await fn(conn)

    async def writable(self) -> bool:
        """True when connected to a server that takes writes (a primary, not a standby in recovery)."""
        return await self.run(lambda conn: conn.fetchval("SELECT NOT pg_is_in_recovery()"))

    async def migrate(self, component: str, migrations: Sequence[Migration]) -> int:
        """Apply the component's migrations not applied yet (all in one transaction); return its version."""

        async def apply(conn: Connection) -> int:
            # Why a transaction-level advisory lock: two replicas starting together would both see
            # version 0 and both run v1; the second now waits, then sees v1 applied.
            await conn.execute("SELECT pg_advisory_xact_lock($1)", MIGRATION_LOCK)
            await conn.execute("CREATE TABLE IF NOT EXISTS schema_versions"
                               " (component TEXT PRIMARY KEY, version INTEGER NOT NULL)")
            current = await conn.fetchval("SELECT version FROM schema_versions WHERE component = $1", component) or 0
            if current > len(migrations):
                raise RuntimeError(f"{component} schema v{current} is newer than this gateway (v{len(migrations)})")
            for version in range(current + 1, len(migrations) + 1):
                await conn.execute(migrations[version - 1])  # no arguments: several statements in one
                await conn.execute("INSERT INTO schema_versions VALUES ($1, $2)"
                                   " ON CONFLICT (component) DO UPDATE SET version = excluded.version",
                                   component, version)
            return len(migrations)

        return await self.transaction(apply)

    async def close(self) -> None:
        if self.pool is not None:
            pool, self.pool = self.pool, None
            await pool.close()


async def _nothing_to_reset(_conn: asyncpg.Connection) -> None:
    return None


@contextlib.asynccontextmanager
async def _reachable() -> AsyncIterator[None]:
    """Outages (`UNREACHABLE`) become `LedgerUnavailable`: the callers' one signal to refuse 503."""
    try:
        yield
    except UNREACHABLE as exc:
        raise LedgerUnavailable(type(exc).__name__ + (f": {exc}" if str(exc) else "")) from exc


def rowcount(status: str) -> int:
    """The number of rows an INSERT/UPDATE/DELETE touched, from asyncpg's status ("UPDATE 3")."""
    return int(status.rsplit(" ", 1)[-1])
