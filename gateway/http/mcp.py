"""MCP servers (Streamable HTTP transport) behind the gateway, priced per tool.

A service with `mcp: {path: /mcp, tools: {search: 2}, default_tool_credits: 1}` has its MCP
path protected for every method: each request needs a valid token. A GET (the server's event
stream every SDK client opens), HEAD or DELETE (session end) runs no tool: it needs the token
and costs nothing (no credits are held). A POST there carries JSON-RPC; its price depends on
what it asks for, so its body is read first (within `max_body`, and decoded within `max_body`
when it is compressed), priced, and forwarded as the very bytes the client sent:

- `tools/call`: the tool's credits (`tools`, else `default_tool_credits`); a batch is the sum;
- everything else (`initialize`, `server/discover`, `tools/list`, `ping`, notifications,
  responses to the server's requests, resources and prompts): free, but still authenticated.

A batch holds at most `max_batch` messages (default 100; more is 400 before any pricing).
Refusals of a priced call are JSON-RPC error objects (same HTTP status and headers), so that an
MCP client shows the reason: the first error's `data` is the RFC 9457 problem, the others carry
only its code, so a refused batch answers a bounded size. A 401 on the MCP path names
the gateway's RFC 9728 metadata (`resource_metadata`), served at
`/.well-known/oauth-protected-resource[<path>]`.
"""

from __future__ import annotations

import json
from dataclasses import dataclass
from typing import Any

from aiohttp import web

from gateway.http import client_json
from gateway.config.model import GatewayConfig, McpConfig, Price, ServiceConfig
from gateway.http.problems import TITLES, Problem, problem_body, render
from gateway.http.routing import Decision, lax_form
from gateway.http.upstream import decoded, read_raw

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


def is_free(service: ServiceConfig, decision: Decision, method: str) -> bool:
    """A request on the MCP path that cannot run a tool: it needs a valid token, but no credits."""
    return service.mcp is not None and decision.rule is service.mcp.rule and method in FREE_METHODS


def log_rule(rule: str | None, tools: tuple[str, ...]) -> str:
    """The access log's `rule` for an MCP call: the tools it calls, bounded in count and length."""
    names = [name[:LOG_TOOL_NAME] for name in tools[:LOG_TOOLS]]
    more = f" (+{len(tools) - LOG_TOOLS} more)" if len(tools) > LOG_TOOLS else ""
    return f"{rule}: {', '.join(names)}{more}"


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
    return McpCall(body, Price(fixed=credits), tuple(tools), tuple(ids), batch)


def parse_messages(body: bytes) -> tuple[list[Any], bool]:
    """The JSON-RPC messages of a body (a batch is a list); Problem 400 if it is not JSON."""
    # Why refuse instead of forwarding free: what is not priced here must not run there.
    data = client_json.loads(body, "an MCP request body is JSON-RPC in UTF-8 JSON")
    if isinstance(data, list):
        return data, True
    return [data], False


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
    # number the HTTP layer already shows (402: payment required). Why the full problem only
    # once: one copy per id made a refused batch answer megabytes; the others name its code.
    short = {"code": problem.code, "request_id": request_id}
    errors = [{"jsonrpc": "2.0", "id": rid, "error": {"code": problem.status, "message": message,
                                                      "data": details if i == 0 else short}}
              for i, rid in enumerate(problem.ids)]
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
