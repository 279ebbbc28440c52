"""The request path, top to bottom (SPEC §4-§9).

route -> normalize -> classify -> authenticate -> reserve credits -> forward ->
charge (on the status line) -> relay,
every refusal raised as a `Problem` and answered in one place, one log line
per request. Each step lives in its own module; this file only orders them.
"""

from __future__ import annotations

import time
from dataclasses import asdict, dataclass

import structlog
from aiohttp import web

from gateway.config import GatewayConfig
from gateway.gateway_endpoints import GatewayEndpoints
from gateway.headers import request_id, upstream_request_headers
from gateway.observability import Metrics
from gateway.metering import Hold, Meter
from gateway.problems import Problem, render
from gateway.routing import ServiceRouter, classify, normalize_path
from gateway.tokens import TokenVerifier
from gateway.upstream import Upstream, target_url
from gateway.websocket import is_websocket, proxy_websocket

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
                response = render(problem, out.request_id)
            except Exception:
                # A bug, not a decision: answer in the same problem format and keep the traceback.
                log.exception("unhandled_error", request_id=out.request_id)
                out.code = "internal_error"
                response = render(Problem(500, "internal_error", "unexpected gateway error"), out.request_id)
            out.status = response.status
            return response
        finally:
            out.duration_ms = round((time.perf_counter() - started) * 1000, 3)
            self._record(out)

    def _record(self, out: Outcome) -> None:
        self.metrics.requests.labels(out.service or "", out.decision, str(out.status)).inc()
        self.metrics.duration.labels(out.decision).observe(out.duration_ms / 1000)
        log.info("request", **asdict(out))

    async def _decide_and_forward(
        self, request: web.Request, raw_path: str, query: str, out: Outcome
    ) -> web.StreamResponse:
        service = self.router.resolve(request.headers.get("Host"))
        out.service = service.id
        path = normalize_path(raw_path)
        out.path = path
        if path.startswith("/.gateway/"):
            # The gateway's own endpoints: answered here, never forwarded.
            out.decision = "gateway"
            return await self.endpoints.handle(request, service, path)
        decision = classify(service, request.method, path)
        out.rule, out.decision = decision.rule_name, decision.kind
        if decision.kind == "not_exposed":
            # Deny by default: only what the owner listed is reachable.
            raise Problem(404, "endpoint_not_exposed", f"{request.method} {path} is not exposed by {service.id}")
        subscriber, hold = None, None
        if decision.kind == "protected":
            who = await self.tokens.verify(
                request.headers.get("Authorization"), service, self.config.public_url(service)
            )
            subscriber = out.subscriber = who.address
            if subscriber != service.owner:  # the owner's own calls are free, never charged
                hold = await self.meter.reserve(service, decision.rule, subscriber, out.request_id)
        headers = upstream_request_headers(
            request.headers, service, peer=request.remote, public_host=request.headers.get("Host", ""),
            public_scheme=self.config.public_scheme, req_id=out.request_id, subscriber=subscriber,
        )
        url = target_url(service, path, query)
        try:
            if is_websocket(request):
                return await proxy_websocket(request, self.upstream.session, url, headers, service.timeout,
                                             on_open=lambda: self._charge(hold, 200, {}, out))
            upstream = await self.upstream.send(request, service, url, headers)
        except BaseException:
            await self.meter.release(hold)  # refused, unreachable, timed out, or the client left
            raise
        out.upstream_status = upstream.status
        try:
            credit_headers = await self._charge(hold, upstream.status, upstream.headers, out)
        except BaseException:
            upstream.release()
            raise
        strip = frozenset({hold.price.header.lower()}) if hold and hold.price.is_dynamic else frozenset()
        return await self.upstream.relay(request, upstream, {"X-Request-Id": out.request_id, **credit_headers}, strip)

    async def _charge(self, hold: Hold | None, status: int, headers, out: Outcome) -> dict[str, str]:
        credit_headers = await self.meter.complete(hold, status, headers)
        if credit_headers:
            out.credits = int(credit_headers["X-Credits-Charged"])
            self.metrics.credits_charged.labels(out.service or "").inc(out.credits)
        return credit_headers
