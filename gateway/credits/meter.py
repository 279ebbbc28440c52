"""Credits on the request path: reserve before forwarding, charge on a 2xx status line.

`Meter.reserve` holds the call's credits (a dynamic price holds its max) against the on-chain
balance net of unsettled charges and open reservations, or raises `InsufficientCredits`
(answered 402 by the http layer) before anything is forwarded. `Meter.complete` turns the hold
into a charge when the upstream's status line is 2xx (price: fixed, or the upstream's header
clamped to min..max) and releases it otherwise. The charge is in the ledger before the client
sees a byte of the answer.

A call's credits come from this worker's lease of the account (`leases`: one ledger hold lent
to many calls in memory; near the end of a balance, one hold per call as before), and its charge
takes its part of that hold in one durable transaction (`Ledger.charge_part`). A hold is written
with a lifetime of the service's `timeout` + `metering.hold_margin` and is renewed by a timer it
owns (`Keeper`, every third of that lifetime) for as long as it lives, however slowly a client
uploads: only the hold of a process that died expires. A charge takes only what is still held:
if the hold expired anyway (a stalled process), the call is refused (`HoldExpired`, answered 503
`hold_expired`) and nothing is charged, because its credits may already have been held and spent
by another call.
"""

from __future__ import annotations

import asyncio
import weakref
from dataclasses import dataclass, field
from typing import Callable, ClassVar

import structlog

from gateway.config.model import EndpointRule, Price, ServiceConfig
from gateway import ledger as ledgers
from gateway.ledger import Account, Ledger, ReservationExpired
from gateway.credits.leases import Lease, Leases
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

    __slots__ = ("ledger", "reservation_id", "ttl", "every", "request_id", "handle", "stopped", "on_lost")
    renewing: ClassVar[set[asyncio.Task]] = set()  # renewals in flight (kept referenced until done)

    def __init__(self, ledger: Ledger, reservation_id: str, ttl: float, request_id: str,
                 on_lost: Callable[[], None] | None = None) -> None:
        self.ledger, self.reservation_id, self.ttl, self.request_id = ledger, reservation_id, ttl, request_id
        self.on_lost = on_lost  # told when the hold turns out to have expired
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
            if self.on_lost is not None:
                self.on_lost()
            return
        self.handle = asyncio.get_running_loop().call_later(self.every, self._due)


@dataclass
class Hold:
    """Credits lent to one call in flight from this worker's `lease`, until charged or released."""

    lease: Lease
    amount: int  # lent: the price's reserve
    price: Price
    balance: Balance
    service: str
    request_id: str
    finalizer: weakref.finalize | None = field(default=None, repr=False)
    returned: bool = False  # given back to the lease (charged or released): exactly once

    def give_back(self, leases: Leases, charged: int = 0) -> bool:
        """The call is over: what was lent goes back to the lease, less `charged`; once only (a
        call refused at its charge is released again by the pipeline). True: release the lease."""
        if self.returned:
            return False
        self.returned = True
        if self.finalizer is not None:
            self.finalizer.detach()  # the safety net (see `Meter.reserve`) is not needed
        return leases.give_back(self.lease, self.amount, charged)


