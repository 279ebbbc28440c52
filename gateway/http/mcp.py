"""MCP servers (Streamable HTTP transport) behind the gateway, priced per tool.

A service with `mcp: {path: /mcp, tools: {search: 2}, default_tool_credits: 1}` has its MCP
path protected for every method: each request needs a valid token. A GET (the server's event
stream every SDK client opens), HEAD or DELETE (session end) runs no tool: it needs the token
and costs nothing (no credits are held). A POST there carries JSON-RPC; its price depends on
what it asks for, so its body is read first (within `max_body`, and decoded within `max_body`
when it is compressed), priced, and forwarded as the very bytes the client sent:

- `tools/call`: the tool's credits (`tools`, else `default_tool_credits`); a batch is the sum;
- everything else (`initialize`, `server/discover`, `tools/list`, `ping`, notifications,
  responses to the server's requests, resources and prompts): free, but still authenticated
  (except where tools are also sold per call with x402: gateway.http.mcp_payments).

A batch holds at most `max_batch` messages (default 100; more is 400 before any pricing).
Refusals of a priced call are JSON-RPC error objects (same HTTP status and headers), so that an
MCP client shows the reason: the first error's `data` is the RFC 9457 problem, the others carry
only its code, so a refused batch answers a bounded size (written by `refusals`, from the scope's
`McpCall`). A 401 on the MCP path names the gateway's RFC 9728 metadata (`resource_metadata`),
served at `/.well-known/oauth-protected-resource[<path>]`.
"""

from __future__ import annotations

from dataclasses import dataclass
from typing import Any

from aiohttp import web

from gateway.http import client_json
from gateway.config.model import GatewayConfig, McpConfig, Price, ServiceConfig
from gateway.http.problems import Problem
from gateway.http.routing import Decision, lax_form
from gateway.http.upstream import decoded, read_raw
from gateway.x402.offers import exact_offer, offer_at, sells_tools

TOOLS_CALL = "tools/call"
FREE_METHODS = frozenset({"GET", "HEAD", "DELETE"})  # no JSON-RPC request in them: no tool runs
LOG_TOOLS, LOG_TOOL_NAME = 10, 64  # the access log names at most this many tools, each this long
METADATA_PATH = "/.well-known/oauth-protected-resource"


def classify(service: ServiceConfig, path: str) -> Decision | None:
    """The MCP path is protected for every method (GET opens the server's event stream, DELETE
    ends a session); checked before the endpoint rules, so a broad open rule cannot expose it."""
    mcp = service.mcp
    # Why the lax form too: "//mcp" or "/mcp/" may reach the same handler on a lenient upstream.
    if mcp is not None and (path == mcp.path or lax_form(path) == mcp.path):
        return Decision("protected", mcp.rule)
    return None


def log_rule(rule: str | None, tools: tuple[str, ...]) -> str:
    """The access log's `rule` for an MCP call: the tools it calls, bounded in count and length."""
    names = [name[:LOG_TOOL_NAME] for name in tools[:LOG_TOOLS]]
    more = f" (+{len(tools) - LOG_TOOLS} more)" if len(tools) > LOG_TOOLS else ""
    return f"{rule}: {', '.join(names)}{more}"


@dataclass(frozen=True)
class McpCall:
    """One request on the MCP path: the bytes to forward (None: streamed, nothing was read), what
    they cost, and who to answer in JSON-RPC on refusal (`ids`; none: answered in problem JSON)."""

    body: bytes | None
    price: Price
    tools: tuple[str, ...]          # tools called, in order (for logs)
    ids: tuple[Any, ...]            # ids of the JSON-RPC requests in the body
    batch: bool
    single: Any = None              # the message of a body that is one message (not a batch)


FREE = McpCall(None, Price(fixed=0), (), (), False)


