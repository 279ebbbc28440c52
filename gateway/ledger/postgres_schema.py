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

# ---- v2: reserve and charge in one round trip each ------------------------------------------------
# Each is one function call, run as its own transaction: the account's lock, then the decision in a
# second statement (a new snapshot, taken once the lock is held), as the two statements above did
# inside BEGIN ... COMMIT from the client, at four round trips (BEGIN, lock, decide, COMMIT).
# The balance's read time comes as an age (host clock, measured when the call is sent) and becomes
# a database time at the function's start, less a slack for the trip from the client to the
# server; the caller checks the round trip against it (`gateway.ledger.postgres`, BURNED_BETWEEN).
# The migration is built from the statements above when it is written; changing them later
# needs a new migration (an applied one never runs again).
_RESERVE_IN_FUNCTION = (RESERVE.replace("$11", "v_net").replace("$5", "v_read_at")
                        + " INTO v_shortfall, v_burned, v_held, v_made")
_CHARGE_IN_FUNCTION = CHARGE.replace("$5", "v_read_at") + " INTO v_made, v_burned, v_held"
MIGRATIONS.append(f"""
    -- $1..$4 the account, $5 the balance's age (s), $6 id, $7 service, $8 amount, $9 request id,
    -- $10 ttl (s), $11 the balance read, $12 the slack (s).
    CREATE FUNCTION ledger_reserve(BIGINT, TEXT, TEXT, TEXT, FLOAT8, TEXT, TEXT, BIGINT, TEXT, FLOAT8, NUMERIC, FLOAT8)
    RETURNS TABLE (o_unsettled BIGINT, o_shortfall NUMERIC, o_burned NUMERIC, o_held NUMERIC, o_made BOOLEAN,
                   o_read_at FLOAT8)
    LANGUAGE plpgsql VOLATILE AS $fn$
    DECLARE
        v_read_at FLOAT8 := EXTRACT(EPOCH FROM ledger_now())::float8 - $5 - $12;
        v_unsettled BIGINT; v_net NUMERIC;
        v_shortfall NUMERIC; v_burned NUMERIC; v_held NUMERIC; v_made BOOLEAN;
    BEGIN
        -- a hold is void after a crash: its commit need not wait for the disk
        PERFORM set_config('synchronous_commit', 'off', true);
        INSERT INTO account_totals AS t (chain_id, contract, token_id, subscriber) VALUES ($1, $2, $3, $4)
            ON CONFLICT (chain_id, contract, token_id, subscriber) DO UPDATE SET unsettled = t.unsettled
            RETURNING t.unsettled INTO v_unsettled;
        v_net := $11 - v_unsettled;
        {_RESERVE_IN_FUNCTION};
        RETURN QUERY SELECT v_unsettled, v_shortfall, v_burned, v_held, v_made, v_read_at;
    END $fn$;
    -- $1..$4 the account, $5 the balance's age (s), $6 the reservation's id, $7 amount, $8 the slack (s).
    CREATE FUNCTION ledger_charge(BIGINT, TEXT, TEXT, TEXT, FLOAT8, TEXT, BIGINT, FLOAT8)
    RETURNS TABLE (o_unsettled BIGINT, o_made BOOLEAN, o_burned NUMERIC, o_held NUMERIC)
    LANGUAGE plpgsql VOLATILE AS $fn$
    DECLARE
        v_read_at FLOAT8 := EXTRACT(EPOCH FROM ledger_now())::float8 - $5 - $8;
        v_unsettled BIGINT; v_made BOOLEAN; v_burned NUMERIC; v_held NUMERIC;
    BEGIN
        INSERT INTO account_totals AS t (chain_id, contract, token_id, subscriber, unsettled) VALUES ($1, $2, $3, $4, $7)
            ON CONFLICT (chain_id, contract, token_id, subscriber) DO UPDATE SET unsettled = t.unsettled + excluded.unsettled
            RETURNING t.unsettled INTO v_unsettled;
        {_CHARGE_IN_FUNCTION};
        IF NOT v_made THEN  -- nothing charged: the unsettled total goes back (same transaction)
            UPDATE account_totals SET unsettled = unsettled - $7 WHERE {ACCOUNT};
        END IF;
        RETURN QUERY SELECT v_unsettled, v_made, v_burned, v_held;
    END $fn$
""")
# Burns of the account confirmed in ($5, $6]: what a reservation whose trip outlasted the slack
# may have left uncounted.
BURNED_BETWEEN = (f"SELECT COALESCE(SUM(amount), 0) FROM settlements WHERE {ACCOUNT} AND status = 'confirmed'"
                  " AND confirmed_at > to_timestamp($5::float8) AND confirmed_at <= to_timestamp($6::float8)")
