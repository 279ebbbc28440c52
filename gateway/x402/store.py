"""The durable record of x402 payments: one row per accepted authorization, in the gateway database.

`x402_store(db)` picks the implementation for the database (`X402Store`: SQLite;
`PostgresX402Store` in `store_postgres`: the same table and rules for replicas). A row's life (the
money rules):

    accepted --(upstream 2xx)--> owed --(transfer mined)--> settled
        |                          \\--(nonce used elsewhere, expired, unfunded)--> lost
        \\--(non-2xx, client gone before the upstream had the call, or never answered)--> void

- `record` is durable before the call is forwarded, and unique per (network, asset, payer, nonce):
  an authorization is accepted once, ever (a replay is refused even if the first was voided).
- `mark` moves a row only from the status it is expected in, so two workers (or a worker and the
  reconciler) never both act on one row's transition.
- an `owed` row left by a crash is finished by `gateway.x402.payments.X402Payments.reconcile`
  from the chain's `authorizationState`, never submitted blindly twice.
"""

from __future__ import annotations

import json
import sqlite3
import time
from dataclasses import dataclass
from typing import Any, Callable

from gateway.ledger.database import SqliteDatabase, rows

COMPONENT = "x402"
SQLITE_MIGRATIONS = [
    """
    CREATE TABLE x402_payments (
        id INTEGER PRIMARY KEY,
        service TEXT NOT NULL,
        request_id TEXT NOT NULL,
        network TEXT NOT NULL,
        asset TEXT NOT NULL,
        payer TEXT NOT NULL,
        nonce TEXT NOT NULL,
        pay_to TEXT NOT NULL,
        amount TEXT NOT NULL,
        valid_before INTEGER NOT NULL,
        payload TEXT NOT NULL,
        requirements TEXT NOT NULL,
        status TEXT NOT NULL,
        tx_hash TEXT,
        error TEXT,
        created_at REAL NOT NULL,
        expires_at REAL NOT NULL,
        updated_at REAL NOT NULL,
        UNIQUE (network, asset, payer, nonce)
    );
    CREATE INDEX x402_payments_status ON x402_payments (status, updated_at)
    """,
]


class AlreadySeen(Exception):
    """This authorization (payer, nonce) was accepted before: a replay."""


@dataclass(frozen=True)
class Payment:
    """An authorization to record: `payload` and `requirements` as the SDK's JSON (by alias)."""

    service: str
    request_id: str
    network: str
    asset: str
    payer: str
    nonce: str
    pay_to: str
    amount: int
    valid_before: int
    payload: dict[str, Any]
    requirements: dict[str, Any]
    expires_at: float      # an `accepted` row older than this lost its call (the process died)


@dataclass(frozen=True)
class Row:
    id: int
    payment: Payment
    status: str
    tx_hash: str | None


def x402_store(db, clock: Callable[[], float] = time.time):
    """The x402 store kept in `db` (a `gateway.ledger.backends.Database`)."""
    if isinstance(db, SqliteDatabase):
        return X402Store(db, clock)
    from gateway.x402.store_postgres import PostgresX402Store
    return PostgresX402Store(db, clock)


