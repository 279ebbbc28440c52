"""What a protected call costs and whether the subscriber's plan covers it.

The decision is made here from the on-chain balance (SPEC §5). A call the plan does not cover
raises `NotCovered` (a pass missing: `NoPass`; credits short: `meter.InsufficientCredits`),
carrying what a client needs to pay; the http layer answers it 402 with the plan
(`gateway.http.refusals`).
"""

from __future__ import annotations

from typing import Any

from gateway.config.model import EndpointRule, Price, ServiceConfig
from gateway.credits.plans import PlanChecker


class NotCovered(Exception):
    """The subscriber's plan does not cover this call: `needed` credits (or 1 pass), `balance`
    available now, `shortfall` an unpaid shortfall blocking the account (0: none). The message
    says why, for the client."""

    def __init__(self, message: str, service: ServiceConfig, chain_id: int, needed: int, balance: int,
                 shortfall: int = 0) -> None:
        super().__init__(message)
        self.service, self.chain_id, self.needed = service, chain_id, needed
        self.balance, self.shortfall = balance, shortfall


class NoPass(NotCovered):
    """An erc721 plan: the subscriber holds no pass."""


def price_of(service: ServiceConfig, rule: EndpointRule | None) -> Price:
    """The rule's own price, else the plan's default price per call."""
    if rule is not None and rule.price is not None:
        return rule.price
    return Price(fixed=service.plan.credits if service.plan else 0)


def plan_document(service: ServiceConfig, chain_id: int, balance: int | None = None) -> dict[str, Any]:
    plan = service.plan
    assert plan is not None
    doc: dict[str, Any] = {
        "chain_id": chain_id,
        "contract": plan.contract,
        "token_id": plan.token_id,
        "standard": plan.standard,
        "credits": plan.credits,
        "checkout_url": plan.checkout_url,
    }
    if balance is not None:
        doc["balance"] = balance
    return doc


async def require_pass(checker: PlanChecker, chain_id: int, service: ServiceConfig, subscriber: str) -> int:
    """An erc721 plan: return the subscriber's pass count if they hold one; otherwise raise `NoPass`.

    (erc1155 credits are reserved by `meter.Meter`, which raises `InsufficientCredits`.)"""
    plan = service.plan
    assert plan is not None and plan.standard == "erc721"
    balance = await checker.balance(plan, subscriber)
    if balance < 1:
        # Why: the token is valid but the subscriber holds no pass; the refusal tells the client how
        # to buy one (the plan and where), and nothing is forwarded.
        raise NoPass("this service needs a pass, and none is held", service, chain_id, 1, balance)
    return balance
