"""The shared ledger: PostgreSQL through `PostgresDatabase`, for gateways on several machines.

The same `Ledger` methods and money rules as `SqliteLedger`, with these choices:

- Atomic per account, accounts in parallel: `reserve` and `charge` first lock the account's row
  in `account_totals` (an upsert, so a new account gets its row), then decide and write in ONE
  statement of the same transaction (`postgres_schema.RESERVE` / `CHARGE`), both inside one
  server-side function call (`ledger_reserve` / `ledger_charge`: one round trip, not four). Two
  calls of one account queue on that row; other accounts never wait. Both take that lock first,
  so they serialize with each other and cannot deadlock.
- Durability: a charge, a settlement and every state change of one are committed with
  `synchronous_commit = on` before the method returns; holds (`reserve`, `extend`, `release`)
  with it off for their transaction (a hold is void after a crash anyway).
- One clock: hold expiry, charge times, settlement times are the database's (`ledger_now()`).
  The balance a caller passes was read at `balance_read_at` on ITS host's clock; a burn counts
  against that balance if it was confirmed after the read. That is decided without comparing
  clocks of two machines: the host sends the read's age (a duration on one clock) when it sends
  the call; the function subtracts it, and a slack, from the database's clock at its start. That
  start is later than the send by the trip to the server, so the slack should cover that trip:
  the host measures the round trip, and if it was longer than the slack, burns confirmed in the
  gap it may have left are counted too, with one more query (`reserve`). So a burn confirmed
  after the read always counts; one confirmed within the slack before it may count once more
  for a moment, never zero times. (`available` reads the database's clock and subtracts the
  read's age measured when the answer arrives: the same bound, in two statements.) What this assumes: the
  balance was read on the host that calls (true of today's callers: a plan balance shared
  between hosts would have to carry a database time), and its clock was not stepped between
  the read and the call (a step shifts the bound by the step).
"""

from __future__ import annotations

import itertools
import time
import uuid
from decimal import Decimal
from typing import Any, Callable

from gateway.ledger import Account, InsufficientCredits, PendingGroup, Reservation, ReservationExpired, Settlement
from gateway.ledger.postgres_database import Connection, PostgresDatabase, rowcount
from gateway.ledger.postgres_reports import PostgresReports, _key
from gateway.ledger.postgres_schema import (ACCOUNT, BURNED_BETWEEN, CHARGE_CALL, CHARGE_PART_CALL, MIGRATIONS, NOW,
                                            RESERVE_CALL, SUMS)

# How late the client's send may reach the server's function start (see `reserve`): a burn
# confirmed this long before a balance read may count once more against it, never zero times.
# Small: a slower trip is detected and its gap checked with one more query (`reserve`).
READ_SLACK = 0.005


def _account(row: Any) -> Account:
    return Account(row["chain_id"], row["contract"], int(row["token_id"]), row["subscriber"])


def _settlement(r: Any) -> Settlement:
    return Settlement(r["id"], _account(r), r["amount"], r["burn_amount"], r["operator"], r["nonce"],
                      r["tx_hash"], r["raw_tx"], r["status"])


