"""The SQLite ledger's charges of calls in flight, many in one transaction and five statements.

`ChargeBatches.charge_part` is `SqliteLedger.charge_part`: take a call's price from its worker's
lease (a live hold) and record the charge. Calls that charge while the database thread is busy
join ONE batch, run as one pure transaction of the group commit: every lease's part is taken by
one UPDATE, every charge written by one INSERT, the unsettled totals by one upsert, and every
call's remaining credits read by one SELECT (each over a JSON array of the batch's rows).

Why: the database thread hands the GIL back to the event loop around every statement it runs,
and under load waiting for it back, not SQLite, is what a statement costs (~0.1-0.3 ms each on a
busy worker, measured). One call's charge took five statements; a batch of 30 now takes five.

The rules are `charge_part`'s: a lease is charged only while it is live and holds at least what
its calls in the batch take (one check for all of them, against the sum: a worker never lends
more than its lease holds, so the sum fits unless the lease expired); a lease that fails the
check charges none of its calls (each gets `ReservationExpired`); an emptied lease is deleted;
each caller is answered after the COMMIT (durable), with what remains as `charge_part` says.
"""

from __future__ import annotations

import asyncio
import itertools
import json
import threading
from typing import Awaitable, Callable

from gateway.ledger import Reservation, ReservationExpired
from gateway.ledger.database import SqliteDatabase
from gateway.ledger.sqlite_schema import account_key

# Row fields inside the JSON arrays: [chain_id, contract, token_id, subscriber] is an account.
_TAKE = ("UPDATE reservations SET amount = reservations.amount - j.value ->> 1"
         " FROM json_each(?1) AS j WHERE reservations.id = j.value ->> 0"
         " AND reservations.expires_at >= ?2 AND reservations.amount >= j.value ->> 1"
         " RETURNING reservations.id, reservations.amount")
_DROP_EMPTIED = "DELETE FROM reservations WHERE id IN (SELECT value FROM json_each(?1))"
_RECORD = ("INSERT INTO charges (reservation_id, request_id, chain_id, contract, token_id, subscriber, service,"
           " amount, created_at) SELECT value ->> 0, value ->> 1, value ->> 2, value ->> 3, value ->> 4,"
           " value ->> 5, value ->> 6, value ->> 7, ?2 FROM json_each(?1)")
_TOTALS = ("INSERT INTO account_totals (chain_id, contract, token_id, subscriber, unsettled)"
           " SELECT value ->> 0, value ->> 1, value ->> 2, value ->> 3, value ->> 4 FROM json_each(?1) WHERE true"
           " ON CONFLICT DO UPDATE SET unsettled = unsettled + excluded.unsettled")
# Per call: its balance (read at its time) net of unsettled charges, burns confirmed since that
# read and live holds: `SqliteLedger._available`, for every call of the batch at once.
_REMAINING = (
    "SELECT j.value ->> 4 - "
    " (SELECT COALESCE(SUM(unsettled), 0) FROM account_totals WHERE chain_id = j.value ->> 0"
    "   AND contract = j.value ->> 1 AND token_id = j.value ->> 2 AND subscriber = j.value ->> 3)"
    " - (SELECT COALESCE(SUM(amount), 0) FROM settlements WHERE chain_id = j.value ->> 0"
    "   AND contract = j.value ->> 1 AND token_id = j.value ->> 2 AND subscriber = j.value ->> 3"
    "   AND status = 'confirmed' AND updated_at > j.value ->> 5)"
    " - (SELECT COALESCE(SUM(amount), 0) FROM reservations WHERE chain_id = j.value ->> 0"
    "   AND contract = j.value ->> 1 AND token_id = j.value ->> 2 AND subscriber = j.value ->> 3"
    "   AND expires_at >= ?2)"
    " FROM json_each(?1) AS j ORDER BY j.key")


class _Part:
    """One call's charge, waiting for its batch."""

    __slots__ = ("lease", "amount", "charge_id", "request_id", "service", "balance", "read_at")

    def __init__(self, lease: Reservation, amount: int, charge_id: str, request_id: str, service: str,
                 balance: int, read_at: float) -> None:
        self.lease, self.amount, self.charge_id, self.request_id = lease, amount, charge_id, request_id
        self.service, self.balance, self.read_at = service, balance, read_at


class _Batch:
    """The calls charged in one transaction. Closed (joined by no one more) once it starts running;
    a rerun of the group commit runs the same calls again."""

    def __init__(self) -> None:
        self.parts: list[_Part] = []
        self.closed = False
        self.future: asyncio.Future | None = None


