"""Config loading of x402 per-call payments: a service's `x402:` mapping and a rule's `x402:` price.

    x402: {network: eip155:31337, asset: 0x.., pay_to: 0x.., price: "0.01" (optional), decimals: 6,
           extra: {name: USD Coin, version: "2"}, max_timeout: 60s, facilitator_url: https://..}
    protected_endpoints: [{endpoint: "POST /ask", x402: "0.05"}]
    mcp: {tools: {search: {credits: 2, x402: "0.05"}}}

Every problem is reported with its YAML path (the caller's `Node` collects them).
"""

from __future__ import annotations

import re
from decimal import Decimal, InvalidOperation
from typing import Any, Mapping

from gateway.config import values as v
from gateway.config.model import ChainConfig, EndpointRule, McpConfig, ServiceConfig, X402Config
from gateway.config.nodes import Node

_NETWORK = re.compile(r"eip155:([1-9][0-9]{0,18})")
EXTRA_KEYS = ("name", "version")


def price(raw: Any) -> Decimal:
    """A price in tokens: a decimal string or number such as "0.01" (never a float's rounding)."""
    if isinstance(raw, bool) or not isinstance(raw, (str, int, float)):
        raise ValueError('must be a price in tokens such as "0.01"')
    try:
        value = Decimal(str(raw).strip())
    except InvalidOperation:
        raise ValueError(f'must be a price in tokens such as "0.01" (got {raw!r})') from None
    if not value.is_finite() or value <= 0:
        raise ValueError("must be a positive price")
    return value


def parse_x402(x: Node | None, chains: Mapping[str, ChainConfig]) -> X402Config | None:
    if x is None:
        return None
    network = x.get("network", v.non_empty)
    match = _NETWORK.fullmatch(network or "")
    if network is not None and not match:
        x.problems.append(f"{x.at('network')}: must be eip155:<chain id> (only EVM chains are supported)")
    chain_id = int(match.group(1)) if match else 0
    facilitator = x.get("facilitator_url", v.http_url, None)
    chain = next((name for name, c in chains.items() if c.chain_id == chain_id), None)
    if match and chain is None and facilitator is None:
        # Why: self-facilitated settlement submits the transfer itself, so it needs an RPC of that chain.
        x.problems.append(f"{x.at('network')}: no chain with id {chain_id} under `chains` "
                          "(needed to settle without facilitator_url)")
    extra = x.get("extra", _extra, {}) or {}
    config = X402Config(
        network=network or "", chain_id=chain_id, chain=chain,
        asset=x.get("asset", v.address) or "", pay_to=x.get("pay_to", v.address) or "",
        price=x.get("price", price, None),  # None: only rules with their own `x402:` price are sold
        decimals=x.get("decimals", v.integer(0, 36), 6),
        name=extra.get("name", X402Config.name), version=extra.get("version", X402Config.version),
        max_timeout=_whole_seconds(x.get("max_timeout", v.duration, None)),
        facilitator_url=facilitator,
    )
    if config.price is not None:
        check_price(x, "price", config, config.price)
    x.done()
    return config


def check_price(node: Node, key: str, config: X402Config, value: Decimal) -> None:
    # Why: a price finer than the token's smallest unit could not be paid exactly.
    if value and value.scaleb(config.decimals) != value.scaleb(config.decimals).to_integral_value():
        node.problems.append(f"{node.at(key)}: {value} has more than {config.decimals} decimals")


def check_rules(s: Node, rules: tuple[EndpointRule, ...], config: X402Config | None) -> None:
    """Rule prices need the service's `x402` (the token, the payee) and fit its decimals."""
    for i, rule in enumerate(rules):
        if rule.x402 is None:
            continue
        at = f"{s.at('protected_endpoints')}[{i}]"
        if config is None:
            s.problems.append(f"{at}.x402: the service has no `x402` (network, asset, pay_to) to price it in")
        else:
            check_price(Node({}, at, s.problems), "x402", config, rule.x402)


def check_tools(s: Node, mcp: McpConfig | None, config: X402Config | None) -> None:
    """MCP tools' per-call prices need the service's `x402` (the token, the payee) and fit its decimals."""
    for name, value in (mcp.tool_x402.items() if mcp is not None else ()):
        at = f"{s.at('mcp')}.tools.{name}"
        if config is None:
            s.problems.append(f"{at}.x402: the service has no `x402` (network, asset, pay_to) to price it in")
        else:
            check_price(Node({}, at, s.problems), "x402", config, value)


def _whole_seconds(value: float | None) -> int | None:
    return None if value is None else max(1, int(value))


def _extra(raw: Any) -> dict[str, str]:
    if not isinstance(raw, Mapping) or set(raw) - set(EXTRA_KEYS):
        raise ValueError("must be {name, version}: the token's EIP-712 domain")
    return {str(k): v.non_empty(value) for k, value in raw.items()}


def check_x402_settlement(services: Mapping[str, ServiceConfig], operator_key: str | None,
                          problems: list[str]) -> None:
    """Rules across sections: who submits the transfers."""
    for sid, service in services.items():
        if service.x402 is None:
            continue
        if service.x402.facilitator_url is None and not operator_key:
            # Why: self-facilitated settlement submits transferWithAuthorization and pays its gas.
            problems.append(f"services.{sid}.x402: needs metering.x402_key or metering.operator_key to settle "
                            "payments itself (or a facilitator_url)")
