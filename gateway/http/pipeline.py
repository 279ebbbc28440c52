"""The request path, top to bottom (SPEC §4-§9), in `Pipeline.decide`:

route -> normalize -> classify -> CORS (a preflight is answered here) -> the gateway's own
answers (/.gateway/*, discovery documents) -> deny what is not exposed -> authenticate (or accept
an x402 per-call payment: in a header, or in an MCP tool call's `_meta`) -> price (an MCP call: by
its tools) -> reserve credits -> forward -> charge or settle (on the status line; a paid MCP tool
call: on its result, read first) -> relay.

What is learnt on the way is kept in one `Scope`; every refusal is raised (a `Problem`, or a
domain error of the layers below) and answered in one place (`refusals.answer`); one access-log
line per request. Each step lives in its own module; this file only orders them.
"""

from __future__ import annotations

import asyncio
import time

from aiohttp import web

from gateway.auth.tokens import TokenMissing, TokenVerifier
from gateway.config.model import GatewayConfig, ServiceConfig
from gateway.credits.meter import Meter
from gateway.http import cors, mcp, mcp_payments, refusals
from gateway.http.headers import upstream_request_headers
from gateway.http.own_endpoints import GatewayEndpoints
from gateway.http.plugin_documents import PluginDocuments
from gateway.http.problems import Problem
from gateway.http.public_url import public_base
from gateway.http.routing import Decision, ServiceRouter, classify, normalize_path
from gateway.http.scope import AccessLog, Scope
from gateway.http.upstream import Handover, Upstream, carried_through, target_url
from gateway.http.websocket import is_websocket, proxy_websocket
from gateway.ops.observability import Metrics, log_request
from gateway.x402.payments import PAYMENT_SIGNATURE, X402Payments


