"""One request's scope: everything the pipeline learns about a request, in one typed place.

The pipeline fills it in step by step (route, classify, CORS, authenticate, price, reserve,
forward); the refusal renderer (`refusals`) and the access log read it. Nothing about a request
is stored anywhere else (not on the aiohttp request object).
"""

from __future__ import annotations

from dataclasses import dataclass
from typing import TYPE_CHECKING

from gateway.http.headers import request_id
from gateway.http.mcp import log_rule

if TYPE_CHECKING:
    from aiohttp import web

    from gateway.config.model import ServiceConfig
    from gateway.credits.meter import Hold
    from gateway.http.mcp import McpCall  # noqa: F401 - a type only
    from gateway.http.routing import Decision
    from gateway.x402.mcp import ToolSale
    from gateway.x402.payments import Accepted


@dataclass
class AccessLog:
    """The fields of the request's access-log line (never a token, never a secret)."""

    request_id: str
    method: str
    path: str
    service: str | None = None
    rule: str | None = None
    decision: str = "refused"
    subscriber: str | None = None
    status: int = 499  # stays so only if the client went away first (nginx's convention)
    upstream_status: int | None = None
    credits: int | None = None
    code: str | None = None
    duration_ms: float = 0.0


@dataclass
class Scope:
    """One request, as far as the pipeline has decided it.

    `path` is the normalized path (what is authorized is exactly what is forwarded); `base` the
    public base URL the client used (`public_url.public_base`); `cors` the CORS headers of the
    answer (None: the service has no `cors`); `call` the MCP call when the body was read and
    priced; `hold` the credits held for the call (None: nothing metered); `payment` the x402
    per-call payment accepted for it (None: not paid per call); `sale` the MCP tool call sold per
    call with x402 (None: not one; its refusals are answered as tool results)."""

    request_id: str
    raw_path: str
    query: str
    log: AccessLog
    service: ServiceConfig | None = None
    path: str = ""
    decision: Decision | None = None
    base: str = ""
    subscriber: str | None = None
    hold: Hold | None = None
    call: McpCall | None = None
    cors: dict[str, str] | None = None
    payment: Accepted | None = None
    sale: ToolSale | None = None

    @classmethod
    def of(cls, request: web.Request) -> Scope:
        """A new scope: the request id (a well-formed incoming one kept) and the raw path."""
        rid = request_id(request.headers.get("X-Request-Id"))
        raw_path, _, query = request.raw_path.partition("?")
        return cls(rid, raw_path, query, AccessLog(rid, request.method, raw_path))

    def routed(self, service: ServiceConfig, base: str) -> None:
        self.service, self.base, self.log.service = service, base, service.id

    def normalized(self, path: str) -> None:
        self.path = self.log.path = path

    def classified(self, decision: Decision) -> Decision:
        self.decision = decision
        self.log.rule, self.log.decision = decision.rule_name, decision.kind
        return decision

    def answered_by_gateway(self, decision: str, keep_rule: bool = False) -> None:
        """The gateway answers itself (`preflight`, `gateway`): logged so, never forwarded."""
        self.log.decision = decision
        if not keep_rule:
            self.log.rule = None

    def authenticated(self, subscriber: str) -> None:
        self.subscriber = self.log.subscriber = subscriber

    def priced(self, call: McpCall | None) -> None:
        """An MCP call read and priced: the log's `rule` names its tools (bounded: a batch may
        name many)."""
        self.call = call
        if call is not None and call.tools:
            self.log.rule = log_rule(self.log.rule, call.tools)

    @property
    def on_mcp_path(self) -> bool:
        """The request is on its service's MCP path (a 401 there names the resource metadata)."""
        mcp = self.service.mcp if self.service is not None else None
        return mcp is not None and self.decision is not None and self.decision.rule is mcp.rule
