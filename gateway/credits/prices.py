"""What a protected call costs and whether the subscriber's plan covers it.

The decision is made here from the on-chain balance (SPEC §5); the 402 answer
carries the plan so that a client (or an agent) knows where to buy credits.
"""

from __future__ import annotations

from typing import Any

from gateway.config.model import EndpointRule, Price, ServiceConfig
from gateway.credits.plans import PlanChecker
from gateway.http.problems import Problem


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
    """An erc721 plan: return the subscriber's pass count if they hold one; otherwise refuse with 402.

    (erc1155 credits are reserved by `metering.Meter`, which refuses with the same 402 shape.)"""
    plan = service.plan
    assert plan is not None and plan.standard == "erc721"
    balance = await checker.balance(plan, subscriber)
    if balance < 1:
        # Why: the token is valid but the subscriber holds no pass; 402 tells the client how to
        # buy one (the plan and where), and nothing is forwarded.
        doc = plan_document(service, chain_id, balance) | {"credits": 1}
        raise Problem(402, "payment_required", "this service needs a pass, and none is held", extra={"plan": doc})
    return balance