class ChargeBatches:
    def __init__(self, db: SqliteDatabase, clock: Callable[[], float]) -> None:
        self.db, self.clock = db, clock
        self._numbers = itertools.count(1)  # numbers the charges taken from one hold
        self._lock = threading.Lock()      # the open batch: joined on the loop, closed on the db thread
        self._open: _Batch | None = None

    def charge_part(self, lease: Reservation, amount: int, request_id: str, service: str, balance: int,
                    balance_read_at: float) -> Awaitable[int]:
        """Take `amount` from the live hold `lease` and charge it, durably; the answer: credits remaining.
        Joins the open batch at once (in call order); await the answer. It raises `ReservationExpired`
        (nothing charged) if the hold is gone, expired or holds less."""
        if amount < 0:
            raise ValueError(f"charge {amount} below 0")
        # charges.reservation_id is unique: one per part
        part = _Part(lease, amount, f"{lease.id}/{next(self._numbers)}", request_id, service, balance,
                     balance_read_at)
        with self._lock:
            batch = self._open
            if batch is None or batch.closed:
                batch = self._open = _Batch()
                batch.future = self.db.transaction(lambda conn, b=batch: self._run(conn, b), pure=True)
            batch.parts.append(part)
        return self._answer(batch.future, part)

    @staticmethod
    async def _answer(committed: asyncio.Future, part: _Part) -> int:
        outcomes = await asyncio.shield(committed)  # (shared by the batch's callers: one leaving cancels none)
        outcome = outcomes[part.charge_id]
        if isinstance(outcome, ReservationExpired):
            raise ReservationExpired(part.lease.id)
        return outcome

    @staticmethod
    def _fit(conn, parts: list[_Part], taken: dict[str, int], left: dict[str, int], now: float) -> list[_Part]:
        """The calls of leases `_TAKE` did not update, in order, while their live lease holds enough:
        taken from it too (into `left`); returns every call that is paid for."""
        short = [lease_id for lease_id in taken if lease_id not in left]
        held = dict(conn.execute("SELECT id, amount FROM reservations WHERE expires_at >= ?2"
                                 " AND id IN (SELECT value FROM json_each(?1))", (json.dumps(short), now)).fetchall())
        fitting: dict[str, int] = {}
        admitted = []
        for part in parts:
            lease_id = part.lease.id
            if lease_id in left:
                admitted.append(part)
            elif lease_id in held and fitting.get(lease_id, 0) + part.amount <= held[lease_id]:
                fitting[lease_id] = fitting.get(lease_id, 0) + part.amount
                admitted.append(part)
        if fitting:
            left.update(conn.execute(_TAKE, (json.dumps(list(fitting.items())), now)).fetchall())
        return admitted

    def _run(self, conn, batch: _Batch) -> dict[str, int | ReservationExpired]:
        """On the database thread, inside the group commit: the batch's charges."""
        with self._lock:
            batch.closed = True  # from here on the parts do not change (a rerun sees the same)
        parts, now = batch.parts, self.clock()
        taken: dict[str, int] = {}
        for part in parts:
            taken[part.lease.id] = taken.get(part.lease.id, 0) + part.amount
        left = dict(conn.execute(_TAKE, (json.dumps(list(taken.items())), now)).fetchall())
        admitted = parts
        if len(left) < len(taken):  # some lease could not pay for all of its calls: as many as it can
            admitted = self._fit(conn, parts, taken, left, now)
        # Why refuse a call whose lease paid nothing for it: an expired hold no longer counts against
        # the balance, so its credits may have been held (and charged) by another call; and a hold
        # never pays for more than it holds. Either way charging would spend a credit twice.
        charged = [part for part in admitted if part.lease.id in left]
        emptied = [lease_id for lease_id, amount in left.items() if amount == 0]
        if emptied:
            conn.execute(_DROP_EMPTIED, (json.dumps(emptied),))
        paid = {part.charge_id for part in charged}
        outcomes: dict[str, int | ReservationExpired] = {
            part.charge_id: ReservationExpired(part.lease.id) for part in parts if part.charge_id not in paid}
        if not charged:
            return outcomes
        keys = [account_key(p.lease.account) for p in charged]
        conn.execute(_RECORD, (json.dumps([
            [p.charge_id, p.request_id, *key, p.service, p.amount] for p, key in zip(charged, keys)]), now))
        totals: dict[tuple, int] = {}
        for p, key in zip(charged, keys):
            totals[key] = totals.get(key, 0) + p.amount
        conn.execute(_TOTALS, (json.dumps([[*key, amount] for key, amount in totals.items()]),))
        remaining = conn.execute(_REMAINING, (json.dumps([
            [*key, p.balance, p.read_at] for p, key in zip(charged, keys)]), now)).fetchall()
        for part, (value,) in zip(charged, remaining):
            outcomes[part.charge_id] = max(value, 0)
        return outcomes