class Meter:
    def __init__(self, ledger: Ledger, plans: PlanChecker, chain_ids: dict[str, int],
                 metrics: Metrics | None = None, hold_margin: float = RESERVATION_GRACE, workers: int = 1,
                 leases: Leases | None = None) -> None:
        self.ledger, self.plans, self.chain_ids = ledger, plans, chain_ids
        self.hold_margin = hold_margin
        self.metrics = metrics or Metrics()
        self.leases = leases or Leases(ledger, workers)
        self.leases.keeper = self._keeper  # each lease's hold is renewed while it lives

    def _keeper(self, lease: Lease) -> Keeper:
        rid = lease.reservation.id
        return Keeper(self.ledger, rid, lease.ttl, f"lease {rid}", on_lost=lambda: self.leases.expired(lease))

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
            lease = await self.leases.lend(account, service.id, price.reserve, balance.amount, balance.read_at,
                                           request_id, ttl)
        except ledgers.InsufficientCredits as short:
            # Why: the balance net of unsettled charges and calls in flight cannot cover this call's
            # price (or an unpaid shortfall blocks the account); forward nothing, say how to pay.
            detail = (f"unpaid shortfall of {short.shortfall} credit(s) on this plan" if short.shortfall else
                      f"{short.available} credit(s) available, this call needs {price.reserve}")
            raise InsufficientCredits(detail, service, chain_id, price.reserve, short.available,
                                      short.shortfall) from None
        self.metrics.count_credits("reserved", service.id, price.reserve)
        hold = Hold(lease, price.reserve, price, balance, service.id, request_id)
        # A safety net: a hold dropped without being charged or released gives its credits back
        # to the lease (which then goes back to the ledger when idle).
        hold.finalizer = weakref.finalize(hold, self.leases.give_back, lease, price.reserve)
        return hold

    async def complete(self, hold: Hold | None, status: int, headers) -> dict[str, str]:
        """Charge on 2xx (return the credit headers for the client), release otherwise.

        Not to be cancelled midway (the charge may commit without its hold being given back): the
        pipeline awaits it in a task the client cannot cancel (`carried_through`) or shielded."""
        if hold is None:
            return {}
        if not 200 <= status < 300:
            # Only successful answers are paid for: errors, redirects and refusals release the hold.
            await self.release(hold)
            return {}
        amount = self.price_from(hold.price, headers)
        try:
            remaining = await self._charge(hold, amount)
        except ReservationExpired:
            # Why refuse rather than relay for free: the hold's credits may already be spent by
            # another call, so this answer is unpaid; whatever made the hold expire must not
            # earn anyone free work. Nothing is charged; the client may retry.
            log.error("charge_refused_hold_expired", reservation=hold.lease.reservation.id)
            raise HoldExpired(hold.lease.reservation.id) from None
        return {"X-Credits-Charged": str(amount), "X-Credits-Remaining": str(remaining)}

    async def _charge(self, hold: Hold, amount: int) -> int:
        """Charge `amount` from the lease (durable) and give the rest of what was lent back to it;
        the credits remaining, this worker's unlent lease credits included (the subscriber's to spend)."""
        lease = hold.lease
        try:
            remaining = await self.ledger.charge_part(lease.reservation, amount, hold.request_id, hold.service,
                                                      hold.balance.amount, hold.balance.read_at)
        except ReservationExpired:
            hold.returned = True
            self.leases.expired(lease)  # gone from the ledger: it lends nothing more
            raise
        except BaseException:
            if hold.give_back(self.leases):  # nothing charged (the transaction failed)
                await self.leases.release(lease)
            raise
        release = hold.give_back(self.leases, amount)
        remaining += self.leases.free(lease.reservation.account)
        if release:
            await self.leases.release(lease)
        return remaining

    async def available(self, service: ServiceConfig, subscriber: str) -> int:
        """What the subscriber can spend now: the on-chain balance net of unsettled charges and holds,
        plus this worker's unlent lease credits (other workers' leases count as held)."""
        plan = service.plan
        assert plan is not None
        balance = await self.plans.read(plan, subscriber)
        if plan.standard == "erc721":
            return balance.amount  # passes held: no credits to net
        account = Account(self.chain_ids[plan.chain], plan.contract, int(plan.token_id or 0), subscriber)
        return await self.ledger.available(account, balance.amount, balance.read_at) + self.leases.free(account)

    async def release(self, hold: Hold | None) -> None:
        if hold is not None and hold.give_back(self.leases):
            await self.leases.release(hold.lease)  # (forgotten at once, released even if the client left)

    async def close(self) -> None:
        """Shutdown: this worker's leases go back to the ledger."""
        await self.leases.close()

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
