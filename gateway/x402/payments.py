"""The request path of a per-call payment, and the reconcile that finishes what a crash left.

    accept:   PAYMENT-SIGNATURE -> decode -> verify (facilitator) -> record durably -> (forward)
    complete: upstream 2xx -> owed -> settle -> settled (PAYMENT-RESPONSE) | lost (402)
              anything else -> void (the payer keeps the money)
    reconcile (the settling process, at start and every `every` s): an `owed` row is settled only
              if the chain says its authorization is unused; an `accepted` row whose call outlived
              its process is voided.
"""

from __future__ import annotations

import asyncio
import time
from dataclasses import dataclass
from typing import Callable, Mapping

import structlog
from x402.http import decode_payment_signature_header, encode_payment_response_header
from x402.schemas import PaymentPayload, PaymentRequirements, SettleResponse

from gateway.config.model import EndpointRule, GatewayConfig, ServiceConfig
from gateway.credits.prices import price_of
from gateway.ops.crash_points import crash_point
from gateway.x402.errors import (FacilitatorUnavailable, PaymentMalformed, PaymentNeeded, PaymentRejected,
                                 SettlementFailed)
from gateway.x402.facilitators import Facilitator
from gateway.x402.offers import exact_offer, sells_tools
from gateway.x402.store import AlreadySeen, Payment, Row, X402Store

log = structlog.get_logger("gateway.x402")

PAYMENT_SIGNATURE = "PAYMENT-SIGNATURE"
PAYMENT_RESPONSE = "PAYMENT-RESPONSE"
RECONCILE_GRACE = 60.0  # an `owed` row this old is no longer being settled by its request


def definitive(reason: str) -> bool:
    """A settlement failure about the authorization itself (invalid, expired, used, unfunded), which
    no retry can change; anything else (a failed or pending transaction) may succeed later."""
    return reason.startswith(("invalid_", "permit2_")) or reason in DEFINITIVE


DEFINITIVE = frozenset({"unsupported_scheme", "network_mismatch", "missing_eip712_domain",
                        "asset_not_deployed_contract", "eip6492_factory_not_allowed"})


@dataclass
class Accepted:
    """A verified, recorded payment for the call in flight."""

    id: int
    service: str
    payload: PaymentPayload
    requirements: PaymentRequirements
    payer: str
    done: bool = False


