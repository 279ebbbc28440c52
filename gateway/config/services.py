"""Config loading, per service: upstream and its credential, endpoint rules and prices,
the plan, MCP tool prices and CORS. Every problem is reported with its YAML path; rules
between services (host names) are in `gateway.config.checks`."""

from __future__ import annotations

import base64
import dataclasses
import re
from decimal import Decimal
from pathlib import Path
from types import MappingProxyType
from typing import Any, Mapping
from urllib.parse import urlsplit

from gateway.config import values as v
from gateway.config.model import (
    DEFAULT_MAX_BODY,
    DEFAULT_PRICE_HEADER,
    ChainConfig,
    CorsConfig,
    EndpointRule,
    McpConfig,
    PlanConfig,
    Price,
    ServiceConfig,
    UpstreamAuth,
)
from gateway.config.nodes import Node
from gateway.config.rules import RuleError, compile_rule
from gateway.config.secret_files import inline_or_file
from gateway.config.x402 import check_rules, check_tools, parse_x402
from gateway.config.x402 import price as x402_price

# The keys of the two mappings read without a `Node` (also declared by `gateway.config.schema`).
DYNAMIC_PRICE_KEYS = ("header", "min", "max")    # credits: {header, min, max}
TOOL_PRICE_KEYS = ("credits", "x402")           # mcp.tools.NAME: {credits: N, x402: "0.05"}


def parse_services(
    node: Node | None, chains: Mapping[str, ChainConfig], max_body: int | None, problems: list[str],
    base_dir: Path = Path("."),
) -> dict[str, ServiceConfig]:
    services: dict[str, ServiceConfig] = {}
    for sid, raw in (node.value.items() if node else ()):
        sid = str(sid)
        s = Node(raw, node.at(sid), problems)
        if not v.LABEL.fullmatch(sid):
            problems.append(f"{s.path}: service id must be a DNS label (a-z, 0-9, '-')")
        did = s.get("did", v.did, None)
        plan_node = s.child("plan")
        plan = _plan(plan_node, chains) if plan_node else None
        protected = _rules(s, "protected_endpoints", with_price=True)
        service = ServiceConfig(
            id=sid,
            did=did,
            did_label=v.did_label(did) if did else None,
            hosts=tuple(s.get("hosts", v.list_of(v.domain), ()) or ()),
            upstream=s.get("upstream", v.upstream_url),
            upstream_auth=_upstream_auth(s.child("upstream_auth"), base_dir),
            timeout=s.get("timeout", v.duration, 60.0),
            owner=s.get("owner", v.address, None),
            open_endpoints=_rules(s, "open_endpoints", with_price=False),
            protected_endpoints=protected,
            plan=plan,
            max_body=s.get("max_body", v.size, max_body or DEFAULT_MAX_BODY),
            mcp=_mcp(s.child("mcp"), plan),
            cors=_cors(s.child("cors")),
            x402=parse_x402(s.child("x402"), chains),
        )
        check_rules(s, protected, service.x402)
        check_tools(s, service.mcp, service.x402)
        # Why: a protected endpoint without a plan could never be paid for; refuse the config.
        if protected and plan_node is None:
            problems.append(f"{s.at('plan')}: required when protected_endpoints are listed")
        if service.mcp is not None and plan_node is None:
            problems.append(f"{s.at('plan')}: required when mcp is set (its calls are protected)")
        if service.mcp is not None and plan is not None and plan.standard == "erc721" and (
                service.mcp.tools or s.value["mcp"].get("default_tool_credits") is not None):
            problems.append(f"{s.at('mcp')}: an erc721 pass plan has no credits to price tools with")
        if plan is not None and plan.standard == "erc721" and any(r.price for r in protected):
            problems.append(f"{s.at('protected_endpoints')}: an erc721 pass plan has no credits to price")
        s.done()
        services[sid] = service
    if node is not None and not services:
        problems.append("services: at least one service is required")
    return services


