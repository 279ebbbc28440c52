"""The embedded ledger: SQLite through `SqliteDatabase` (one thread, WAL, fsync on commit).

Every method that decides about money runs in one `BEGIN IMMEDIATE` transaction,
which serializes it against every other writer, in this process or another
worker process sharing the file.
"""

from __future__ import annotations

import sqlite3
import time
import uuid
from typing import Any, Awaitable, Callable

from gateway.ledger.database import SqliteDatabase, rows
from gateway.ledger.sqlite_charges import ChargeBatches
from gateway.ledger.sqlite_schema import MIGRATIONS, account_key
from gateway.ledger import Account, InsufficientCredits, PendingGroup, Reservation, ReservationExpired, Settlement

_ACCOUNT = "chain_id = ? AND contract = ? AND token_id = ? AND subscriber = ?"


def _account(row: sqlite3.Row | dict) -> Account:
    return Account(row["chain_id"], row["contract"], int(row["token_id"]), row["subscriber"])


class SqliteLedger:
    def __init__(self, db: SqliteDatabase, clock: Callable[[], float] = time.time) -> None:
        self.db = db
        self.clock = clock
        self._charges = ChargeBatches(db, lambda: self.clock())  # (a test may swap the clock)

    async def open(self) -> None:
        await self.db.migrate("ledger", MIGRATIONS)

    async def close(self) -> None:
        """The database is shared and closed by its owner."""

    # ---- request path -------------------------------------------------------------------------

    def _available(self, conn: sqlite3.Connection, account: Account, balance: int, read_at: float, now: float) -> int:
        # Charges count against the on-chain balance until their burn is in it: unsettled ones,
        # and ones settled after the balance was read (that balance is from before the burn).
        # (One statement: this runs in every reserve and charge.)
        key = account_key(account)
        (unsettled, burned_since, held) = conn.execute(
            f"SELECT (SELECT COALESCE(SUM(unsettled), 0) FROM account_totals WHERE {_ACCOUNT}),"
            f" (SELECT COALESCE(SUM(amount), 0) FROM settlements WHERE {_ACCOUNT} AND status = 'confirmed'"
            "  AND updated_at > ?),"
            f" (SELECT COALESCE(SUM(amount), 0) FROM reservations WHERE {_ACCOUNT} AND expires_at >= ?)",
            (*key, *key, read_at, *key, now),
        ).fetchone()
        return balance - unsettled - burned_since - held

    def _open_shortfall(self, conn: sqlite3.Connection, account: Account) -> int:
        (amount,) = conn.execute(
            f"SELECT COALESCE(SUM(amount), 0) FROM shortfalls WHERE {_ACCOUNT} AND resolved_at IS NULL", account_key(account)
        ).fetchone()
        return amount

    async def reserve(self, account: Account, service: str, amount: int, balance: int, balance_read_at: float,
                      request_id: str, ttl: float) -> Reservation:
        def reserve(conn: sqlite3.Connection) -> Reservation:
            now = self.clock()
            conn.execute("DELETE FROM reservations WHERE expires_at < ?", (now,))
            shortfall = self._open_shortfall(conn, account)
            if shortfall:
                # Why: tokens moved away before a burn; until that is resolved, nothing more is sold.
                raise InsufficientCredits(0, shortfall)
            available = self._available(conn, account, balance, balance_read_at, now)
            if available < amount:
                (held,) = conn.execute(f"SELECT COALESCE(SUM(amount), 0) FROM reservations WHERE {_ACCOUNT}",
                                       account_key(account)).fetchone()  # (expired ones were deleted above)
                raise InsufficientCredits(max(available, 0), held=held)
            rid = uuid.uuid4().hex
            conn.execute("INSERT INTO reservations VALUES (?, ?, ?, ?, ?, ?, ?, ?, ?)",
                         (rid, *account_key(account), service, amount, request_id, now + ttl))
            return Reservation(rid, account, amount, available - amount)

        # Not fsynced: a hold only matters while its process lives (after a crash it is void anyway).
        return await self.db.transaction(reserve, durable=False, pure=True)

    async def available(self, account: Account, balance: int, balance_read_at: float) -> int:
        """What a reservation could take now (0 while an unpaid shortfall blocks the account)."""
        def available(conn: sqlite3.Connection) -> int:
            if self._open_shortfall(conn, account):
                return 0
            return max(self._available(conn, account, balance, balance_read_at, self.clock()), 0)

        return await self.db.run(available)

    async def extend(self, reservation_id: str, ttl: float) -> bool:
        """Push a live hold's expiry to now + ttl; False if it is gone or already expired."""
        def extend(conn: sqlite3.Connection) -> bool:
            now = self.clock()
            # Why only an unexpired row: once expired its credits may be held by another call.
            return conn.execute("UPDATE reservations SET expires_at = ? WHERE id = ? AND expires_at >= ?",
                                (now + ttl, reservation_id, now)).rowcount == 1

        return await self.db.transaction(extend, durable=False, pure=True)

    async def release(self, reservation_id: str) -> None:
        await self.db.transaction(lambda conn: conn.execute("DELETE FROM reservations WHERE id = ?", (reservation_id,)),
                                  durable=False, pure=True)

    async def charge(self, reservation: Reservation, amount: int, balance: int, balance_read_at: float) -> int:
        """Turn the reservation into a charge of `amount` (<= reserved); return credits remaining.

        Raises `ReservationExpired` (nothing charged) if the reservation is gone or expired."""
        if not 0 <= amount <= reservation.amount:
            raise ValueError(f"charge {amount} outside 0..{reservation.amount}")

        def charge(conn: sqlite3.Connection) -> int:
            now = self.clock()
            row = conn.execute("SELECT service, request_id, expires_at FROM reservations WHERE id = ?",
                               (reservation.id,)).fetchone()
            conn.execute("DELETE FROM reservations WHERE id = ?", (reservation.id,))
            if row is None or row["expires_at"] < now:
                # Why refuse: an expired hold no longer counts against the balance, so its credits
                # may have been reserved (and charged) by another call; charging it too would
                # spend the same credit twice.
                raise ReservationExpired(reservation.id)
            service, request_id = row["service"], row["request_id"]
            conn.execute(
                "INSERT INTO charges (reservation_id, request_id, chain_id, contract, token_id, subscriber, service,"
                " amount, created_at) VALUES (?, ?, ?, ?, ?, ?, ?, ?, ?)",
                (reservation.id, request_id, *account_key(reservation.account), service, amount, now),
            )
            conn.execute(
                "INSERT INTO account_totals (chain_id, contract, token_id, subscriber, unsettled) VALUES (?, ?, ?, ?, ?)"
                " ON CONFLICT DO UPDATE SET unsettled = unsettled + excluded.unsettled",
                (*account_key(reservation.account), amount),
            )
            return max(self._available(conn, reservation.account, balance, balance_read_at, now), 0)

        return await self.db.transaction(charge, pure=True)

    def charge_part(self, lease: Reservation, amount: int, request_id: str, service: str, balance: int,
                    balance_read_at: float) -> Awaitable[int]:
        """Take `amount` from the live hold `lease` and charge it, in one durable transaction; the
        answer: credits remaining (as `charge`). The hold shrinks by `amount`; once empty it is gone.
        Calls charging at the same time share the transaction and its statements (`sqlite_charges`):
        the call joins it at once, await the answer.

        The answer raises `ReservationExpired` (nothing charged) if the hold is gone, expired or
        holds less."""
        return self._charges.charge_part(lease, amount, request_id, service, balance, balance_read_at)

    # ---- settlement ---------------------------------------------------------------------------

    async def pending_groups(self) -> list[PendingGroup]:
        def groups(conn: sqlite3.Connection) -> list[PendingGroup]:
            result = conn.execute(
                "SELECT chain_id, contract, token_id, subscriber, SUM(amount) AS amount, GROUP_CONCAT(id) AS ids"
                " FROM charges WHERE settled_at IS NULL AND settlement_id IS NULL"
                " GROUP BY chain_id, contract, token_id, subscriber ORDER BY MIN(id)"
            ).fetchall()
            return [PendingGroup(_account(r), r["amount"], tuple(int(i) for i in r["ids"].split(","))) for r in result]

        return await self.db.run(groups)

    async def record_settlement(self, group: PendingGroup, burn_amount: int, operator: str, nonce: int | None,
                                tx_hash: str | None, raw_tx: str | None) -> Settlement:
        def record(conn: sqlite3.Connection) -> Settlement:
            now = self.clock()
            cur = conn.execute(
                "INSERT INTO settlements (chain_id, contract, token_id, subscriber, amount, burn_amount, operator,"
                " nonce, tx_hash, raw_tx, status, created_at, updated_at) VALUES (?, ?, ?, ?, ?, ?, ?, ?, ?, ?, 'recorded', ?, ?)",
                (*account_key(group.account), group.amount, burn_amount, operator, nonce, tx_hash, raw_tx, now, now),
            )
            sid = cur.lastrowid
            marks = ",".join("?" * len(group.charge_ids))
            claimed = conn.execute(
                f"UPDATE charges SET settlement_id = ? WHERE id IN ({marks}) AND settlement_id IS NULL AND settled_at IS NULL",
                (sid, *group.charge_ids),
            ).rowcount
            if claimed != len(group.charge_ids):
                # Why: a charge may be in one live settlement only; anything else risks burning twice.
                raise RuntimeError(f"settlement {sid}: {len(group.charge_ids) - claimed} charge(s) already claimed")
            return Settlement(sid, group.account, group.amount, burn_amount, operator, nonce, tx_hash, raw_tx, "recorded")

        return await self.db.transaction(record)

    async def mark_sent(self, settlement_id: int) -> None:
        await self.db.transaction(lambda conn: conn.execute(
            "UPDATE settlements SET status = 'sent', updated_at = ? WHERE id = ? AND status = 'recorded'",
            (self.clock(), settlement_id)))

    async def mark_confirmed(self, settlement_id: int, block_number: int) -> None:
        def confirm(conn: sqlite3.Connection) -> None:
            now = self.clock()
            row = conn.execute("SELECT * FROM settlements WHERE id = ?", (settlement_id,)).fetchone()
            if row is None or row["status"] == "confirmed":
                return
            conn.execute("UPDATE settlements SET status = 'confirmed', block_number = ?, updated_at = ? WHERE id = ?",
                         (block_number, now, settlement_id))
            conn.execute("UPDATE charges SET settled_at = ? WHERE settlement_id = ?", (now, settlement_id))
            conn.execute(f"UPDATE account_totals SET unsettled = unsettled - ? WHERE {_ACCOUNT}",
                         (row["amount"], row["chain_id"], row["contract"], row["token_id"], row["subscriber"]))
            if row["burn_amount"] < row["amount"]:
                conn.execute(
                    "INSERT INTO shortfalls (chain_id, contract, token_id, subscriber, amount, settlement_id, created_at)"
                    " VALUES (?, ?, ?, ?, ?, ?, ?)",
                    (row["chain_id"], row["contract"], row["token_id"], row["subscriber"],
                     row["amount"] - row["burn_amount"], settlement_id, now),
                )

        await self.db.transaction(confirm)

    async def mark_failed(self, settlement_id: int, error: str) -> None:
        """The transaction can never be mined: its charges go back to pending, to be settled again."""

        def fail(conn: sqlite3.Connection) -> None:
            conn.execute("UPDATE settlements SET status = 'failed', error = ?, updated_at = ? WHERE id = ? "
                         "AND status IN ('recorded', 'sent')", (error[:500], self.clock(), settlement_id))
            conn.execute("UPDATE charges SET settlement_id = NULL WHERE settlement_id = ? AND settled_at IS NULL",
                         (settlement_id,))

        await self.db.transaction(fail)

    async def unfinished_settlements(self) -> list[Settlement]:
        def unfinished(conn: sqlite3.Connection) -> list[Settlement]:
            result = conn.execute("SELECT * FROM settlements WHERE status IN ('recorded', 'sent') ORDER BY nonce").fetchall()
            return [Settlement(r["id"], _account(r), r["amount"], r["burn_amount"], r["operator"], r["nonce"],
                               r["tx_hash"], r["raw_tx"], r["status"]) for r in result]

        return await self.db.run(unfinished)

    # ---- shortfalls and reports ---------------------------------------------------------------

    async def oldest_unsettled_age(self) -> float:
        """Seconds since the oldest charge not burned yet was made (0 when none): settlement lag."""

        def query(conn: sqlite3.Connection) -> float:
            (oldest,) = conn.execute("SELECT MIN(created_at) FROM charges WHERE settled_at IS NULL").fetchone()
            return max(self.clock() - oldest, 0.0) if oldest is not None else 0.0

        return await self.db.run(query)

    async def resolve_shortfalls(self, account: Account, note: str) -> int:
        return await self.db.transaction(lambda conn: conn.execute(
            f"UPDATE shortfalls SET resolved_at = ?, note = ? WHERE {_ACCOUNT} AND resolved_at IS NULL",
            (self.clock(), note, *account_key(account))).rowcount)

    async def usage(self, service: str | None = None, subscriber: str | None = None) -> list[dict[str, Any]]:
        def usage(conn: sqlite3.Connection) -> list[dict[str, Any]]:
            where, args = ["1 = 1"], []
            if service:
                where.append("c.service = ?")
                args.append(service)
            if subscriber:
                where.append("LOWER(c.subscriber) = LOWER(?)")
                args.append(subscriber)
            found = rows(conn.execute(
                "SELECT c.service, c.subscriber, c.chain_id, c.contract, c.token_id, COUNT(*) AS calls,"
                " SUM(c.amount) AS charged,"
                " SUM(CASE WHEN c.settled_at IS NOT NULL THEN c.amount ELSE 0 END) AS settled,"
                " GROUP_CONCAT(DISTINCT CASE WHEN s.status = 'confirmed' THEN s.tx_hash END) AS burn_txs"
                " FROM charges c LEFT JOIN settlements s ON s.id = c.settlement_id"
                f" WHERE {' AND '.join(where)} GROUP BY c.service, c.subscriber, c.chain_id, c.contract, c.token_id"
                " ORDER BY c.service, c.subscriber", args))
            for row in found:
                row["pending"] = row["charged"] - row["settled"]
                (row["shortfall"],) = conn.execute(
                    f"SELECT COALESCE(SUM(amount), 0) FROM shortfalls WHERE {_ACCOUNT} AND resolved_at IS NULL",
                    (row["chain_id"], row["contract"], row["token_id"], row["subscriber"])).fetchone()
                row["burn_txs"] = sorted((row["burn_txs"] or "").split(",")) if row["burn_txs"] else []
            return found

        return await self.db.run(usage)