class X402Store:
    def __init__(self, db: SqliteDatabase, clock: Callable[[], float] = time.time) -> None:
        self.db, self.clock = db, clock

    async def open(self) -> None:
        await self.db.migrate(COMPONENT, SQLITE_MIGRATIONS)

    async def record(self, p: Payment) -> int:
        """Write the accepted authorization durably; `AlreadySeen` if its nonce was ever accepted."""
        now = self.clock()

        def insert(conn: sqlite3.Connection) -> int:
            try:
                cur = conn.execute(
                    "INSERT INTO x402_payments (service, request_id, network, asset, payer, nonce, pay_to, amount,"
                    " valid_before, payload, requirements, status, created_at, expires_at, updated_at)"
                    " VALUES (?, ?, ?, ?, ?, ?, ?, ?, ?, ?, ?, 'accepted', ?, ?, ?)",
                    (p.service, p.request_id, p.network, p.asset.lower(), p.payer.lower(), p.nonce.lower(),
                     p.pay_to, str(p.amount), p.valid_before, json.dumps(p.payload), json.dumps(p.requirements),
                     now, p.expires_at, now))
            except sqlite3.IntegrityError:
                raise AlreadySeen(p.nonce) from None
            return int(cur.lastrowid)

        return await self.db.transaction(insert)

    async def seen(self, network: str, asset: str, payer: str, nonce: str) -> bool:
        """Whether this authorization was ever accepted (a cheap look before any chain call)."""
        def select(conn: sqlite3.Connection) -> bool:
            return conn.execute(
                "SELECT 1 FROM x402_payments WHERE network = ? AND asset = ? AND payer = ? AND nonce = ?",
                (network, asset.lower(), payer.lower(), nonce.lower())).fetchone() is not None

        return await self.db.run(select)

    async def mark(self, payment_id: int, frm: tuple[str, ...], to: str, tx_hash: str | None = None,
                   error: str | None = None) -> bool:
        """Move a row from one of `frm` to `to`; False if it was not in one of them (someone else moved it)."""
        now = self.clock()
        marks = ",".join("?" * len(frm))

        def update(conn: sqlite3.Connection) -> bool:
            cur = conn.execute(
                f"UPDATE x402_payments SET status = ?, tx_hash = COALESCE(?, tx_hash), error = COALESCE(?, error),"
                f" updated_at = ? WHERE id = ? AND status IN ({marks})", (to, tx_hash, error, now, payment_id, *frm))
            return cur.rowcount == 1

        return await self.db.transaction(update)

    async def unfinished(self, owed_before: float) -> list[Row]:
        """Rows to reconcile: `owed` since before `owed_before`, and `accepted` rows past `expires_at`."""
        now = self.clock()

        def select(conn: sqlite3.Connection) -> list[Row]:
            found = rows(conn.execute(
                "SELECT * FROM x402_payments WHERE (status = 'owed' AND updated_at <= ?)"
                " OR (status = 'accepted' AND expires_at < ?) ORDER BY id LIMIT 500", (owed_before, now)))
            return [row_of(r) for r in found]

        return await self.db.run(select)

    async def get(self, payment_id: int) -> Row | None:
        def select(conn: sqlite3.Connection) -> list[Row]:
            return [row_of(r) for r in rows(conn.execute("SELECT * FROM x402_payments WHERE id = ?", (payment_id,)))]

        found = await self.db.run(select)
        return found[0] if found else None

    async def usage(self, service: str | None = None, payer: str | None = None) -> list[dict[str, Any]]:
        """Per service, payer and status: payments and their total (atomic units of `asset`)."""
        where, args = [], []
        if service:
            where.append("service = ?"), args.append(service)
        if payer:
            where.append("payer = ?"), args.append(payer.lower())
        sql = ("SELECT service, payer, network, asset, status, COUNT(*) AS payments, amount, "
               "MIN(created_at) AS first_at, MAX(created_at) AS last_at FROM x402_payments"
               + (" WHERE " + " AND ".join(where) if where else "")
               + " GROUP BY service, payer, network, asset, status, amount ORDER BY service, payer, status")

        def select(conn: sqlite3.Connection) -> list[dict[str, Any]]:
            return rows(conn.execute(sql, args))

        return merged_usage(await self.db.run(select))


def merged_usage(found: list[dict[str, Any]]) -> list[dict[str, Any]]:
    """Rows grouped by (..., status, amount) merged per status, amounts summed as integers.

    Why summed here, not in SQL: amounts are uint256 decimal strings (SQLite integers are 64-bit)."""
    merged: dict[tuple, dict[str, Any]] = {}
    for r in found:
        key = (r["service"], r["payer"], r["network"], r["asset"], r["status"])
        m = merged.setdefault(key, {**{k: r[k] for k in ("service", "payer", "network", "asset", "status")},
                                    "payments": 0, "amount": 0, "first_at": r["first_at"], "last_at": r["last_at"]})
        m["payments"] += int(r["payments"])
        m["amount"] += int(r["amount"]) * int(r["payments"])
        m["first_at"], m["last_at"] = min(m["first_at"], r["first_at"]), max(m["last_at"], r["last_at"])
    return [m | {"amount": str(m["amount"])} for m in merged.values()]


def row_of(r: Any) -> Row:
    payment = Payment(service=r["service"], request_id=r["request_id"], network=r["network"], asset=r["asset"],
                      payer=r["payer"], nonce=r["nonce"], pay_to=r["pay_to"], amount=int(r["amount"]),
                      valid_before=int(r["valid_before"]), payload=json.loads(r["payload"]),
                      requirements=json.loads(r["requirements"]), expires_at=float(r["expires_at"]))
    return Row(id=int(r["id"]), payment=payment, status=r["status"], tx_hash=r["tx_hash"])