RESERVE_CALL = "SELECT * FROM ledger_reserve($1, $2, $3, $4, $5, $6, $7, $8, $9, $10, $11, $12)"
CHARGE_CALL = "SELECT * FROM ledger_charge($1, $2, $3, $4, $5, $6, $7, $8)"

# ---- v3: a charge taken from part of a hold (a worker's lease), one round trip ---------------------
# The account's lock first (as ledger_reserve / ledger_charge), then: shrink the live hold $6 by $7
# if it holds that much (gone once empty), record the charge under the id $9, sum what still
# stands against the balance. Nothing taken (the hold gone, expired or short): the unsettled total
# goes back and o_made is false.
MIGRATIONS.append(f"""
    -- $1..$4 the account, $5 the balance's age (s), $6 the hold's id, $7 amount, $8 the slack (s),
    -- $9 the charge's id (unique), $10 request id, $11 service.
    CREATE FUNCTION ledger_charge_part(BIGINT, TEXT, TEXT, TEXT, FLOAT8, TEXT, BIGINT, FLOAT8, TEXT, TEXT, TEXT)
    RETURNS TABLE (o_unsettled BIGINT, o_made BOOLEAN, o_burned NUMERIC, o_held NUMERIC)
    LANGUAGE plpgsql VOLATILE AS $fn$
    DECLARE
        v_read_at FLOAT8 := EXTRACT(EPOCH FROM ledger_now())::float8 - $5 - $8;
        v_unsettled BIGINT; v_left BIGINT; v_burned NUMERIC; v_held NUMERIC;
    BEGIN
        INSERT INTO account_totals AS t (chain_id, contract, token_id, subscriber, unsettled) VALUES ($1, $2, $3, $4, $7)
            ON CONFLICT (chain_id, contract, token_id, subscriber) DO UPDATE SET unsettled = t.unsettled + excluded.unsettled
            RETURNING t.unsettled INTO v_unsettled;
        UPDATE reservations SET amount = amount - $7
            WHERE id = $6 AND expires_at >= ledger_now() AND amount >= $7 RETURNING amount INTO v_left;
        IF v_left IS NULL THEN  -- nothing charged: the unsettled total goes back (same transaction)
            UPDATE account_totals SET unsettled = unsettled - $7 WHERE {ACCOUNT};
            RETURN QUERY SELECT v_unsettled, false, 0::numeric, 0::numeric;
            RETURN;
        END IF;
        IF v_left = 0 THEN
            DELETE FROM reservations WHERE id = $6;
        END IF;
        INSERT INTO charges (chain_id, contract, token_id, subscriber, reservation_id, request_id, service, amount,
            created_at) VALUES ($1, $2, $3, $4, $9, $10, $11, $7, ledger_now());
        SELECT {_BURNED_SINCE.replace("$5", "v_read_at")},
               (SELECT COALESCE(SUM(amount), 0) FROM reservations WHERE {ACCOUNT} AND expires_at >= ledger_now())
            INTO v_burned, v_held;
        RETURN QUERY SELECT v_unsettled, true, v_burned, v_held;
    END $fn$
""")
CHARGE_PART_CALL = "SELECT * FROM ledger_charge_part($1, $2, $3, $4, $5, $6, $7, $8, $9, $10, $11)"
