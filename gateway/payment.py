"""What a protected call costs and whether the subscriber's plan covers it.

The decision is made here from the on-chain balance (SPEC §5); the 402 answer
carries the plan so that a client (or an agent) knows where to buy credits.
"""

from __future__ import annotations

from typing import Any

from gateway.config import EndpointRule, PlanConfig, Price, ServiceConfig
from gateway.plans import PlanChecker
from gateway.problems import Problem


def price_of(service: ServiceConfig, rule: EndpointRule | None) -> Price:
    """The rule's own price, else the plan's default price per call."""
    if rule is not None and rule.price is not None:
        return rule.price
    return Price(fixed=service.plan.credits if service.plan else 0)


def credits_needed(plan: PlanConfig, price: Price) -> int:
    # An erc721 pass grants access, not credits: holding one token is enough.
    return 1 if plan.standard == "erc721" else price.reserve


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


async def require_plan(
    checker: PlanChecker, chain_id: int, service: ServiceConfig, price: Price, subscriber: str
) -> int:
    """Return the subscriber's balance if it covers `price`; otherwise refuse with 402."""
    plan = service.plan
    assert plan is not None
    balance = await checker.balance(plan, subscriber)
    needed = credits_needed(plan, price)
    if balance < needed:
        # Why: the token is valid but the plan does not cover this call; 402 tells the client
        # how to pay (the plan and where to buy), and nothing is forwarded.
        doc = plan_document(service, chain_id, balance) | {"credits": needed}
        raise Problem(
            402,
            "payment_required",
            f"plan balance {balance} does not cover the {needed} credit(s) this call costs",
            extra={"plan": doc},
        )
    return balance