def _rules(s: Node, key: str, with_price: bool) -> tuple[EndpointRule, ...]:
    rules = []
    for i, raw in enumerate(s.get(key, v.list_of(lambda x: x), []) or []):
        path = f"{s.at(key)}[{i}]"
        price = per_call = None
        if isinstance(raw, Mapping) and with_price:
            r = Node(raw, path, s.problems)
            text = r.get("endpoint", v.non_empty)
            price = r.get("credits", _price, None)
            per_call = r.get("x402", x402_price, None)  # also payable per call, at this price
            r.done()
        elif isinstance(raw, str):
            text = raw
        else:
            s.problems.append(f"{path}: must be a string" + (" or {endpoint, credits}" if with_price else ""))
            continue
        if text is None:
            continue
        try:
            rules.append(dataclasses.replace(compile_rule(text, price), x402=per_call))
        except RuleError as exc:
            s.problems.append(f"{path}: {exc}")
    return tuple(rules)


def _price(raw: Any) -> Price:
    if isinstance(raw, bool):
        raise ValueError("must be a number of credits or {header, min, max}")
    if isinstance(raw, int):
        if raw < 0:
            raise ValueError("must be >= 0")
        return Price(fixed=raw)
    if isinstance(raw, Mapping):
        unknown = set(raw) - set(DYNAMIC_PRICE_KEYS)
        if unknown:
            raise ValueError(f"unknown key(s) {', '.join(sorted(map(str, unknown)))}")
        lo, hi = raw.get("min", 0), raw.get("max")
        if not isinstance(lo, int) or not isinstance(hi, int) or lo < 0 or hi < lo:
            raise ValueError("dynamic credits need integers 0 <= min <= max (max is required)")
        return Price(header=str(raw.get("header") or DEFAULT_PRICE_HEADER), min=lo, max=hi)
    raise ValueError("must be a number of credits or {header, min, max}")


_MCP_PATH = re.compile(r"(?:/[A-Za-z0-9._~!$&'()*+,;=:@-]+)+")


def _mcp(m: Node | None, plan: PlanConfig | None) -> McpConfig | None:
    """`mcp: {path: /mcp, tools: {search: 2, summarize: {credits: 5, x402: "0.05"}}, default_tool_credits: 1,
    max_batch: 100}`: a tool's `x402` price also sells it per call (gateway.x402.mcp)."""
    if m is None:
        return None
    path = m.get("path", _mcp_path, "/mcp")
    tools = m.get("tools", _tool_prices, {})
    default = m.get("default_tool_credits", v.integer(0), plan.credits if plan else 1)
    max_batch = m.get("max_batch", v.integer(1, 10_000), McpConfig.max_batch)
    m.done()
    if path is None or tools is None or default is None or max_batch is None:
        return None
    rule = EndpointRule(source=f"mcp {path}", methods=None, pattern=re.compile(re.escape(path)))
    credits = {name: c for name, (c, _) in tools.items() if c is not None}
    per_call = {name: p for name, (_, p) in tools.items() if p is not None}
    return McpConfig(path=path, rule=rule, tools=MappingProxyType(credits), default_tool_credits=default,
                     max_batch=max_batch, tool_x402=MappingProxyType(per_call))


def _mcp_path(raw: Any) -> str:
    path = v.non_empty(raw)
    # Why literal and normalized: the path is compared to the normalized request path as a string.
    if not _MCP_PATH.fullmatch(path) or any(seg in (".", "..") for seg in path.split("/")):
        raise ValueError(f"must be a literal path such as /mcp (got {path!r})")
    if path.startswith(("/.gateway/", "/.well-known/")):
        raise ValueError("must not be under /.gateway/ or /.well-known/")
    return path


