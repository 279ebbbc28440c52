"""MCP servers (Streamable HTTP transport) behind the gateway, priced per tool.

A service with `mcp: {path: /mcp, tools: {search: 2}, default_tool_credits: 1}` has its MCP
path protected for every method: each request needs a valid token. A POST there carries
JSON-RPC; its price depends on what it asks for, so its body is read first (within
`max_body`), priced, and forwarded as the very bytes that were priced:

- `tools/call`: the tool's credits (`tools`, else `default_tool_credits`); a batch is the sum;
- everything else (`initialize`, `server/discover`, `tools/list`, `ping`, notifications,
  responses to the server's requests, resources and prompts): free, but still authenticated.

Refusals of a priced call are JSON-RPC error objects (same HTTP status and headers), so that an
MCP client shows the reason (`error.data` is the RFC 9457 problem). A 401 on the MCP path names
the gateway's RFC 9728 metadata (`resource_metadata`), served at
`/.well-known/oauth-protected-resource[<path>]`.
"""

from __future__ import annotations

import json
from dataclasses import dataclass
from typing import Any

from aiohttp import web

from gateway.config import GatewayConfig, McpConfig, Price, ServiceConfig
from gateway.problems import TITLES, Problem, problem_body, render
from gateway.routing import Decision, lax_form
from gateway.upstream import read_bounded

TOOLS_CALL = "tools/call"
METADATA_PATH = "/.well-known/oauth-protected-resource"


def classify(service: ServiceConfig, path: str) -> Decision | None:
    """The MCP path is protected for every method (GET opens the server's event stream, DELETE
    ends a session); checked before the endpoint rules, so a broad open rule cannot expose it."""
    mcp = service.mcp
    # Why the lax form too: "//mcp" or "/mcp/" may reach the same handler on a lenient upstream.
    if mcp is not None and (path == mcp.path or lax_form(path) == mcp.path):
        return Decision("protected", mcp.rule)
    return None


@dataclass(frozen=True)
class McpCall:
    """One POST on the MCP path: the bytes to forward, what they cost, and who to answer on refusal."""

    body: bytes
    price: Price
    tools: tuple[str, ...]          # tools called, in order (for logs)
    ids: tuple[Any, ...]            # ids of the JSON-RPC requests in the body
    batch: bool

    def refusal(self, problem: Problem) -> Problem:
        """The same problem, answered as JSON-RPC errors (when there is a request to answer)."""
        return JsonRpcRefusal(problem, self.ids, self.batch) if self.ids else problem


async def read_call(request: web.Request, service: ServiceConfig, decision: Decision) -> McpCall | None:
    """Read and price a POST on the MCP path; None for anything else (streamed as usual)."""
    if service.mcp is None or decision.rule is not service.mcp.rule or request.method != "POST":
        return None
    body = await read_bounded(request, service.max_body)
    messages, batch = parse_messages(body)
    return price_messages(service.mcp, body, messages, batch)


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
    return McpCall(body, Price(fixed=credits), tuple(tools), tuple(ids), batch)


def parse_messages(body: bytes) -> tuple[list[Any], bool]:
    """The JSON-RPC messages of a body (a batch is a list); Problem 400 if it is not JSON."""
    try:
        data = json.loads(body.decode("utf-8"), object_pairs_hook=_no_duplicate_keys)
    except (UnicodeDecodeError, ValueError) as exc:
        # Why refuse instead of forwarding free: what is not priced here must not run there.
        raise Problem(400, "bad_request", f"an MCP request body is JSON-RPC in UTF-8 JSON ({exc})") from None
    if isinstance(data, list):
        return data, True
    return [data], False


def _no_duplicate_keys(pairs: list[tuple[str, Any]]) -> dict[str, Any]:
    # Why: with {"method": "tools/list", "method": "tools/call"} a parser that keeps the first
    # key and one that keeps the last disagree on what runs; such a body is refused.
    keys = [key for key, _ in pairs]
    if len(keys) != len(set(keys)):
        raise ValueError("duplicate key in a JSON object")
    return dict(pairs)


class JsonRpcRefusal(Problem):
    """A refusal answered as JSON-RPC errors, one per request of the body."""

    def __init__(self, problem: Problem, ids: tuple[Any, ...], batch: bool) -> None:
        super().__init__(problem.status, problem.code, problem.detail, extra=problem.extra, headers=problem.headers)
        self.ids, self.batch = ids, batch


def render_refusal(problem: Problem, request_id: str) -> web.Response:
    """RFC 9457 problem JSON, or, for a refused MCP call, JSON-RPC errors carrying the problem."""
    if not isinstance(problem, JsonRpcRefusal):
        return render(problem, request_id)
    details = problem_body(problem, request_id)
    message = f"{TITLES.get(problem.status, 'Error')}: {problem.detail}"
    checkout = (problem.extra.get("plan") or {}).get("checkout_url")
    if problem.status == 402 and checkout:
        message += f"; buy credits at {checkout}"
    # Why the HTTP status as the error code: outside JSON-RPC's reserved range, and the same
    # number the HTTP layer already shows (402: payment required).
    errors = [{"jsonrpc": "2.0", "id": rid, "error": {"code": problem.status, "message": message, "data": details}}
              for rid in problem.ids]
    return web.Response(status=problem.status, body=json.dumps(errors if problem.batch else errors[0]).encode(),
                        content_type="application/json", headers={"X-Request-Id": request_id, **problem.headers})


def with_resource_metadata(problem: Problem, service: ServiceConfig, decision: Decision | None, base: str) -> Problem:
    """A 401 on the MCP path tells the client where the resource's metadata is (RFC 9728 §5.1)."""
    challenge = problem.headers.get("WWW-Authenticate")
    if problem.status == 401 and challenge and service.mcp and decision and decision.rule is service.mcp.rule:
        problem.headers["WWW-Authenticate"] = (
            f'{challenge}, resource_metadata="{base}{METADATA_PATH}{service.mcp.path}"')
    return problem


def resource_metadata(config: GatewayConfig, service: ServiceConfig, path: str, base: str) -> web.Response | None:
    """RFC 9728 protected-resource metadata for a service with an MCP path; None for other paths.

    Served at the root form (resource: the service) and at the path-inserted form for the MCP
    path (resource: the MCP endpoint), which MCP clients try first. It names the issuers whose
    tokens the gateway accepts, its own first."""
    if service.mcp is None or path not in (METADATA_PATH, METADATA_PATH + service.mcp.path):
        return None
    issuers = ([config.tokens.own.issuer] if config.tokens.own else []) + [i.issuer for i in config.tokens.issuers]
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
    return {"path": mcp.path, "tools": dict(mcp.tools), "default_tool_credits": mcp.default_tool_credits}
