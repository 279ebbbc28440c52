"""Which ledger a URL names: `sqlite:///PATH` (one machine) or `postgresql://...` (replicas).

The one place that turns `metering.ledger` into a database and the ledger on it; the server,
the CLI commands (`usage`, `token revoke`, `shortfall resolve`) and the components that keep
state in the same database (sign-in, revocations, shared balances, in their own modules) all
start from `open_database`, so none of them branches on the scheme again.
"""

from __future__ import annotations

import contextlib
import time
from typing import AsyncIterator, Callable, Union

from gateway.ledger import Ledger
from gateway.ledger.database import SqliteDatabase, sqlite_path
from gateway.ledger.postgres import PostgresLedger
from gateway.ledger.postgres_database import PostgresDatabase, is_postgres_url
from gateway.ledger.sqlite import SqliteLedger

Database = Union[SqliteDatabase, PostgresDatabase]


def open_database(url: str, password: str | None = None, pool_size: int = 10) -> Database:
    """The database `url` names (not connected yet: each connects on first use or `open`)."""
    if is_postgres_url(url):
        return PostgresDatabase(url, max_size=pool_size, password=password)
    return SqliteDatabase(sqlite_path(url))


@contextlib.asynccontextmanager
async def command_database(url: str, password: str | None) -> AsyncIterator[Database]:
    """The database for one CLI command (`usage`, `token revoke`, `shortfall resolve`): one
    connection, closed when the command is done."""
    db = open_database(url, password, pool_size=1)
    try:
        yield db
    finally:
        await db.close()


def ledger_on(db: Database, clock: Callable[[], float] = time.time) -> Ledger:
    """The ledger kept in `db`."""
    if isinstance(db, PostgresDatabase):
        return PostgresLedger(db, clock=clock)
    return SqliteLedger(db, clock=clock)


def is_shared(url: str) -> bool:
    """True when several gateways (replicas) may use this ledger at once: PostgreSQL's."""
    return is_postgres_url(url)
