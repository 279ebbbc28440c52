"""The PostgreSQL ledger's schema (the "ledger" component's migrations) and the SQL it decides with.

The same tables as the SQLite ledger (`gateway.ledger.sqlite`), with two differences that keep
money decisions on one clock and let accounts proceed in parallel:
- every time is a `timestamptz` from `ledger_now()`, the database's clock (never a host's);
- `account_totals` has one row per account, which `reserve` and `charge` lock (the per-account
  lock; other accounts' rows are untouched), and `settlements.confirmed_at` says when a burn was
  recorded as mined, on the database's clock.
"""

from __future__ import annotations

MIGRATIONS = [
    """
    -- The one clock of every money decision. A function so that a test can shift the clock of its
    -- own throwaway database (tests/support/postgres.py); in production it is clock_timestamp().
    CREATE FUNCTION ledger_now() RETURNS timestamptz LANGUAGE sql VOLATILE AS 'SELECT clock_timestamp()';
    CREATE TABLE account_totals (
        chain_id BIGINT NOT NULL, contract TEXT NOT NULL, token_id TEXT NOT NULL, subscriber TEXT NOT NULL,
        unsettled BIGINT NOT NULL DEFAULT 0,  -- charged, not yet burned
        PRIMARY KEY (chain_id, contract, token_id, subscriber)
    );
    CREATE TABLE reservations (
        id TEXT PRIMARY KEY,
        chain_id BIGINT NOT NULL, contract TEXT NOT NULL, token_id TEXT NOT NULL, subscriber TEXT NOT NULL,
        service TEXT NOT NULL, amount BIGINT NOT NULL CHECK (amount >= 0),
        request_id TEXT NOT NULL, expires_at TIMESTAMPTZ NOT NULL
    );
    CREATE INDEX reservations_account ON reservations (chain_id, contract, token_id, subscriber);
    CREATE INDEX reservations_expiry ON reservations (expires_at);
    CREATE TABLE settlements (
        id BIGSERIAL PRIMARY KEY,
        chain_id BIGINT NOT NULL, contract TEXT NOT NULL, token_id TEXT NOT NULL, subscriber TEXT NOT NULL,
        amount BIGINT NOT NULL, burn_amount BIGINT NOT NULL,
        operator TEXT NOT NULL, nonce BIGINT, tx_hash TEXT UNIQUE, raw_tx TEXT,  -- no tx when nothing is left to burn
        status TEXT NOT NULL CHECK (status IN ('recorded', 'sent', 'confirmed', 'failed')),
        block_number BIGINT, error TEXT,
        created_at TIMESTAMPTZ NOT NULL, updated_at TIMESTAMPTZ NOT NULL, confirmed_at TIMESTAMPTZ
    );
    CREATE INDEX settlements_account ON settlements (chain_id, contract, token_id, subscriber, status, confirmed_at);
    CREATE INDEX settlements_unfinished ON settlements (status) WHERE status IN ('recorded', 'sent');
    CREATE TABLE charges (
        id BIGSERIAL PRIMARY KEY,
        reservation_id TEXT NOT NULL UNIQUE,
        request_id TEXT NOT NULL,
        chain_id BIGINT NOT NULL, contract TEXT NOT NULL, token_id TEXT NOT NULL, subscriber TEXT NOT NULL,
        service TEXT NOT NULL, amount BIGINT NOT NULL CHECK (amount >= 0), created_at TIMESTAMPTZ NOT NULL,
        settlement_id BIGINT REFERENCES settlements (id), settled_at TIMESTAMPTZ
    );
    CREATE INDEX charges_pending ON charges (id) WHERE settled_at IS NULL AND settlement_id IS NULL;
    CREATE INDEX charges_unsettled ON charges (created_at) WHERE settled_at IS NULL;
    CREATE INDEX charges_settlement ON charges (settlement_id);
    CREATE INDEX charges_usage ON charges (service, subscriber);
    CREATE TABLE shortfalls (
        id BIGSERIAL PRIMARY KEY,
        chain_id BIGINT NOT NULL, contract TEXT NOT NULL, token_id TEXT NOT NULL, subscriber TEXT NOT NULL,
        amount BIGINT NOT NULL, settlement_id BIGINT NOT NULL REFERENCES settlements (id),
        created_at TIMESTAMPTZ NOT NULL, resolved_at TIMESTAMPTZ, note TEXT
    );
    CREATE INDEX shortfalls_account ON shortfalls (chain_id, contract, token_id, subscriber) WHERE resolved_at IS NULL
    """,
]

# ---- the queries the ledger decides with (gateway.ledger.postgres) -------------------------------
# Arguments: $1..$4 the account (chain_id, contract, token_id as text, subscriber); in the queries
# that compare with a balance read, $5 is when it was read, on the database's clock (epoch s).

