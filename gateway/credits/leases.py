"""Leases: a worker's slice of an account's credits, lent to its calls in memory.

A call used to cost the ledger two transactions: a hold (`reserve`) and its charge. Here a worker
holds a slice of the account's available credits with ONE ordinary ledger hold (a lease, renewed
by a `Keeper` while it lives) and lends each call its credits from it without touching the ledger;
the call's charge takes its part of the lease and records it in one durable transaction
(`Ledger.charge_part`). Why this keeps the money rules:
- the ledger still decides every credit: a lease is a hold like any other (atomic against the
  balance net of charges and every other hold, of this worker or any other, on any replica), and
  in memory a lease never lends more than it holds (`free = held - lent >= 0`, one event loop);
- a charge takes only what the live lease still holds (`charge_part` refuses otherwise), so an
  expired lease (a stalled worker) charges nothing: its calls get `HoldExpired`, as before;
- a lease is void after a crash, as any hold: it expires, and no charge a client saw is lost
  (the charge is durable before the answer's first byte).

Sizing, so a lease never starves the others: L = max(price, min(lease_max, available //
(SHARE * workers))), `available` as the ledger last said (or the balance read, an upper bound).
Near the end of a balance that is exactly one call's price, and such a lease is released as soon
as its call is done: one hold per call. So is the lease of an account in no use here (no call in
the last `idle` seconds: a lone call, the common case of an agent calling every few seconds): its
charge empties the hold and deletes it in the same transaction, two ledger transactions per call
and no idle hold left behind. An account in use (a call within `idle` seconds, or concurrent
calls) gets a larger lease, released after `idle` seconds without a call (a timer per lease,
re-armed lazily: no task per call) and on shutdown (`close`). A worker refused while credits are
held elsewhere (other workers' leases or calls in flight) asks again every `retry_every` seconds
for up to `wait` seconds, long enough for an idle lease to come back: a 402 is then what the call
would have got without leases, except while another worker keeps using its lease (its credits
are spent by its calls, none are lost).
"""

from __future__ import annotations

import asyncio
import time
from typing import Awaitable, Callable

import structlog

from gateway import ledger as ledgers
from gateway.ledger import Account, Ledger, Reservation

log = structlog.get_logger("gateway.metering")
LEASE_MAX = 1000   # credits one lease may hold at most
LEASE_IDLE = 1.0   # seconds without a call before a lease's unused credits go back to the ledger
LEASE_WAIT = 1.5   # how long a refused worker keeps asking while credits are held elsewhere (> idle + slack)
LEASE_RETRY = 0.1  # between two of those asks
RECENT_MAX = 10_000  # accounts whose last call time is kept (a hint: bounded)
SHARE = 4          # a lease takes at most 1 / (SHARE * workers) of what the account has available


class Lease:
    """One ledger hold of this worker: `held` credits in the ledger, `lent` of them to calls in flight."""

    __slots__ = ("reservation", "held", "lent", "ttl", "keeper", "timer", "last_used", "single", "open")

    def __init__(self, reservation: Reservation, ttl: float, single: bool, now: float) -> None:
        self.reservation, self.ttl, self.single = reservation, ttl, single
        self.held, self.lent, self.last_used = reservation.amount, 0, now
        self.keeper = self.timer = None
        self.open = True  # False once released, emptied or expired: lends nothing more

    @property
    def free(self) -> int:
        return self.held - self.lent


