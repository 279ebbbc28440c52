"""The request path, top to bottom (SPEC §4-§9).

route -> normalize -> (CORS preflight) -> classify -> (documents the gateway answers itself)
-> authenticate -> price (an MCP call: by its tools) -> reserve credits -> forward ->
charge (on the status line) -> relay,
every refusal raised as a `Problem` and answered in one place, one log line
per request. Each step lives in its own module; this file only orders them.
"""

from __future__ import annotations

import time
from dataclasses import dataclass

import structlog
from aiohttp import web
from aiohttp.web_protocol import RequestPayloadError

from gateway.http import cors, mcp
from gateway.config.model import GatewayConfig, ServiceConfig
from gateway.http.own_endpoints import GatewayEndpoints
from gateway.http.headers import request_id, upstream_request_headers
from gateway.ops.observability import Metrics
from gateway.credits.meter import Hold, Meter
from gateway.credits.offer import add_header as with_payment_terms
from gateway.http.plugin_documents import PluginDocuments
from gateway.http.problems import Problem, render
from gateway.http.public_url import public_base
from gateway.http.routing import Decision, ServiceRouter, classify, normalize_path
from gateway.auth.tokens import TokenVerifier
from gateway.http.upstream import Handover, Upstream, carried_through, target_url
from gateway.http.websocket import is_websocket, proxy_websocket

log = structlog.get_logger("gateway.access")


@dataclass
class Outcome:
    """What the access log says about one request (never a token, never a secret)."""

    request_id: str
    method: str
    path: str
    service: str | None = None
    rule: str | None = None
    decision: str = "refused"
    subscriber: str | None = None
    status: int = 0
    upstream_status: int | None = None
    credits: int | None = None
    code: str | None = None
    duration_ms: float = 0.0


@dataclass
class Admitted:
    """A call let through: who (None on open endpoints), its credit hold, its MCP call if priced so."""

    subscriber: str | None = None
    hold: Hold | None = None
    call: mcp.McpCall | None = None