class PostgresLedger(PostgresReports):
    def __init__(self, db: PostgresDatabase, clock: Callable[[], float] = time.time) -> None:
        self.db = db
        # The host's wall clock, the one `balance_read_at` is on. Used only for the age of a
        # balance read (a duration on this host's clock); every stored time is the database's.
        self.clock = clock
        self._parts = itertools.count(1)  # numbers the charges taken from one hold (`charge_part`)

    async def open(self) -> None:
        await self.db.migrate("ledger", MIGRATIONS)

    async def close(self) -> None:
        """The database is shared and closed by its owner."""

    def _read_on_db_clock(self, db_now: float, balance_read_at: float) -> float:
        """The earliest database time the balance read can have happened (see the module docstring)."""
        return db_now - (self.clock() - balance_read_at)

    # ---- request path -------------------------------------------------------------------------

    async def reserve(self, account: Account, service: str, amount: int, balance: int, balance_read_at: float,
                      request_id: str, ttl: float) -> Reservation:
        key, rid = _key(account), uuid.uuid4().hex

        async def reserve(conn: Connection) -> Reservation:
            sent = self.clock()
            done = await conn.fetchrow(RESERVE_CALL, *key, sent - balance_read_at, rid, service, amount,
                                       request_id, float(ttl), Decimal(balance), READ_SLACK)
            trip = self.clock() - sent
            if done["o_shortfall"]:
                # Why: tokens moved away before a burn; until that is resolved, nothing more is sold.
                raise InsufficientCredits(0, int(done["o_shortfall"]))
            available = balance - done["o_unsettled"] - int(done["o_burned"]) - int(done["o_held"])
            made = done["o_made"]
            if trip > READ_SLACK:
                # The trip outlasted the slack, so the read time used may be up to (trip - slack)
                # later than the true one: burns confirmed in that gap count too (rare: a stall).
                late = int(await conn.fetchval(BURNED_BETWEEN, *key, done["o_read_at"] - (trip - READ_SLACK),
                                               done["o_read_at"]))
                available -= late
                if made and available < amount:
                    # Why give the hold back: counted with those burns, the balance does not cover it.
                    await conn.execute("DELETE FROM reservations WHERE id = $1", rid)
                    made = False
            # Why refuse: the balance net of unsettled charges, burns it predates and live holds
            # cannot cover the amount (the statement held nothing then).
            if not made:
                raise InsufficientCredits(max(available, 0), held=int(done["o_held"]))
            return Reservation(rid, account, amount, available - amount)

        # One call, its own transaction, not flushed before returning (a hold only matters while
        # its process lives): ledger_reserve in postgres_schema.
        return await self.db.run(reserve)

    async def available(self, account: Account, balance: int, balance_read_at: float) -> int:
        """What a reservation could take now (0 while an unpaid shortfall blocks the account)."""
        async def available(conn: Connection) -> int:
            read_at = self._read_on_db_clock(await conn.fetchval(f"SELECT {NOW}"), balance_read_at)
            sums = await conn.fetchrow(SUMS, *_key(account), read_at)
            if sums["shortfall"]:
                return 0
            return max(balance - int(sums["unsettled"]) - int(sums["burned"]) - int(sums["held"]), 0)

        return await self.db.run(available)

    async def extend(self, reservation_id: str, ttl: float) -> bool:
        """Push a live hold's expiry to now + ttl; False if it is gone or already expired."""
        async def extend(conn: Connection) -> bool:
            # Why only an unexpired row: once expired its credits may be held by another call.
            return rowcount(await conn.execute(
                "UPDATE reservations SET expires_at = ledger_now() + make_interval(secs => $1::float8)"
                " WHERE id = $2 AND expires_at >= ledger_now()", float(ttl), reservation_id)) == 1

        return await self.db.transaction(extend, durable=False)

    async def release(self, reservation_id: str) -> None:
        async def release(conn: Connection) -> None:
            await conn.execute("DELETE FROM reservations WHERE id = $1", reservation_id)

        await self.db.transaction(release, durable=False)

    async def charge(self, reservation: Reservation, amount: int, balance: int, balance_read_at: float) -> int:
        """Turn the reservation into a charge of `amount` (<= reserved); return credits remaining.

        Raises `ReservationExpired` (nothing charged) if the reservation is gone or expired."""
        if not 0 <= amount <= reservation.amount:
            raise ValueError(f"charge {amount} outside 0..{reservation.amount}")
        key = _key(reservation.account)

        async def charge(conn: Connection) -> int:
            # The account's lock first (as `reserve` takes it), inside ledger_charge: a reservation
            # of this account that runs meanwhile sees this hold either still held or already
            # charged, never neither. The read time only shapes the credits reported as remaining.
            done = await conn.fetchrow(CHARGE_CALL, *key, self.clock() - balance_read_at, reservation.id, amount,
                                       READ_SLACK)
            if not done["o_made"]:
                # Why refuse: an expired hold no longer counts against the balance, so its credits
                # may have been reserved (and charged) by another call; charging it too would
                # spend the same credit twice. The function took nothing back into the totals.
                raise ReservationExpired(reservation.id)
            return max(balance - done["o_unsettled"] - int(done["o_burned"]) - int(done["o_held"]), 0)

        # One call, its own transaction, committed with synchronous_commit on (the connection's).
        return await self.db.run(charge)

    async def charge_part(self, lease: Reservation, amount: int, request_id: str, service: str, balance: int,
                          balance_read_at: float) -> int:
        """Take `amount` from the live hold `lease` and charge it (ledger_charge_part: one round trip,
        committed with synchronous_commit on); return credits remaining (as `charge`).

        Raises `ReservationExpired` (nothing charged) if the hold is gone, expired or holds less."""
        if amount < 0:
            raise ValueError(f"charge {amount} below 0")
        key, charge_id = _key(lease.account), f"{lease.id}/{next(self._parts)}"

        async def charge_part(conn: Connection) -> int:
            done = await conn.fetchrow(CHARGE_PART_CALL, *key, self.clock() - balance_read_at, lease.id, amount,
                                       READ_SLACK, charge_id, request_id, service)
            if not done["o_made"]:
                # Why refuse: an expired hold's credits may have been reserved (and charged) by
                # another call, and a hold never pays for more than it holds.
                raise ReservationExpired(lease.id)
            return max(balance - done["o_unsettled"] - int(done["o_burned"]) - int(done["o_held"]), 0)

        return await self.db.run(charge_part)

    # ---- settlement ---------------------------------------------------------------------------

    async def pending_groups(self) -> list[PendingGroup]:
        async def groups(conn: Connection) -> list[PendingGroup]:
            # Housekeeping, once per settlement cycle: holds of processes that died long ago (a
            # reservation deletes only its own account's expired holds). SKIP LOCKED: rows a
            # reservation is deleting are left to it (waiting for them could deadlock with it).
            await conn.execute("DELETE FROM reservations WHERE id IN (SELECT id FROM reservations WHERE expires_at"
                               " < ledger_now() - interval '1 minute' LIMIT 10000 FOR UPDATE SKIP LOCKED)")
            found = await conn.fetch(
                "SELECT chain_id, contract, token_id, subscriber, SUM(amount) AS amount, array_agg(id ORDER BY id) AS ids"
                " FROM charges WHERE settled_at IS NULL AND settlement_id IS NULL"
                " GROUP BY chain_id, contract, token_id, subscriber ORDER BY MIN(id)")
            return [PendingGroup(_account(r), int(r["amount"]), tuple(r["ids"])) for r in found]

        return await self.db.run(groups)

    async def record_settlement(self, group: PendingGroup, burn_amount: int, operator: str, nonce: int | None,
                                tx_hash: str | None, raw_tx: str | None) -> Settlement:
        async def record(conn: Connection) -> Settlement:
            sid = await conn.fetchval(
                "INSERT INTO settlements (chain_id, contract, token_id, subscriber, amount, burn_amount, operator, nonce,"
                " tx_hash, raw_tx, status, created_at, updated_at) VALUES ($1, $2, $3, $4, $5, $6, $7, $8, $9, $10,"
                " 'recorded', ledger_now(), ledger_now()) RETURNING id",
                *_key(group.account), group.amount, burn_amount, operator, nonce, tx_hash, raw_tx)
            claimed = rowcount(await conn.execute(
                "UPDATE charges SET settlement_id = $1 WHERE id = ANY($2::bigint[]) AND settlement_id IS NULL"
                " AND settled_at IS NULL", sid, list(group.charge_ids)))
            if claimed != len(group.charge_ids):
                # Why: a charge may be in one live settlement only; anything else risks burning twice.
                raise RuntimeError(f"settlement {sid}: {len(group.charge_ids) - claimed} charge(s) already claimed")
            return Settlement(sid, group.account, group.amount, burn_amount, operator, nonce, tx_hash, raw_tx, "recorded")

        return await self.db.transaction(record)

    async def mark_sent(self, settlement_id: int) -> None:
        async def sent(conn: Connection) -> None:
            await conn.execute("UPDATE settlements SET status = 'sent', updated_at = ledger_now()"
                               " WHERE id = $1 AND status = 'recorded'", settlement_id)

        await self.db.transaction(sent)

    async def mark_confirmed(self, settlement_id: int, block_number: int) -> None:
        async def confirm(conn: Connection) -> None:
            row = await conn.fetchrow("SELECT * FROM settlements WHERE id = $1 FOR UPDATE", settlement_id)
            if row is None or row["status"] == "confirmed":
                return
            # confirmed_at on the database's clock: the burn was mined before it (its receipt was seen).
            await conn.execute("UPDATE settlements SET status = 'confirmed', block_number = $1, updated_at = ledger_now(),"
                               " confirmed_at = ledger_now() WHERE id = $2", block_number, settlement_id)
            await conn.execute("UPDATE charges SET settled_at = ledger_now() WHERE settlement_id = $1", settlement_id)
            key = _key(_account(row))
            await conn.execute(f"UPDATE account_totals SET unsettled = unsettled - $5 WHERE {ACCOUNT}", *key, row["amount"])
            if row["burn_amount"] < row["amount"]:
                await conn.execute(
                    "INSERT INTO shortfalls (chain_id, contract, token_id, subscriber, amount, settlement_id, created_at)"
                    " VALUES ($1, $2, $3, $4, $5, $6, ledger_now())",
                    *key, row["amount"] - row["burn_amount"], settlement_id)

        await self.db.transaction(confirm)

    async def mark_failed(self, settlement_id: int, error: str) -> None:
        """The transaction can never be mined: its charges go back to pending, to be settled again."""

        async def fail(conn: Connection) -> None:
            await conn.execute("UPDATE settlements SET status = 'failed', error = $1, updated_at = ledger_now()"
                               " WHERE id = $2 AND status IN ('recorded', 'sent')", error[:500], settlement_id)
            await conn.execute("UPDATE charges SET settlement_id = NULL WHERE settlement_id = $1 AND settled_at IS NULL",
                               settlement_id)

        await self.db.transaction(fail)

    async def unfinished_settlements(self) -> list[Settlement]:
        async def unfinished(conn: Connection) -> list[Settlement]:
            found = await conn.fetch("SELECT * FROM settlements WHERE status IN ('recorded', 'sent') ORDER BY nonce, id")
            return [_settlement(r) for r in found]

        return await self.db.run(unfinished)
