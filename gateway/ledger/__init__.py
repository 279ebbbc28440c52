"""The credit ledger: reservations, charges, settlements, shortfalls (SPEC §8).

`Ledger` is the small interface the request path and the settler need; the
embedded default is `SqliteLedger` (`sqlite`) on `SqliteDatabase` (`database`: one thread,
group commit, migrations), which also holds the sign-in state and the shared plan balances.
`PostgresLedger` (`postgres`, its reports in `postgres_reports`) on `PostgresDatabase`
(`postgres_database`, schema and queries in `postgres_schema`) implements the same methods with the same atomicity for replicas on several
machines. `backends` picks the pair from `metering.ledger`'s scheme; `settler_lease` elects the one
settler among replicas sharing a PostgreSQL ledger.

May import: nothing of the gateway (it is the bottom layer).

Money rules the implementations keep:
- `reserve` is atomic: balance - unsettled charges - open reservations >= amount, or refused.
- a hold lives `ttl` seconds unless `extend`ed; its owner renews it while its call is in flight,
  so only a hold whose process died (or stalled for a whole ttl) expires.
- `charge` takes only what is still reserved: a reservation that expired (its credits possibly
  reserved again by another call) is never charged; `ReservationExpired` is raised instead.
- `charge_part` takes part of a live hold (a worker's lease, shared by its calls in memory) and
  charges it in one transaction: never more than the hold still holds, never from an expired
  one; the hold shrinks by what was charged (and is gone once empty).
- a charge is durable once `charge` returns (the client sees it only after).
- a charge is in at most one live settlement; it is settled exactly once.
"""

from __future__ import annotations

from dataclasses import dataclass
from typing import Any, Protocol


@dataclass(frozen=True)
class Account:
    """One ERC-1155 credit balance: a subscriber's tokens of one id on one contract."""

    chain_id: int
    contract: str
    token_id: int
    subscriber: str


@dataclass(frozen=True)
class Reservation:
    id: str
    account: Account
    amount: int
    remaining: int  # what is still available to this subscriber after this reservation


@dataclass(frozen=True)
class PendingGroup:
    """Unsettled charges of one account, to be burned in one transaction."""

    account: Account
    amount: int
    charge_ids: tuple[int, ...]


@dataclass(frozen=True)
class Settlement:
    id: int
    account: Account
    amount: int          # credits charged in the group
    burn_amount: int     # what the transaction burns (less than amount on a shortfall)
    operator: str
    nonce: int | None    # None (and no transaction) when nothing is left to burn
    tx_hash: str | None
    raw_tx: str | None
    status: str          # recorded | sent | confirmed | failed


class InsufficientCredits(Exception):
    def __init__(self, available: int, shortfall: int = 0, held: int = 0) -> None:
        super().__init__(f"{available} credit(s) available")
        self.available = available
        self.shortfall = shortfall  # > 0: an unpaid shortfall blocks the account
        self.held = held  # credits of live holds (calls in flight, workers' leases) when refused


class ReservationExpired(Exception):
    """The reservation to charge is gone (expired, possibly re-reserved by another call): nothing charged."""

    def __init__(self, reservation_id: str) -> None:
        super().__init__(f"reservation {reservation_id} expired before it was charged")
        self.reservation_id = reservation_id


class LedgerUnavailable(Exception):
    """The ledger's database cannot be reached (connection refused or lost, pool exhausted for
    too long). Callers refuse the call 503: without the ledger nothing can be reserved or charged."""

    def __init__(self, detail: str) -> None:
        super().__init__(f"the ledger cannot be reached: {detail}")
        self.detail = detail


class Ledger(Protocol):
    async def open(self) -> None: ...
    async def close(self) -> None: ...

    # request path
    async def reserve(self, account: Account, service: str, amount: int, balance: int, balance_read_at: float,
                      request_id: str, ttl: float) -> Reservation: ...
    async def extend(self, reservation_id: str, ttl: float) -> bool: ...
    async def release(self, reservation_id: str) -> None: ...
    async def charge(self, reservation: Reservation, amount: int, balance: int, balance_read_at: float) -> int: ...
    async def charge_part(self, lease: Reservation, amount: int, request_id: str, service: str, balance: int,
                          balance_read_at: float) -> int: ...
    async def available(self, account: Account, balance: int, balance_read_at: float) -> int: ...

    # settlement
    async def pending_groups(self) -> list[PendingGroup]: ...
    async def record_settlement(self, group: PendingGroup, burn_amount: int, operator: str, nonce: int | None,
                                tx_hash: str | None, raw_tx: str | None) -> Settlement: ...
    async def mark_sent(self, settlement_id: int) -> None: ...
    async def mark_confirmed(self, settlement_id: int, block_number: int) -> None: ...
    async def mark_failed(self, settlement_id: int, error: str) -> None: ...
    async def unfinished_settlements(self) -> list[Settlement]: ...

    # shortfalls and reports
    async def oldest_unsettled_age(self) -> float: ...
    async def resolve_shortfalls(self, account: Account, note: str) -> int: ...
    async def usage(self, service: str | None = None, subscriber: str | None = None) -> list[dict[str, Any]]: ...