async def read_call(request: web.Request, service: ServiceConfig, decision: Decision) -> McpCall | None:
    """The MCP call a protected request makes: None off the MCP path (priced by its rule and
    streamed as usual); `FREE` for a request that cannot run a tool (GET event stream, HEAD,
    DELETE: it needs the token, but no credits); else the POST's body, read and priced."""
    if service.mcp is None or decision.rule is not service.mcp.rule:
        return None
    if request.method in FREE_METHODS:
        return FREE  # no JSON-RPC request in it: no tool runs, nothing is held
    if request.method != "POST":
        return None
    raw = await read_raw(request, service.max_body)
    # Priced on what the upstream will read (the decoded body), forwarded as sent (`raw`).
    messages, batch = parse_messages(await decoded(raw, request.headers.get("Content-Encoding"), service.max_body))
    if len(messages) > service.mcp.max_batch:
        # Why before pricing: the work of pricing (and of answering a refusal) grows with the batch.
        raise Problem(400, "bad_request", f"a JSON-RPC batch holds at most {service.mcp.max_batch} messages "
                      f"here (got {len(messages)})")
    return price_messages(service.mcp, raw, messages, batch)


def price_messages(mcp: McpConfig, body: bytes, messages: list[Any], batch: bool) -> McpCall:
    """What the messages cost: the credits of every `tools/call` in them; everything else is free."""
    tools, credits, ids = [], 0, []
    for message in messages:
        if not isinstance(message, dict):
            continue  # not a JSON-RPC message: the upstream refuses it, nothing runs
        if "id" in message and "method" in message:
            ids.append(message["id"])
        # Why with an id or without: a tools/call sent as a notification may still run the tool.
        if message.get("method") == TOOLS_CALL:
            params = message.get("params")
            name = params.get("name") if isinstance(params, dict) else None
            # Why the default for a missing or odd name: such a call is never cheaper than an unlisted tool.
            tools.append(name if isinstance(name, str) else "?")
            credits += mcp.tools.get(name, mcp.default_tool_credits) if isinstance(name, str) \
                else mcp.default_tool_credits
    return McpCall(body, Price(fixed=credits), tuple(tools), tuple(ids), batch,
                   messages[0] if not batch and messages else None)


def parse_messages(body: bytes) -> tuple[list[Any], bool]:
    """The JSON-RPC messages of a body (a batch is a list); Problem 400 if it is not JSON."""
    # Why refuse instead of forwarding free: what is not priced here must not run there.
    data = client_json.loads(body, "an MCP request body is JSON-RPC in UTF-8 JSON")
    if isinstance(data, list):
        return data, True
    return [data], False


def resource_metadata(config: GatewayConfig, service: ServiceConfig, path: str, base: str) -> web.Response | None:
    """RFC 9728 protected-resource metadata for a service with an MCP path; None for other paths.

    Served at the root form (resource: the service) and at the path-inserted form for the MCP
    path (resource: the MCP endpoint), which MCP clients try first. It names the authorization
    servers whose tokens the gateway accepts: its own first (the service's OAuth server when
    `oauth` is on, else the own issuer), then the external issuers."""
    if service.mcp is None or path not in (METADATA_PATH, METADATA_PATH + service.mcp.path):
        return None
    own: list[str] = []
    if config.tokens.own is not None:
        # Why the service's own URL when OAuth is on: that is where its authorization server
        # (gateway.oauth) answers, with the metadata MCP clients look for; `/` as the SDKs spell it.
        own = [base.rstrip("/") + "/"] if config.oauth.enabled and service.plan else [config.tokens.own.issuer]
    issuers = own + [i.issuer for i in config.tokens.issuers]
    return web.json_response({
        "resource": base + path[len(METADATA_PATH):],
        "authorization_servers": issuers,
        "bearer_methods_supported": ["header"],
        "resource_name": service.id,
    }, headers={"Cache-Control": "public, max-age=300"})


def offer(service: ServiceConfig) -> dict[str, Any] | None:
    """The MCP part of /.gateway/plan: what each tool costs."""
    mcp = service.mcp
    if mcp is None:
        return None
    # Only tools/call is priced; every other method is free (with a valid token).
    doc = {"path": mcp.path, "tools": dict(mcp.tools), "default_tool_credits": mcp.default_tool_credits}
    if sells_tools(service):  # the `exact` terms of tools also sold per call (x402 in the tool call)
        terms = {name: exact_offer(service, None, name) for name in mcp.tool_x402}
        doc["x402"] = {name: t.model_dump(by_alias=True, exclude_none=True) for name, t in terms.items() if t}
        default = service.x402.price if service.x402 else None
        if default is not None:  # every other tool, at the service's price
            doc["default_tool_x402"] = offer_at(service, default).model_dump(by_alias=True, exclude_none=True)
    return doc
