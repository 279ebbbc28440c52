"""The SQLite ledger's schema: its migrations, in order (a position in the list, from 1, is a
version; `SqliteDatabase.migrate` applies those not applied yet). Never edit a released one:
append a new one.
"""

from __future__ import annotations

from gateway.ledger import Account


def account_key(a: Account) -> tuple:
    """An account as its four columns (chain_id, contract, token_id, subscriber), in every table."""
    return (a.chain_id, a.contract, str(a.token_id), a.subscriber)


MIGRATIONS = [
    """
    CREATE TABLE reservations (
        id TEXT PRIMARY KEY,
        chain_id INTEGER NOT NULL, contract TEXT NOT NULL, token_id TEXT NOT NULL, subscriber TEXT NOT NULL,
        service TEXT NOT NULL, amount INTEGER NOT NULL CHECK (amount >= 0),
        request_id TEXT NOT NULL, expires_at REAL NOT NULL
    );
    CREATE INDEX reservations_account ON reservations (chain_id, contract, token_id, subscriber);
    CREATE TABLE settlements (
        id INTEGER PRIMARY KEY AUTOINCREMENT,
        chain_id INTEGER NOT NULL, contract TEXT NOT NULL, token_id TEXT NOT NULL, subscriber TEXT NOT NULL,
        amount INTEGER NOT NULL, burn_amount INTEGER NOT NULL,
        operator TEXT NOT NULL, nonce INTEGER, tx_hash TEXT UNIQUE, raw_tx TEXT,  -- no tx when nothing is left to burn
        status TEXT NOT NULL CHECK (status IN ('recorded', 'sent', 'confirmed', 'failed')),
        block_number INTEGER, error TEXT, created_at REAL NOT NULL, updated_at REAL NOT NULL
    );
    CREATE TABLE charges (
        id INTEGER PRIMARY KEY AUTOINCREMENT,
        reservation_id TEXT NOT NULL UNIQUE,
        request_id TEXT NOT NULL,
        chain_id INTEGER NOT NULL, contract TEXT NOT NULL, token_id TEXT NOT NULL, subscriber TEXT NOT NULL,
        service TEXT NOT NULL, amount INTEGER NOT NULL CHECK (amount >= 0), created_at REAL NOT NULL,
        settlement_id INTEGER REFERENCES settlements (id), settled_at REAL
    );
    CREATE INDEX charges_account ON charges (chain_id, contract, token_id, subscriber, settled_at);
    CREATE INDEX charges_pending ON charges (settled_at, settlement_id);
    CREATE TABLE shortfalls (
        id INTEGER PRIMARY KEY AUTOINCREMENT,
        chain_id INTEGER NOT NULL, contract TEXT NOT NULL, token_id TEXT NOT NULL, subscriber TEXT NOT NULL,
        amount INTEGER NOT NULL, settlement_id INTEGER NOT NULL REFERENCES settlements (id),
        created_at REAL NOT NULL, resolved_at REAL, note TEXT
    )
    """,
    # v2: O(1) availability. Unsettled charges are summed per account as they happen (the request
    # path no longer scans an account's charges), and the lookups it makes are indexed.
    """
    CREATE TABLE account_totals (
        chain_id INTEGER NOT NULL, contract TEXT NOT NULL, token_id TEXT NOT NULL, subscriber TEXT NOT NULL,
        unsettled INTEGER NOT NULL DEFAULT 0,
        PRIMARY KEY (chain_id, contract, token_id, subscriber)
    );
    INSERT INTO account_totals (chain_id, contract, token_id, subscriber, unsettled)
        SELECT chain_id, contract, token_id, subscriber, SUM(amount) FROM charges WHERE settled_at IS NULL
        GROUP BY chain_id, contract, token_id, subscriber;
    CREATE INDEX reservations_expiry ON reservations (expires_at);
    CREATE INDEX settlements_account ON settlements (chain_id, contract, token_id, subscriber, status, updated_at);
    CREATE INDEX shortfalls_account ON shortfalls (chain_id, contract, token_id, subscriber, resolved_at)
    """,
]