class Leases:
    """This worker's leases, at most one open per account (`current`) plus emptied ones whose calls
    are still in flight."""

    def __init__(self, ledger: Ledger, workers: int = 1, lease_max: int = LEASE_MAX, idle: float = LEASE_IDLE,
                 wait: float = LEASE_WAIT, retry_every: float = LEASE_RETRY, call_later: Callable | None = None,
                 clock: Callable[[], float] = time.monotonic, keeper: Callable | None = None,
                 pause: Callable[[float], Awaitable] = asyncio.sleep) -> None:
        self.ledger, self.share, self.lease_max = ledger, SHARE * max(workers, 1), lease_max
        self.idle, self.wait, self.retry_every, self.clock, self.pause = idle, wait, retry_every, clock, pause
        self._call_later = call_later  # default: the running loop's (a test passes its own timer)
        self.keeper = keeper           # starts the renewal of a lease's hold (`meter.Keeper`)
        self.current: dict[Account, Lease] = {}
        self.live: dict[Account, list[Lease]] = {}   # every lease not released yet, per account
        self.seen: dict[Account, int] = {}           # what the ledger last said was available
        self.last_call: dict[Account, float] = {}    # when a call last asked for the account's credits
        self._locks: dict[Account, asyncio.Lock] = {}
        self._releasing: set[asyncio.Task] = set()   # releases in flight (kept referenced)

    # ---- lending --------------------------------------------------------------------------------

    async def lend(self, account: Account, service: str, amount: int, balance: int, balance_read_at: float,
                   request_id: str, ttl: float) -> Lease:
        """Lend `amount` credits from this worker's lease of `account` (leasing more if needed), or
        raise `gateway.ledger.InsufficientCredits`."""
        now = self.clock()
        previous = self.last_call.get(account)
        if previous is None and len(self.last_call) >= RECENT_MAX:
            self.last_call.clear()
        self.last_call[account] = now
        lease = self.current.get(account)
        if lease is not None and lease.free >= amount:  # the common case: memory only
            return self._lent(lease, amount)
        in_use = previous is not None and now - previous < self.idle  # else a lone call: its own price
        args = (account, service, amount, balance, balance_read_at, request_id, ttl, in_use)
        deadline = now + self.wait
        while True:
            try:
                return await self._lend_from_ledger(*args)
            except ledgers.InsufficientCredits as short:
                in_flight = sum(lease.lent for lease in self.live.get(account, ()))
                if short.shortfall or short.held <= in_flight or self.clock() >= deadline:
                    # All that is held is lent to this worker's calls in flight (as without leases),
                    # or what another worker holds did not come back in time.
                    raise
                # Why ask again: credits are held beyond this worker's calls in flight, possibly
                # unused in a lease (another worker's, back after `idle`; or one of this worker's,
                # back when its calls are done); refusing now could refuse a call that one hold
                # per call would have served. Bounded: until `wait` has passed.
                await self.pause(self.retry_every)

    def _lent(self, lease: Lease, amount: int) -> Lease:
        lease.lent += amount
        lease.last_used = self.clock()
        return lease

    async def _lend_from_ledger(self, account: Account, service: str, amount: int, balance: int,
                                balance_read_at: float, request_id: str, ttl: float, in_use: bool) -> Lease:
        lock = self._locks.setdefault(account, asyncio.Lock())
        async with lock:  # one lease opened at a time per account; the others wait for it
            lease = self.current.get(account)
            if lease is not None and lease.free >= amount:  # opened (or given back) meanwhile
                return self._lent(lease, amount)
            if lease is not None:
                await self._retire(lease)  # too little left for this call: its free credits go back
            # Shielded: if the client leaves meanwhile, the lease still opens, and what it lent to
            # this call comes straight back (the lease is released when idle).
            opening = asyncio.ensure_future(self._open(account, service, amount, balance, balance_read_at,
                                                       request_id, ttl, in_use))
            try:
                return await asyncio.shield(opening)
            except asyncio.CancelledError:
                opening.add_done_callback(lambda task: self._abandoned(task, amount))
                raise
            finally:
                opening.add_done_callback(lambda task: task.cancelled() or task.exception())  # (retrieved)

    def _abandoned(self, opening: asyncio.Task, amount: int) -> None:
        if not opening.cancelled() and opening.exception() is None:
            self.give_back(opening.result(), amount)  # (the idle timer releases it)

    def _size(self, amount: int, available: int) -> int:
        return max(amount, min(self.lease_max, available // self.share))

    async def _open(self, account: Account, service: str, amount: int, balance: int, balance_read_at: float,
                    request_id: str, ttl: float, in_use: bool) -> Lease:
        size = self._size(amount, min(balance, self.seen.get(account, balance))) if in_use else amount
        try:
            reservation = await self.ledger.reserve(account, service, size, balance, balance_read_at, request_id, ttl)
        except ledgers.InsufficientCredits as short:
            self.seen[account] = short.available
            smaller = self._size(amount, short.available)
            if short.shortfall or short.available < amount or smaller >= size:
                raise
            reservation = await self.ledger.reserve(account, service, smaller, balance, balance_read_at,
                                                    request_id, ttl)
        if len(self.seen) > 10_000:  # (a hint, not state: bounded)
            self.seen.clear()
        self.seen[account] = reservation.remaining + reservation.amount
        # A lease of one call's price (the balance is nearly spent) goes back as soon as that call is done.
        lease = Lease(reservation, ttl, single=reservation.amount == amount, now=self.clock())
        if self.keeper is not None:
            lease.keeper = self.keeper(lease)
        previous = self.current.get(account)
        if previous is not None:  # (a client that left let another call open one meanwhile)
            await self._retire(previous)
        self.current[account] = lease
        self.live.setdefault(account, []).append(lease)
        self._arm(lease, self.idle)  # (a one-call lease is released with its call: this is a safety net)
        # Lent here, before any other call can see the lease: a call's credits are never lent twice.
        return self._lent(lease, amount)

    # ---- giving back ------------------------------------------------------------------------------

    def give_back(self, lease: Lease, lent: int, charged: int = 0) -> bool:
        """A call is over: `lent` credits come back to the lease, less `charged` (already taken from
        the ledger's hold by `charge_part`). True: release the lease now (`release`)."""
        lease.lent -= lent
        lease.held -= charged
        lease.last_used = self.clock()
        if lease.held == 0:
            # Emptied: the ledger deleted the hold with its last charge.
            self._forget(lease)
            return False
        # Why at once: a one-call lease near the end of a balance, or a retired one: nobody else
        # here can lend its credits; other workers may.
        retired = self.current.get(lease.reservation.account) is not lease
        return lease.open and lease.lent == 0 and (lease.single or retired)

    def expired(self, lease: Lease) -> None:
        """The ledger no longer holds this lease (expired: a stalled worker): it lends nothing more."""
        self._forget(lease)

    async def release(self, lease: Lease) -> None:
        """Give the lease's credits back to the ledger (those lent to calls in flight included: call
        it when none are)."""
        await asyncio.shield(self._drop(lease))

    def _drop(self, lease: Lease) -> asyncio.Future:
        # Forgotten at once, before the ledger hears of it: from here on no call borrows from it.
        self._forget(lease)
        releasing = asyncio.ensure_future(self.ledger.release(lease.reservation.id))
        self._releasing.add(releasing)
        releasing.add_done_callback(self._released)
        return releasing

    async def close(self) -> None:
        """Shutdown: every lease goes back to the ledger."""
        leases = [lease for leases in self.live.values() for lease in leases]
        await asyncio.gather(*(self.release(lease) for lease in leases), *self._releasing, return_exceptions=True)

    def free(self, account: Account) -> int:
        """Credits this worker holds for `account` and has not lent: the subscriber's to spend."""
        return sum(lease.free for lease in self.live.get(account, ()))

    async def _retire(self, lease: Lease) -> None:
        if self.current.get(lease.reservation.account) is lease:
            del self.current[lease.reservation.account]
        if lease.lent == 0:
            await self.release(lease)
        # else: released when its last call is done (`give_back` says so)

    def _forget(self, lease: Lease) -> None:
        if not lease.open:
            return
        lease.open = False
        account = lease.reservation.account
        if self.current.get(account) is lease:
            del self.current[account]
        leases = self.live.get(account, [])
        if lease in leases:
            leases.remove(lease)
        if not leases:
            self.live.pop(account, None)
            lock = self._locks.get(account)
            if lock is not None and not lock.locked():  # (nobody waits on an unlocked lock)
                del self._locks[account]
        if lease.keeper is not None:
            lease.keeper.stop()
        if lease.timer is not None:
            lease.timer.cancel()

    # ---- the idle timer -----------------------------------------------------------------------------

    def _arm(self, lease: Lease, delay: float) -> None:
        call_later = self._call_later or asyncio.get_running_loop().call_later
        lease.timer = call_later(delay, self._idle_check, lease)

    def _idle_check(self, lease: Lease) -> None:
        if not lease.open:
            return
        quiet = self.clock() - lease.last_used
        if lease.lent == 0 and quiet >= self.idle:
            # Why release: unused credits held here are credits another worker (or replica) cannot
            # lend; this worker leases again on its next call.
            self._drop(lease)
            return
        self._arm(lease, max(self.idle - quiet, self.idle / 10) if lease.lent == 0 else self.idle)

    def _released(self, task: asyncio.Future) -> None:
        self._releasing.discard(task)
        if not task.cancelled() and task.exception() is not None:
            # A ledger hiccup: the hold expires by itself (its keeper stopped).
            log.warning("lease_release_failed", error=str(task.exception()))