class X402Payments:
    def __init__(self, config: GatewayConfig, store: X402Store, facilitators: Mapping[str, Facilitator],
                 clock: Callable[[], float] = time.time, every: float = 30.0,
                 on_event: Callable[[str, str], None] = lambda service, outcome: None) -> None:
        self.config, self.store, self.facilitators, self.clock, self.every = config, store, facilitators, clock, every
        self.on_event = on_event  # (service, outcome): accepted, settled, void, lost, pending (metrics)
        self.task: asyncio.Task | None = None

    async def _move(self, service: str, payment_id: int, was: tuple[str, ...], now: str, **details) -> bool:
        """One recorded payment from status `was` to `now` (False: it was not in `was`), counted."""
        moved = await self.store.mark(payment_id, was, now, **details)
        if moved:
            self.on_event(service, now)
        return moved

    def sells(self, service: ServiceConfig, rule: EndpointRule | None) -> PaymentRequirements | None:
        """The `exact` offer of this endpoint when it is sold per call and can be settled."""
        return exact_offer(service, rule) if service.id in self.facilitators else None

    def sells_tool(self, service: ServiceConfig, tool: str) -> PaymentRequirements | None:
        """The `exact` offer of an MCP tool when it is sold per call and can be settled."""
        return exact_offer(service, None, tool) if service.id in self.facilitators else None

    def sells_tools(self, service: ServiceConfig) -> bool:
        """Whether some MCP tool of the service is sold per call (and can be settled)."""
        return service.id in self.facilitators and sells_tools(service)

    def rejected(self, reason: str, message: str, service: ServiceConfig, credits: int) -> PaymentRejected:
        """A payment that does not pay for an MCP tool call (`credits`: what the tool costs in credits)."""
        return PaymentRejected(reason, message, service, *self._plan_terms(service, None, credits))

    def needed(self, service: ServiceConfig, rule: EndpointRule | None, message: str,
               credits: int | None = None) -> PaymentNeeded:
        return PaymentNeeded(message, service, *self._plan_terms(service, rule, credits))

    async def accept(self, header: str, service: ServiceConfig, rule: EndpointRule | None,
                     offer: PaymentRequirements, request_id: str) -> Accepted:
        """Verify the payment against this endpoint's offer and record it; or refuse the call."""
        try:
            payload = decode_payment_signature_header(header)
        except Exception as exc:  # noqa: BLE001 - base64, JSON or the SDK's model: all the client's fault
            raise PaymentMalformed(f"PAYMENT-SIGNATURE is not an x402 payment payload: {type(exc).__name__}") from None
        if not isinstance(payload, PaymentPayload):
            raise PaymentMalformed("PAYMENT-SIGNATURE must be x402 version 2")
        return await self.accept_payload(payload, service, rule, offer, request_id)

    async def accept_payload(self, payload: PaymentPayload, service: ServiceConfig, rule: EndpointRule | None,
                             offer: PaymentRequirements, request_id: str) -> Accepted:
        """`accept` of a decoded payload (an MCP tool call carries it in `_meta`, not in a header)."""
        if payload.accepted.scheme != offer.scheme or payload.accepted.network != offer.network:
            # Why: the facilitator checks a payment against OUR offer only; another scheme or chain
            # is not something this endpoint sells.
            self._reject("unsupported_scheme", "the payment is not for this endpoint's scheme and network",
                         service, rule)
        auth = payload.payload.get("authorization")
        if not isinstance(auth, dict) or not auth.get("nonce") or not auth.get("from"):
            # Why: the offer is EIP-3009 (`assetTransferMethod: eip3009`); its (payer, nonce) is what
            # makes a payment single-use here. Permit2 and other methods are not sold.
            self._reject("unsupported_transfer_method", "the payment must be an EIP-3009 authorization",
                         service, rule)
        if await self.store.seen(offer.network, offer.asset, str(auth.get("from", "")), str(auth.get("nonce", ""))):
            # Why before verifying: a replay is refused without a chain call (the insert below is
            # the guard that holds under concurrency).
            self._reject("nonce_already_used", "this payment authorization was already used", service, rule)
        facilitator = self.facilitators[service.id]
        # Why the offer, not the payload's `accepted`: payee, amount and token are what WE ask for;
        # the facilitator checks signature, to == payTo, value == amount, window, balance, nonce.
        try:
            verdict = await facilitator.verify(payload, offer)
        except Exception as exc:  # noqa: BLE001 - RPC or facilitator down: not the payer's fault
            log.warning("x402_verify_unavailable", service=service.id, error=str(exc))
            raise FacilitatorUnavailable("the payment cannot be verified now; try again later") from None
        if not verdict.is_valid:
            self._reject(verdict.invalid_reason or "invalid_payment", f"payment refused: {verdict.invalid_reason}",
                         service, rule)
        payer = verdict.payer or auth.get("from", "")
        record = Payment(
            service=service.id, request_id=request_id, network=offer.network, asset=offer.asset, payer=payer,
            nonce=str(auth.get("nonce", "")), pay_to=offer.pay_to, amount=int(offer.amount),
            valid_before=int(auth.get("validBefore", 0)),
            payload=payload.model_dump(by_alias=True, exclude_none=True),
            requirements=offer.model_dump(by_alias=True, exclude_none=True),
            expires_at=self.clock() + service.timeout + self.config.metering.hold_margin)
        try:
            payment_id = await self.store.record(record)  # durable before the call is forwarded
        except AlreadySeen:
            # Why: an authorization pays for one call, once; a replay (even of a voided one) is refused.
            self._reject("nonce_already_used", "this payment authorization was already used", service, rule)
        self.on_event(service.id, "accepted")
        return Accepted(payment_id, service.id, payload, offer, payer)

    async def complete(self, accepted: Accepted, status: int, service: ServiceConfig,
                       rule: EndpointRule | None) -> dict[str, str]:
        """On the upstream's status line: settle a 2xx (its PAYMENT-RESPONSE), void anything else."""
        if not 200 <= status < 300:
            # Why: the payer pays for answers, not attempts (as credits: a non-2xx is not charged).
            await self.void(accepted, f"upstream answered {status}")
            return {}
        result = await self.settle(accepted, service, rule)
        return {PAYMENT_RESPONSE: encode_payment_response_header(result)} if result is not None else {}

    async def void(self, accepted: Accepted, why: str) -> None:
        """The call was answered but not served (an error): not settled, the payer keeps the money."""
        accepted.done = True
        await self._move(accepted.service, accepted.id, ("accepted",), "void", error=why)

    async def settle(self, accepted: Accepted, service: ServiceConfig, rule: EndpointRule | None
                     ) -> SettleResponse | None:
        """Settle a served call: its settlement (None: pending, the reconciler finishes it), or
        SettlementFailed when the authorization can no longer pay."""
        accepted.done = True
        if not await self.store.mark(accepted.id, ("accepted",), "owed"):
            # Why not settle: the reconciler already voided it (the call outlived timeout + margin).
            log.warning("x402_payment_voided_before_answer", payment=accepted.id)
            return None
        crash_point("x402_owed")  # recorded as owed, transfer not yet submitted
        try:
            result = await self.facilitators[accepted.service].settle(accepted.payload, accepted.requirements)
        except Exception as exc:  # noqa: BLE001 - RPC down, timeout: the transfer may or may not be out
            # Why relay the answer anyway: the payer signed for this call and the reconciler settles
            # it from the chain's truth (exactly once); the caller gets no PAYMENT-RESPONSE.
            log.warning("x402_settlement_pending", payment=accepted.id, error=str(exc))
            self.on_event(accepted.service, "pending")
            return None
        if result.success:
            crash_point("x402_sent")  # the transfer is mined, the row still says owed
            await self._move(accepted.service, accepted.id, ("owed",), "settled", tx_hash=result.transaction)
            return result
        reason = result.error_reason or "settlement_failed"
        if not definitive(reason):
            # Why relay and keep it owed: the transaction failed for a reason of ours (operator
            # nonce, gas, RPC), not the payer's; the reconciler retries while the window is open.
            log.warning("x402_settlement_pending", payment=accepted.id, reason=reason)
            self.on_event(accepted.service, "pending")
            return None
        # Why a loss and no retry: the authorization cannot pay any more (nonce used, expired,
        # funds moved away); retrying forever would not change that.
        await self._move(accepted.service, accepted.id, ("owed",), "lost", error=reason)
        header = encode_payment_response_header(result)
        raise SettlementFailed(reason, {PAYMENT_RESPONSE: header}, f"the payment could not be settled: {reason}",
                               service, *self._plan_terms(service, rule))

    async def abandon(self, accepted: Accepted | None) -> None:
        """The call never reached the upstream's status line (refused, unreachable, client gone)."""
        if accepted is not None and not accepted.done:
            accepted.done = True
            # Why shielded: this runs while the request's task is being cancelled (client gone).
            await asyncio.shield(self._move(accepted.service, accepted.id, ("accepted",), "void",
                                            error="no answer from the upstream"))

    async def reconcile(self, owed_before: float | None = None) -> int:
        """Finish rows a crash (or an unreachable chain) left; returns how many were finished."""
        finished = 0
        cutoff = self.clock() - RECONCILE_GRACE if owed_before is None else owed_before
        for row in await self.store.unfinished(cutoff):
            if row.status == "accepted":
                # Why void: its process died before the upstream's answer was known (credits: the
                # hold expires, nothing is charged).
                finished += await self._move(row.payment.service, row.id, ("accepted",), "void",
                                             error="call outlived its process")
            else:
                finished += await self._settle_owed(row)
        return finished

    async def _settle_owed(self, row: Row) -> bool:
        facilitator = self.facilitators.get(row.payment.service)
        if facilitator is None:
            return False  # the service is no longer sold per call here: kept for when it is
        p = row.payment
        chain = await facilitator.authorization_state(p.asset, p.payer, p.nonce)
        if chain is None:
            return False  # cannot tell without the chain: never guess, try again later
        if chain.state == "transferred":
            # Why settled without sending: the transfer already happened (sent before the crash);
            # sending again would only revert.
            return await self._move(p.service, row.id, ("owed",), "settled", tx_hash=chain.tx_hash,
                                    error="reconciled from authorizationState")
        if chain.state == "canceled":
            # Why a loss: the payer cancelled the authorization after the call was served.
            return await self._move(p.service, row.id, ("owed",), "lost", error="authorization canceled by the payer")
        if p.valid_before <= self.clock():
            return await self._move(p.service, row.id, ("owed",), "lost", error="authorization expired before settlement")
        payload, requirements = PaymentPayload.model_validate(p.payload), PaymentRequirements.model_validate(p.requirements)
        result: SettleResponse = await facilitator.settle(payload, requirements)
        if result.success:
            return await self._move(p.service, row.id, ("owed",), "settled", tx_hash=result.transaction)
        if not definitive(result.error_reason or ""):
            return False  # ours, not the payer's: next period, until the window closes
        return await self._move(p.service, row.id, ("owed",), "lost", error=result.error_reason)

    async def run(self) -> None:
        """At start everything unfinished (no request of this gateway is in flight yet), then periodically."""
        await self._reconcile_logged(owed_before=self.clock())
        while True:
            await asyncio.sleep(self.every)  # a period, not a synchronization
            await self._reconcile_logged()

    async def _reconcile_logged(self, owed_before: float | None = None) -> None:
        try:
            if finished := await self.reconcile(owed_before):
                log.info("x402_reconciled", payments=finished)
        except Exception:  # noqa: BLE001 - the chain may be down: next period
            log.exception("x402_reconcile_failed")

    def start(self) -> None:
        if self.facilitators and self.task is None:
            self.task = asyncio.create_task(self.run())

    async def stop(self, close: bool = True) -> None:
        """Stop reconciling; `close`: also the facilitators (not on a reload: calls in flight use them)."""
        task, self.task = self.task, None
        if task is not None:
            task.cancel()
            await asyncio.gather(task, return_exceptions=True)
        for facilitator in {id(f): f for f in self.facilitators.values()}.values() if close else ():
            await facilitator.close()

    def _reject(self, reason: str, message: str, service: ServiceConfig, rule: EndpointRule | None):
        raise PaymentRejected(reason, message, service, *self._plan_terms(service, rule))

    def _plan_terms(self, service: ServiceConfig, rule: EndpointRule | None,
                    credits: int | None = None) -> tuple[int, int, None]:
        """(chain_id, credits needed, balance unknown): the plan part of a 402 about paying per call."""
        chain = self.config.chains.get(service.plan.chain) if service.plan else None
        needed = price_of(service, rule).reserve if credits is None else credits
        return chain.chain_id if chain else 0, needed, None
