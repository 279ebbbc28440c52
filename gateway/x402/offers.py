"""What a call costs per call in x402 terms: the `exact` `PaymentRequirements` of an endpoint.

A service with `x402: {price}` sells every protected endpoint per call at that price, a rule's own
`x402:` price overriding it; without a service-wide price, only rules with their own are sold. On
the MCP path the price is per tool (`tool_price`): a tool's own `x402:` price, else the service's
(gateway.x402.mcp sells it).
"""

from __future__ import annotations

import math
from decimal import Decimal

from x402.schemas import PaymentRequirements

from gateway.config.model import EndpointRule, ServiceConfig

SCHEME = "exact"
SETTLE_MARGIN = 30  # seconds an authorization stays valid after the call's timeout


def per_call_price(service: ServiceConfig, rule: EndpointRule | None) -> Decimal | None:
    """The endpoint's price per call in tokens; None: not sold per call."""
    if service.x402 is None or rule is None:
        return None
    if service.mcp is not None and rule is service.mcp.rule:
        return None  # priced by tool, not by endpoint
    return rule.x402 if rule.x402 is not None else service.x402.price


def tool_price(service: ServiceConfig, tool: str) -> Decimal | None:
    """An MCP tool's price per call in tokens; None: not sold per call (the token's credits only)."""
    if service.x402 is None or service.mcp is None:
        return None
    return service.mcp.tool_x402.get(tool, service.x402.price)


def sells_tools(service: ServiceConfig) -> bool:
    """Whether some MCP tool of the service may be paid per call."""
    return service.x402 is not None and service.mcp is not None and (
        service.x402.price is not None or bool(service.mcp.tool_x402))


def exact_offer(service: ServiceConfig, rule: EndpointRule | None, tool: str | None = None
                ) -> PaymentRequirements | None:
    """The standard `exact` entry for this endpoint, or for this MCP tool (EIP-3009: extra carries
    the EIP-712 domain)."""
    price = per_call_price(service, rule) if tool is None else tool_price(service, tool)
    return offer_at(service, price) if price is not None else None


def offer_at(service: ServiceConfig, price: Decimal) -> PaymentRequirements:
    """The `exact` entry at `price` (tokens) in the service's token, to its payee."""
    x = service.x402
    assert x is not None
    return PaymentRequirements(
        scheme=SCHEME, network=x.network, asset=x.asset, amount=str(x.atomic(price)), pay_to=x.pay_to,
        # Why the call's timeout + 30 s by default: the client signs an authorization valid this long,
        # and it is settled only after the upstream answered (the SDK wants >= 6 s left then).
        max_timeout_seconds=x.max_timeout or call_timeout(service) + SETTLE_MARGIN,
        extra={"name": x.name, "version": x.version, "assetTransferMethod": "eip3009"},
    )


def call_timeout(service: ServiceConfig) -> int:
    """Whole seconds a call may take (the credits entry's `maxTimeoutSeconds`: must be positive)."""
    return max(1, math.ceil(service.timeout))