class Pipeline:
    def __init__(
        self,
        config: GatewayConfig,
        router: ServiceRouter,
        tokens: TokenVerifier,
        meter: Meter,
        upstream: Upstream,
        endpoints: GatewayEndpoints,
        metrics: Metrics,
    ) -> None:
        self.config, self.router, self.tokens, self.meter = config, router, tokens, meter
        self.upstream, self.endpoints, self.metrics = upstream, endpoints, metrics
        self.plugin_documents = PluginDocuments(upstream.session)

    async def handle(self, request: web.Request) -> web.StreamResponse:
        """Answer one request; write its access-log line whatever happens (client gone included)."""
        started = time.perf_counter()
        raw_path, _, query = request.raw_path.partition("?")
        out = Outcome(request_id(request.headers.get("X-Request-Id")), request.method, raw_path)
        out.status = 499  # stays so only if the client went away first (nginx's convention)
        try:
            try:
                response = await self._decide_and_forward(request, raw_path, query, out)
            except Problem as problem:
                out.code = problem.code
                response = mcp.render_refusal(problem, out.request_id)  # problem JSON (JSON-RPC for MCP calls)
            except RequestPayloadError:
                # The body's framing broke (a bad chunk): the client's fault, not a bug (edge_errors).
                out.code = "bad_request"
                response = render(Problem(400, "bad_request", "malformed request body"), out.request_id)
            except Exception:
                # A bug, not a decision: answer in the same problem format and keep the traceback.
                log.exception("unhandled_error", request_id=out.request_id)
                out.code = "internal_error"
                response = render(Problem(500, "internal_error", "unexpected gateway error"), out.request_id)
            cors.decorate(request, response)  # answers already streaming carry them from the relay
            out.status = response.status
            return response
        finally:
            out.duration_ms = round((time.perf_counter() - started) * 1000, 3)
            self._record(out)

    def _record(self, out: Outcome) -> None:
        self.metrics.requests.labels(out.service or "", out.decision, str(out.status)).inc()
        self.metrics.duration.labels(out.decision).observe(out.duration_ms / 1000)
        log.info("request", **vars(out))

    async def _decide_and_forward(
        self, request: web.Request, raw_path: str, query: str, out: Outcome
    ) -> web.StreamResponse:
        service = self.router.resolve(request.headers.get("Host"))
        out.service = service.id
        path = out.path = normalize_path(raw_path)  # what is authorized is exactly what is forwarded
        decision = self._classify(service, request.method, path)
        out.rule, out.decision = decision.rule_name, decision.kind
        if (answer := await self._answer_locally(request, service, path, decision, out)) is not None:
            return answer
        if decision.kind == "not_exposed":
            # Deny by default: only what the owner listed is reachable.
            raise Problem(404, "endpoint_not_exposed", f"{request.method} {path} is not exposed by {service.id}")
        admitted = await self._admit(request, service, decision, out)
        return await self._forward(request, service, path, query, admitted, out)

    async def _answer_locally(self, request: web.Request, service: ServiceConfig, path: str, decision: Decision,
                              out: Outcome) -> web.StreamResponse | None:
        """What the gateway answers itself: CORS preflights, /.gateway/*, discovery documents."""
        if service.cors is not None:
            cors.remember(request, service.cors)
            if cors.is_preflight(request):
                # A browser asking whether it may call: it sends no token, so the gateway answers.
                out.decision, out.rule = "preflight", None
                return cors.preflight(service.cors, request, path, lambda method: self._exposes(service, method, path))
        if path.startswith("/.gateway/"):
            # The gateway's own endpoints: answered here, never forwarded.
            out.decision, out.rule = "gateway", None
            return await self.endpoints.handle(request, service, path)
        if decision.kind != "protected" and (document := await self._own_document(request, service, path)):
            out.decision = "gateway"  # a discovery document the gateway writes (protected ones are forwarded)
            return document
        return None

    async def _admit(self, request: web.Request, service: ServiceConfig, decision: Decision,
                     out: Outcome) -> Admitted:
        """Who calls and what it costs: authenticate, price, reserve (protected calls only)."""
        if decision.kind != "protected":
            return Admitted()
        subscriber = out.subscriber = await self._authenticate(request, service, decision)
        if subscriber == service.owner:
            return Admitted(subscriber)  # the owner's own calls are free, never charged
        if mcp.is_free(service, decision, request.method):
            return Admitted(subscriber)  # an MCP event stream or session end: no tool runs, nothing held
        call = await mcp.read_call(request, service, decision)  # an MCP POST: priced by its tools
        if call is not None and call.tools:
            out.rule = mcp.log_rule(out.rule, call.tools)  # bounded: a batch may name many tools
        return Admitted(subscriber, await self._reserve(request, service, decision, subscriber, out, call), call)

    async def _forward(self, request: web.Request, service: ServiceConfig, path: str, query: str,
                       admitted: Admitted, out: Outcome) -> web.StreamResponse:
        """Send upstream; charge on its status line (or release); relay its answer as it streams."""
        hold, call = admitted.hold, admitted.call
        try:  # from here on, every way out charges or releases the hold
            headers = upstream_request_headers(
                request.headers, service, peer=request.remote, public_host=request.headers.get("Host", ""),
                public_scheme=self.config.public_scheme, req_id=out.request_id, subscriber=admitted.subscriber,
                trusted_proxies=self.config.trusted_proxies,
            )
            url = target_url(service, path, query)
            if is_websocket(request):
                return await proxy_websocket(request, self.upstream.session, url, headers, service.timeout,
                                             on_open=lambda: self._charge(hold, 200, {}, out))
            handover = Handover()
            sending = self._send_and_charge(request, service, url, headers, admitted, out, handover)
            if hold is None:  # nothing to charge: a client that leaves simply cuts the call off
                upstream, credit_headers = await sending
            else:  # a metered call the upstream has in full is carried through, and paid
                upstream, credit_headers = await carried_through(
                    sending, handover, abandon=lambda result: result[0].release(), request_id=out.request_id)
        except BaseException:
            await self.meter.release(hold)  # refused, unreachable, timed out, or the client left early
            raise
        strip = frozenset({hold.price.header.lower()}) if hold and hold.price.is_dynamic else frozenset()
        extra = {"X-Request-Id": out.request_id, **credit_headers, **cors.answer_headers(request, upstream.headers)}
        return await self.upstream.relay(request, upstream, extra, strip | cors.strip_upstream(request))

    async def _send_and_charge(self, request: web.Request, service: ServiceConfig, url, headers,
                               admitted: Admitted, out: Outcome, handover: Handover):
        """Send the request; on the upstream's status line charge a 2xx (or release the hold)."""
        call = admitted.call
        upstream = await self.upstream.send(request, service, url, headers, call.body if call else None, handover)
        handover.done = True  # the upstream answered: whatever it did is done
        out.upstream_status = upstream.status
        try:
            return upstream, await self._charge(admitted.hold, upstream.status, upstream.headers, out)
        except Problem as problem:
            upstream.release()
            raise call.refusal(problem) if call else problem  # a refused MCP call is answered in JSON-RPC
        except BaseException:
            upstream.release()
            raise

    @staticmethod
    def _classify(service: ServiceConfig, method: str, path: str) -> Decision:
        return mcp.classify(service, path) or classify(service, method, path)

    def _exposes(self, service: ServiceConfig, method: str, path: str) -> bool:
        return path.startswith("/.gateway/") or self._classify(service, method, path).kind != "not_exposed"

    async def _authenticate(self, request: web.Request, service: ServiceConfig, decision: Decision | None) -> str:
        """The subscriber's address from a valid token, or a 401/403 problem."""
        try:
            who = await self.tokens.verify(
                request.headers.get("Authorization"), service, self.config.public_url(service)
            )
        except Problem as problem:
            # An MCP client learns from the challenge where to get a token (RFC 9728).
            raise mcp.with_resource_metadata(problem, service, decision, public_base(self.config, request))
        return who.address

    async def _reserve(self, request: web.Request, service: ServiceConfig, decision: Decision, subscriber: str,
                       out: Outcome, call: mcp.McpCall | None) -> Hold | None:
        try:
            return await self.meter.reserve(service, decision.rule, subscriber, out.request_id,
                                            price=call.price if call else None)
        except Problem as problem:
            # A 402 carries machine-readable terms; a refused MCP call is answered in JSON-RPC.
            problem = with_payment_terms(problem, public_base(self.config, request), out.path)
            raise call.refusal(problem) if call else problem

    async def _own_document(self, request: web.Request, service: ServiceConfig, path: str) -> web.Response | None:
        """Discovery documents the gateway writes itself: the plugin manifest and its OpenAPI
        document (upstream URLs rewritten), and an MCP service's protected-resource metadata."""
        if request.method not in ("GET", "HEAD"):
            return None
        base = public_base(self.config, request)
        return (mcp.resource_metadata(self.config, service, path, base)
                or await self.plugin_documents.answer(request, service, path, base))

    async def _charge(self, hold: Hold | None, status: int, headers, out: Outcome) -> dict[str, str]:
        credit_headers = await self.meter.complete(hold, status, headers)
        if credit_headers:
            out.credits = int(credit_headers["X-Credits-Charged"])
            self.metrics.credits_charged.labels(out.service or "").inc(out.credits)
        return credit_headers
