"""Credits on the request path: reserve before forwarding, charge on a 2xx status line.

`Meter.reserve` holds the call's credits (a dynamic price holds its max) against the on-chain
balance net of unsettled charges and open reservations, or raises `InsufficientCredits`
(answered 402 by the http layer) before anything is forwarded. `Meter.complete` turns the hold
into a charge when the upstream's status line is 2xx (price: fixed, or the upstream's header
clamped to min..max) and releases it otherwise. The charge is in the ledger before the client
sees a byte of the answer.

A hold is written with a lifetime of the service's `timeout` + `metering.hold_margin` and is
renewed by a timer it owns (`Keeper`, every third of that lifetime) for as long as its call is
in flight, however slowly the client uploads: only the hold of a process that died expires. A
charge takes only what is still held: if the hold expired anyway (a stalled process), the call
is refused (`HoldExpired`, answered 503 `hold_expired`) and nothing is charged, because its
credits may already have been held and spent by another call.
"""

from __future__ import annotations

import asyncio
import weakref
from dataclasses import dataclass, field
from typing import ClassVar

import structlog

from gateway.config.model import EndpointRule, Price, ServiceConfig
from gateway import ledger as ledgers
from gateway.ledger import Account, Ledger, Reservation, ReservationExpired
from gateway.credits.prices import NotCovered, price_of, require_pass
from gateway.ops.observability import Metrics
from gateway.credits.plans import Balance, PlanChecker

log = structlog.get_logger("gateway.metering")
RESERVATION_GRACE = 60.0  # default `metering.hold_margin`: a hold's lifetime past the service's timeout
MIN_RENEW_EVERY = 0.05    # renewals never come faster than this (a tiny timeout in a test config)


class InsufficientCredits(NotCovered):
    """An erc1155 plan: the balance net of unsettled charges and holds cannot cover the call."""


class HoldExpired(Exception):
    """The hold expired before the call could be charged: nothing was charged."""

    def __init__(self, reservation_id: str) -> None:
        super().__init__("the credits held for this call expired before the upstream answered; "
                         "nothing was charged, retry the call")
        self.reservation_id = reservation_id


class Keeper:
    """Renews one hold every third of its lifetime until stopped.

    Why: a call may legitimately outlast the hold's lifetime (a slow upload, a long upstream
    wait); were the hold to expire meanwhile, its credits could be held by another call and spent
    twice. Only a process that dies (or stalls for a whole lifetime) stops renewing, and then its
    holds expire. A timer, not a task per call: the hot path pays for a renewal only when one is due."""

    __slots__ = ("ledger", "reservation_id", "ttl", "every", "request_id", "handle", "stopped")
    renewing: ClassVar[set[asyncio.Task]] = set()  # renewals in flight (kept referenced until done)

    def __init__(self, ledger: Ledger, reservation_id: str, ttl: float, request_id: str) -> None:
        self.ledger, self.reservation_id, self.ttl, self.request_id = ledger, reservation_id, ttl, request_id
        self.every = max(ttl / 3, MIN_RENEW_EVERY)
        self.stopped = False
        self.handle = asyncio.get_running_loop().call_later(self.every, self._due)

    def stop(self) -> None:
        self.stopped = True
        self.handle.cancel()

    def _due(self) -> None:
        if not self.stopped:
            task = asyncio.ensure_future(self._renew())
            self.renewing.add(task)
            task.add_done_callback(self.renewing.discard)

    async def _renew(self) -> None:
        try:
            alive = await self.ledger.extend(self.reservation_id, self.ttl)
        except Exception:  # noqa: BLE001 - a ledger hiccup: the next renewal tries again
            log.exception("hold_renewal_failed", request_id=self.request_id)
            alive = True
        if self.stopped:
            return
        if not alive:
            # Expired before it could be renewed (a stalled process): its charge will be refused.
            log.error("hold_lost", request_id=self.request_id)
            return
        self.handle = asyncio.get_running_loop().call_later(self.every, self._due)


@dataclass
class Hold:
    """Credits held for one call in flight, kept alive by `keeper` until charged or released."""

    reservation: Reservation
    price: Price
    balance: Balance
    keeper: Keeper | None = field(default=None, repr=False)

    def stop(self) -> None:
        """Stop renewing (the call is over: charged or released)."""
        if self.keeper is not None:
            self.keeper.stop()