def _tool_prices(raw: Any) -> dict[str, tuple[int | None, Decimal | None]]:
    """Tool name -> (credits, x402 price per call); None: not given (the defaults apply)."""
    if not isinstance(raw, Mapping):
        raise ValueError('must map tool names to credits (search: 2, or summarize: {credits: 5, x402: "0.05"})')
    prices: dict[str, tuple[int | None, Decimal | None]] = {}
    for name, price in raw.items():
        credits, per_call = price, None
        if isinstance(price, Mapping):
            if not price or set(price) - set(TOOL_PRICE_KEYS):
                raise ValueError(f"tool {name!r}: only {{credits: N, x402: PRICE}} is allowed")
            credits, per_call = price.get("credits"), price.get("x402")
        try:
            credits = None if credits is None else v.integer(0)(credits)
        except ValueError as exc:
            raise ValueError(f"tool {name!r}: credits {exc}") from None
        try:
            per_call = None if per_call is None else x402_price(per_call)
        except ValueError as exc:
            raise ValueError(f"tool {name!r}: x402 {exc}") from None
        prices[str(name)] = (credits, per_call)
    return prices


def _cors(c: Node | None) -> CorsConfig | None:
    if c is None:
        return None
    cors = CorsConfig(
        origins=tuple(c.get("origins", v.list_of(_origin, min_items=1)) or ()),
        allow_headers=tuple(c.get("allow_headers", v.list_of(v.header_name), ()) or ()),
        expose_headers=tuple(c.get("expose_headers", v.list_of(v.header_name), ()) or ()),
        max_age=c.get("max_age", v.duration, 600.0),
    )
    c.done()
    return cors


def _origin(raw: Any) -> str:
    text = v.non_empty(raw)
    if text == "*":
        return text
    parts = urlsplit(text)
    # Why exact origins only: browsers send exactly scheme://host[:port]; a path or a "null"
    # origin (sandboxed frames, files) would either never match or let any such page in.
    if parts.scheme not in ("http", "https") or not parts.hostname or parts.path or parts.query \
            or parts.fragment or parts.username or text.endswith("/"):
        raise ValueError(f"not an origin like https://app.example.com (got {text!r})")
    return text.lower()


def _plan(p: Node, chains: Mapping[str, ChainConfig]) -> PlanConfig:
    standard = p.get("standard", v.choice("erc1155", "erc721"), "erc1155")
    chain = p.get("chain", v.non_empty)
    if chain is not None and chain not in chains:
        p.problems.append(f"{p.at('chain')}: no chain named {chain!r} under `chains`")
    token_id = p.get("token_id", v.integer(0, 2**256 - 1), None)
    if standard == "erc1155" and token_id is None and p.value.get("token_id") is None:
        p.problems.append(f"{p.at('token_id')}: required for an erc1155 plan")
    if standard == "erc721" and token_id is not None:
        p.problems.append(f"{p.at('token_id')}: an erc721 pass plan counts every token of the contract")
    plan = PlanConfig(
        chain=chain,
        standard=standard,
        contract=p.get("contract", v.address),
        token_id=token_id,
        credits=p.get("credits", v.integer(0), 1),
        checkout_url=p.get("checkout_url", v.http_url, None),
    )
    p.done()
    return plan


def _upstream_auth(a: Node | None, base_dir: Path) -> UpstreamAuth:
    """The credential sent upstream; each secret inline or from a file (`token_file`, `password_file`, `value_file`)."""
    if a is None:
        return UpstreamAuth(type="none")
    kind = a.get("type", v.choice("none", "bearer", "basic", "header"))
    auth = UpstreamAuth(type="none")
    if kind == "bearer":
        auth = UpstreamAuth("bearer", "Authorization", f"Bearer {inline_or_file(a, 'token', v.header_value, base_dir)}")
    elif kind == "basic":
        user, password = a.get("username", v.header_value), inline_or_file(a, "password", v.header_value, base_dir)
        credential = base64.b64encode(f"{user}:{password}".encode()).decode()
        auth = UpstreamAuth("basic", "Authorization", f"Basic {credential}")
    elif kind == "header":
        value = inline_or_file(a, "value", v.header_value, base_dir)
        auth = UpstreamAuth("header", a.get("name", v.header_name), value)
    a.done()
    return auth