def classify_call(service: ServiceConfig, method: str, path: str) -> Decision:
    """The MCP path first (protected for every method), then the service's endpoint rules."""
    return mcp.classify(service, path) or classify(service, method, path)


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
        x402: X402Payments | None = None,
    ) -> None:
        self.config, self.router, self.tokens, self.meter = config, router, tokens, meter
        self.upstream, self.endpoints, self.metrics, self.x402 = upstream, endpoints, metrics, x402
        self.plugin_documents = PluginDocuments(upstream.session)

    async def handle(self, request: web.Request) -> web.StreamResponse:
        """Answer one request; write its access-log line whatever happens (client gone included)."""
        started = time.perf_counter()
        scope = Scope.of(request)
        try:
            try:
                response = await self.decide(request, scope)
            except Exception as error:  # noqa: BLE001 - refusals, and bugs (500, traceback logged)
                response = refusals.answer(error, scope)
            cors.decorate(response, scope.cors)  # answers already streaming carry them from the relay
            scope.log.status = response.status
            return response
        finally:
            scope.log.duration_ms = round((time.perf_counter() - started) * 1000, 3)
            self._record(scope.log)

    async def decide(self, request: web.Request, scope: Scope) -> web.StreamResponse:
        """The whole decision about one request, in order; every refusal is raised."""
        service = self.router.resolve(request.headers.get("Host"))
        scope.routed(service, public_base(self.config, request))
        scope.normalized(normalize_path(scope.raw_path))  # what is authorized is exactly what is forwarded
        preflight = service.cors is not None and cors.is_preflight(request)
        # A preflight is classified under the method it asks about: that one decision answers it.
        method = cors.requested_method(request) if preflight else request.method
        decision = scope.classified(classify_call(service, method, scope.path))
        scope.cors = cors.answer_headers(service.cors, request)  # on every answer, refusals included
        if preflight:
            # A browser asking whether it may call: it sends no token, so the gateway answers.
            scope.answered_by_gateway("preflight")
            exposed = scope.path.startswith("/.gateway/") or decision.kind != "not_exposed"
            return cors.preflight(service.cors, request, scope.cors, scope.path, exposed)
        if scope.path.startswith("/.gateway/"):
            # The gateway's own endpoints: answered here, never forwarded.
            scope.answered_by_gateway("gateway")
            return await self.endpoints.handle(request, service, scope.path)
        if decision.kind != "protected" and (document := await self._own_document(request, scope)):
            scope.answered_by_gateway("gateway", keep_rule=True)  # protected documents are forwarded
            return document
        if decision.kind == "not_exposed":
            # Deny by default: only what the owner listed is reachable.
            raise Problem(404, "endpoint_not_exposed",
                          f"{request.method} {scope.path} is not exposed by {service.id}")
        if decision.kind == "protected":
            await self._admit(request, scope, service, decision)
            # Nothing to hold: paid per call, the owner's own call, or (no subscriber) free MCP.
            if scope.payment is None and scope.subscriber is not None and scope.subscriber != service.owner:
                if scope.call is None:  # (read already where MCP tools are also sold per call)
                    scope.priced(await mcp.read_call(request, service, decision))  # MCP: by its tools
                price = scope.call.price if scope.call else None  # else the rule's
                scope.hold = await self.meter.reserve(service, decision.rule, scope.subscriber, scope.request_id,
                                                      price=price)
        return await self._forward(request, scope)

    def _record(self, line: AccessLog) -> None:
        self.metrics.count_request(line.service or "", line.decision, line.status, line.duration_ms / 1000)
        log_request(vars(line))  # the access-log line (JSON: rendered directly, see observability)

    async def _admit(self, request: web.Request, scope: Scope, service: ServiceConfig, decision: Decision) -> None:
        """An x402 payment (an endpoint or MCP tool sold per call), or else a subscriber's token."""
        if self.x402 is not None and scope.on_mcp_path and self.x402.sells_tools(service):
            # Tools sold per call: the body says what runs and whether it is paid (mcp_payments).
            if await mcp_payments.admit(self.x402, request, scope, service, decision):
                return
        offer = self.x402.sells(service, decision.rule) if self.x402 is not None else None
        payment = request.headers.get(PAYMENT_SIGNATURE) if offer is not None else None
        if payment is not None:
            # Why no token needed, and the payment first: a verified payment, recorded before
            # forwarding, pays for this one call; a client that attaches one means to pay with it
            # (x402 clients retry the very request that got the 402, its Authorization included).
            scope.payment = await self.x402.accept(payment, service, decision.rule, offer, scope.request_id)
            scope.log.subscriber = scope.payment.payer
            return
        try:
            scope.authenticated(await self._authenticate(request, service))
        except TokenMissing:
            if offer is None:
                raise
            # Why 402, not 401: the call may be paid per call; the answer's terms say how (or a token).
            raise self.x402.needed(service, decision.rule, "this call needs a payment (PAYMENT-SIGNATURE, "
                                   "x402) or a subscriber's token") from None

    async def _authenticate(self, request: web.Request, service: ServiceConfig) -> str:
        """The subscriber's address from a valid token (or a 401/403 problem)."""
        who = await self.tokens.verify(request.headers.get("Authorization"), service,
                                       self.config.public_url(service))
        return who.address

    async def _own_document(self, request: web.Request, scope: Scope) -> web.Response | None:
        """Discovery documents the gateway writes itself: the plugin manifest and its OpenAPI
        document (upstream URLs rewritten), and an MCP service's protected-resource metadata."""
        if request.method not in ("GET", "HEAD"):
            return None
        assert scope.service is not None
        return (mcp.resource_metadata(self.config, scope.service, scope.path, scope.base)
                or self.endpoints.oauth_metadata(scope.service, scope.path, scope.base)  # RFC 8414
                or await self.plugin_documents.answer(request, scope.service, scope.path, scope.base))

    async def _forward(self, request: web.Request, scope: Scope) -> web.StreamResponse:
        """Send upstream; charge on its status line (or release); relay its answer as it streams."""
        service, hold = scope.service, scope.hold
        assert service is not None
        try:  # from here on, every way out charges or releases the hold
            headers = upstream_request_headers(
                request.headers, service, peer=request.remote, public_host=request.headers.get("Host", ""),
                public_scheme=self.config.public_scheme, req_id=scope.request_id, subscriber=scope.subscriber,
                trusted_proxies=self.config.trusted_proxies,
            )
            url = target_url(service, scope.path, scope.query)
            if scope.sale is not None and scope.payment is not None and scope.call is not None:
                mcp_payments.prepare(headers, scope.call.body or b"")  # forwarded without the payment
            if is_websocket(request):
                # Shielded: the client may leave while its charge is being recorded.
                return await proxy_websocket(request, self.upstream.session, url, headers, service.timeout,
                                             on_open=lambda: asyncio.shield(self._charge(scope, 200, {})))
            handover = Handover()
            sending = self._send_and_charge(request, scope, url, headers, handover)
            if hold is None and scope.payment is None:  # nothing to charge: a client leaving cuts it off
                upstream, credit_headers = await sending
            else:  # a metered call the upstream has in full is carried through, and paid
                upstream, credit_headers = await carried_through(
                    sending, handover, abandon=lambda result: result[0].release(), request_id=scope.request_id)
        except BaseException:
            await self.meter.release(hold)  # refused, unreachable, timed out, or the client left early
            if self.x402 is not None:
                await self.x402.abandon(scope.payment)  # not settled: the payer keeps the money
            raise
        strip = frozenset({hold.price.header.lower()}) if hold and hold.price.is_dynamic else frozenset()
        cors_headers, cors_strip = cors.relay_headers(scope.cors, upstream.headers)
        extra = {"X-Request-Id": scope.request_id, **credit_headers, **cors_headers}
        if isinstance(upstream, mcp_payments.ReadAnswer):  # a paid tool call: read to settle it
            return upstream.response(extra, strip | cors_strip)
        return await self.upstream.relay(request, upstream, extra, strip | cors_strip)

    async def _send_and_charge(self, request: web.Request, scope: Scope, url, headers, handover: Handover):
        """Send the request; on the upstream's status line charge a 2xx (or release the hold)."""
        body = scope.call.body if scope.call else None  # an MCP call's body was read to price it
        upstream = await self.upstream.send(request, scope.service, url, headers, body, handover)
        handover.done = True  # the upstream answered: whatever it did is done
        scope.log.upstream_status = upstream.status
        try:
            if scope.sale is not None and scope.payment is not None:  # settled on the tool's result
                assert self.x402 is not None
                return await mcp_payments.finish(self.x402, scope, upstream), {}
            return upstream, await self._charge(scope, upstream.status, upstream.headers)
        except BaseException:
            upstream.release()
            raise

    async def _charge(self, scope: Scope, status: int, headers) -> dict[str, str]:
        if scope.payment is not None:  # paid per call: settle a 2xx (PAYMENT-RESPONSE), void the rest
            assert self.x402 is not None and scope.service is not None and scope.decision is not None
            return await self.x402.complete(scope.payment, status, scope.service, scope.decision.rule)
        credit_headers = await self.meter.complete(scope.hold, status, headers)
        if credit_headers:
            scope.log.credits = int(credit_headers["X-Credits-Charged"])
            self.metrics.count_credits("charged", scope.log.service or "", scope.log.credits)
        return credit_headers