class Meter:
    def __init__(self, ledger: Ledger, plans: PlanChecker, chain_ids: dict[str, int],
                 metrics: Metrics | None = None, hold_margin: float = RESERVATION_GRACE) -> None:
        self.ledger, self.plans, self.chain_ids = ledger, plans, chain_ids
        self.hold_margin = hold_margin
        self.metrics = metrics or Metrics()
        self._orphans: set[asyncio.Task] = set()  # releases of holds whose client left (kept referenced)

    async def reserve(self, service: ServiceConfig, rule: EndpointRule | None, subscriber: str,
                      request_id: str, price: Price | None = None) -> Hold | None:
        """Hold the call's credits, or raise `NotCovered`. None when nothing is metered (erc721 pass, price 0).

        `price`: decided for this very request (an MCP call priced by its tools); default: the rule's."""
        plan = service.plan
        assert plan is not None
        chain_id = self.chain_ids[plan.chain]
        price = price if price is not None else price_of(service, rule)
        if plan.standard == "erc721":
            # A pass grants access, not credits: check it, charge nothing.
            await require_pass(self.plans, chain_id, service, subscriber)
            return None
        if price.reserve == 0:
            return None  # a free endpoint: nothing to hold, nothing to charge
        balance = await self.plans.read(plan, subscriber)
        account = Account(chain_id, plan.contract, int(plan.token_id or 0), subscriber)
        ttl = service.timeout + self.hold_margin
        try:
            reservation = await self._hold(self.ledger.reserve(
                account, service.id, price.reserve, balance.amount, balance.read_at, request_id, ttl=ttl))
        except ledgers.InsufficientCredits as short:
            # Why: the balance net of unsettled charges and calls in flight cannot cover this call's
            # price (or an unpaid shortfall blocks the account); forward nothing, say how to pay.
            detail = (f"unpaid shortfall of {short.shortfall} credit(s) on this plan" if short.shortfall else
                      f"{short.available} credit(s) available, this call needs {price.reserve}")
            raise InsufficientCredits(detail, service, chain_id, price.reserve, short.available,
                                      short.shortfall) from None
        self.metrics.credits_reserved.labels(service.id).inc(price.reserve)
        hold = Hold(reservation, price, balance)
        hold.keeper = Keeper(self.ledger, reservation.id, ttl, request_id)
        # A safety net: a hold dropped without being charged or released stops being renewed.
        weakref.finalize(hold, hold.keeper.stop)
        return hold

    async def complete(self, hold: Hold | None, status: int, headers) -> dict[str, str]:
        """Charge on 2xx (return the credit headers for the client), release otherwise."""
        if hold is None:
            return {}
        if not 200 <= status < 300:
            # Only successful answers are paid for: errors, redirects and refusals release the hold.
            await self.release(hold)
            return {}
        hold.stop()
        amount = self.price_from(hold.price, headers)
        try:
            remaining = await _shielded(self.ledger.charge(hold.reservation, amount, hold.balance.amount,
                                                          hold.balance.read_at))
        except ReservationExpired:
            # Why refuse rather than relay for free: the hold's credits may already be spent by
            # another call, so this answer is unpaid; whatever made the hold expire must not
            # earn anyone free work. Nothing is charged; the client may retry.
            log.error("charge_refused_hold_expired", reservation=hold.reservation.id)
            raise HoldExpired(hold.reservation.id) from None
        return {"X-Credits-Charged": str(amount), "X-Credits-Remaining": str(remaining)}

    async def available(self, service: ServiceConfig, subscriber: str) -> int:
        """What the subscriber can spend now: the on-chain balance net of unsettled charges and holds."""
        plan = service.plan
        assert plan is not None
        balance = await self.plans.read(plan, subscriber)
        if plan.standard == "erc721":
            return balance.amount  # passes held: no credits to net
        account = Account(self.chain_ids[plan.chain], plan.contract, int(plan.token_id or 0), subscriber)
        return await self.ledger.available(account, balance.amount, balance.read_at)

    async def _hold(self, reserving) -> Reservation:
        """Await a reservation; if the client leaves meanwhile, release it as soon as it exists
        (instead of letting it block credits until it expires)."""
        task = asyncio.ensure_future(reserving)
        try:
            return await asyncio.shield(task)
        except asyncio.CancelledError:
            task.add_done_callback(self._release_orphan)
            raise

    def _release_orphan(self, task: asyncio.Task) -> None:
        if not task.cancelled() and task.exception() is None:
            self._orphans.add(orphan := asyncio.ensure_future(self.ledger.release(task.result().id)))
            orphan.add_done_callback(self._orphans.discard)

    async def release(self, hold: Hold | None) -> None:
        if hold is not None:
            hold.stop()
            await _shielded(self.ledger.release(hold.reservation.id))

    @staticmethod
    def price_from(price: Price, headers) -> int:
        if not price.is_dynamic:
            return int(price.fixed or 0)
        raw = headers.get(price.header, "")
        try:
            reported = int(raw.strip())
        except ValueError:
            # A missing or garbled price header is charged at the maximum that was reserved and
            # agreed in the plan; logged so the owner can fix the upstream.
            log.warning("price_header_invalid", header=price.header, value=raw[:40])
            return price.max
        return min(max(reported, price.min), price.max)


async def _shielded(aw):
    """Ledger writes finish even if the client goes away (the request task is cancelled)."""
    return await asyncio.shield(aw)