ACCOUNT = "chain_id = $1 AND contract = $2 AND token_id = $3 AND subscriber = $4"
NOW = "EXTRACT(EPOCH FROM ledger_now())::float8"
# Lock the account (creating its row the first time) and read the database's clock once the lock
# is held. $5: credits to add to the unsettled total (a charge's amount).
LOCK_ACCOUNT = (
    "INSERT INTO account_totals (chain_id, contract, token_id, subscriber, unsettled) VALUES ($1, $2, $3, $4, $5)"
    " ON CONFLICT (chain_id, contract, token_id, subscriber) DO UPDATE"
    " SET unsettled = account_totals.unsettled + excluded.unsettled"
    f" RETURNING unsettled, {NOW} AS db_now"
)
# The same lock for a reservation (adds nothing); its transaction also opts out of the synchronous
# flush (a hold is void after a crash anyway), in the same round trip as a SET LOCAL would take.
LOCK_FOR_HOLD = (
    "INSERT INTO account_totals (chain_id, contract, token_id, subscriber) VALUES ($1, $2, $3, $4)"
    " ON CONFLICT (chain_id, contract, token_id, subscriber) DO UPDATE SET unsettled = account_totals.unsettled"
    f" RETURNING unsettled, {NOW} AS db_now, set_config('synchronous_commit', 'off', true) AS sync"
)
_SHORTFALL = f"(SELECT COALESCE(SUM(amount), 0) FROM shortfalls WHERE {ACCOUNT} AND resolved_at IS NULL)"
# Charges settled after the balance was read count against it: that balance is from before their burn.
_BURNED_SINCE = (f"(SELECT COALESCE(SUM(amount), 0) FROM settlements WHERE {ACCOUNT} AND status = 'confirmed'"
                 " AND confirmed_at > to_timestamp($5::float8))")
_UNSETTLED = f"COALESCE((SELECT unsettled FROM account_totals WHERE {ACCOUNT}), 0)"
# reserve, once the account is locked: drop its expired holds, sum what stands against the
# balance and hold the credits if they are there. $6 the reservation's id, $7 service, $8 amount,
# $9 request id, $10 ttl (s), $11 the balance read less the unsettled charges (numeric: a uint256).
# Why count the holds left regardless of expiry: the DELETE waits for a concurrent `extend` of a
# row and then keeps it; a hold that expired between the two would be uncounted yet renewable.
# (One statement, one snapshot: `s` sees the account as it was before this statement's writes.)
RESERVE = (
    f"WITH gone AS (DELETE FROM reservations WHERE {ACCOUNT} AND expires_at < ledger_now() RETURNING id),"
    f" s AS (SELECT {_SHORTFALL} AS shortfall, {_BURNED_SINCE} AS burned,"
    f"  (SELECT COALESCE(SUM(amount), 0) FROM reservations WHERE {ACCOUNT} AND id NOT IN (SELECT id FROM gone))"
    "   AS held),"
    " made AS (INSERT INTO reservations (chain_id, contract, token_id, subscriber, id, service, amount, request_id,"
    "  expires_at) SELECT $1, $2, $3, $4, $6, $7, $8::bigint, $9,"
    "  ledger_now() + make_interval(secs => $10::float8) FROM s"
    "  WHERE s.shortfall = 0 AND $11::numeric - s.burned - s.held >= $8::bigint RETURNING id)"
    " SELECT shortfall, burned, held, EXISTS (SELECT 1 FROM made) AS made FROM s"
)
# charge, once the account is locked (and the amount added to its unsettled total): take the hold
# ($6) if it is still live, record the charge of $7 credits, and sum what still stands against the
# balance (the hold just taken excluded: this statement's snapshot still has it).
CHARGE = (
    "WITH hold AS (DELETE FROM reservations WHERE id = $6"
    "  RETURNING service, request_id, expires_at >= ledger_now() AS live),"
    " made AS (INSERT INTO charges (chain_id, contract, token_id, subscriber, reservation_id, request_id, service,"
    "  amount, created_at) SELECT $1, $2, $3, $4, $6, request_id, service, $7::bigint, ledger_now() FROM hold WHERE live"
    "  RETURNING id)"
    f" SELECT EXISTS (SELECT 1 FROM made) AS made, {_BURNED_SINCE} AS burned,"
    f" (SELECT COALESCE(SUM(amount), 0) FROM reservations WHERE {ACCOUNT} AND expires_at >= ledger_now()"
    "  AND id <> $6) AS held"
)
# available: what stands against a balance read (no lock, one snapshot).
SUMS = (f"SELECT {_SHORTFALL} AS shortfall, {_BURNED_SINCE} AS burned, {_UNSETTLED} AS unsettled,"
        f" (SELECT COALESCE(SUM(amount), 0) FROM reservations WHERE {ACCOUNT} AND expires_at >= ledger_now())"
        " AS held")
