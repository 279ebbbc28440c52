"""x402 payments inside MCP tool calls, on the request path (the protocol's pieces: gateway.x402.mcp).

Where some tool of a service is sold per call (`mcp.tools.NAME.x402`, or the service's `x402.price`):

- `admit` reads the body first. A lone `tools/call` of a tool sold per call is a sale: paid
  (`params._meta["x402/payment"]`), it is verified and recorded as a PAYMENT-SIGNATURE is, needs
  no token, and is forwarded without the payment; unpaid and without a token, it is answered with
  the terms in a tool result (`refusals` renders `PaymentNeeded` so for a sale). A request that
  runs no tool (initialize, server/discover, tools/list, ping, notifications, the GET stream,
  DELETE) passes without a token: it is free, there is nobody to charge. Anything else (a token,
  a batch, a tool sold for credits only) takes the token's way, as without x402.
- `finish` reads the upstream's answer to a paid call (JSON, or server-sent events up to the
  call's response; at most MAX_ANSWER bytes) before settling: a non-2xx, a JSON-RPC error, a tool
  result with `isError`, or no response at all is not settled (void: the payer keeps the money);
  a successful tool result is settled and carries `_meta["x402/payment-response"]`.
"""

from __future__ import annotations

import asyncio
import dataclasses
from typing import TYPE_CHECKING

import aiohttp
from aiohttp import web
from multidict import CIMultiDict
from x402.http import encode_payment_response_header

from gateway.config.model import ServiceConfig
from gateway.http.headers import client_response_headers
from gateway.http.mcp import read_call
from gateway.http.problems import Problem
from gateway.http.routing import Decision
from gateway.http.scope import Scope
from gateway.http.upstream import upstream_problem
from gateway.x402.mcp import forwarded, payload_of, response_in, rewritten, sale_of, served, with_settlement
from gateway.x402.payments import PAYMENT_RESPONSE

if TYPE_CHECKING:
    from gateway.x402.payments import X402Payments

MAX_ANSWER = 8 * 1024 * 1024  # bytes of a paid tool call's answer read before settling it


async def admit(payments: X402Payments, request: web.Request, scope: Scope, service: ServiceConfig,
                decision: Decision) -> bool:
    """True: admitted here (a verified payment, or a free request with no token); False: the
    token's way decides (a token is there, or nothing here can admit the request)."""
    mcp = service.mcp
    assert mcp is not None
    call = await read_call(request, service, decision)
    scope.priced(call)
    sale = sale_of(call.single, lambda tool: payments.sells_tool(service, tool),
                   lambda tool: mcp.tools.get(tool, mcp.default_tool_credits)) if call is not None else None
    scope.sale = sale
    if sale is not None and sale.payment is not None:
        try:
            payload = payload_of(sale.payment)
        except ValueError as exc:
            # Why the terms (a tool result) and not a 400: x402's MCP transport answers every
            # payment that does not pay so, with the reason; the client may sign a proper one.
            raise payments.rejected("invalid_payload", str(exc), service, sale.credits) from None
        # Why no token needed, and the payment first: as on the HTTP path, a verified payment,
        # recorded before forwarding, pays for this one call (x402 clients keep their headers).
        scope.payment = await payments.accept_payload(payload, service, None, sale.offer, scope.request_id)
        scope.log.subscriber = scope.payment.payer
        scope.call = dataclasses.replace(call, body=forwarded(sale))
        return True
    if "Authorization" in request.headers:
        return False  # a subscriber's token: its credits pay (a refusal still shows the x402 terms)
    if call is not None and not call.tools:
        # Why no token: nothing runs that costs anything, and an x402 client has no token to
        # show; the upstream is told no subscriber (no X-Gateway-Subscriber).
        return True
    if sale is not None:
        # Why a tool result and not a 401: the call may be paid per call; the terms say how.
        raise payments.needed(service, None, 'this tool call needs a payment (x402: params._meta["x402/payment"]) '
                              "or a subscriber's token", credits=sale.credits)
    return False  # a batch, a notification, a tool sold for credits only: a token is needed


def prepare(headers: CIMultiDict[str], body: bytes) -> None:
    """The upstream request of a paid call: its body is the call without the payment (plain JSON),
    and its answer must be readable to settle it (no content coding)."""
    headers.popall("Content-Encoding", None)
    headers["Content-Length"] = str(len(body))
    headers["Accept-Encoding"] = "identity"


class ReadAnswer:
    """A paid call's answer, read whole (to settle it) and answered from memory."""

    def __init__(self, upstream: aiohttp.ClientResponse, body: bytes, extra: dict[str, str]) -> None:
        self.status, self.reason, self.headers = upstream.status, upstream.reason, upstream.headers
        self.body, self.extra = body, extra

    def release(self) -> None:
        """Nothing to release: the upstream's connection was released once the answer was read."""

    def response(self, extra: dict[str, str], strip: frozenset[str]) -> web.Response:
        headers = client_response_headers(self.headers, strip=strip | {"content-length"})
        headers.update(self.extra)
        headers.update(extra)
        return web.Response(status=self.status, reason=self.reason, body=self.body, headers=headers)


async def finish(payments: X402Payments, scope: Scope,
                 upstream: aiohttp.ClientResponse) -> aiohttp.ClientResponse | ReadAnswer:
    """Settle a paid tool call from the upstream's answer (or void it); the answer to relay."""
    accepted, sale, service = scope.payment, scope.sale, scope.service
    assert accepted is not None and sale is not None and service is not None
    if not 200 <= upstream.status < 300:
        # Why: the payer pays for answers, not attempts (as credits: a non-2xx is not charged).
        await payments.void(accepted, f"upstream answered {upstream.status}")
        return upstream  # relayed as it streams
    sse = upstream.headers.get("Content-Type", "").lower().startswith("text/event-stream")
    try:
        body = await _read(upstream, sse, sale.id)
    except BaseException as exc:
        await asyncio.shield(payments.void(accepted, "the upstream's answer could not be read"))
        if isinstance(exc, (asyncio.TimeoutError, aiohttp.ClientError)):
            raise upstream_problem(exc, service.timeout) from None
        raise
    coded = upstream.headers.get("Content-Encoding", "identity").lower() not in ("", "identity")
    message, index = (None, -1) if coded else response_in(body, sse, sale.id)
    if message is None or not served(message):
        # Why void: an error (JSON-RPC or the tool's isError), or no result the gateway can see,
        # is not a served call; x402 settles successful executions only.
        await payments.void(accepted, "the tool call did not succeed")
        return ReadAnswer(upstream, body, {})
    settlement = await payments.settle(accepted, service, None)  # SettlementFailed: the terms, not the result
    if settlement is None:
        return ReadAnswer(upstream, body, {})  # pending: the reconciler settles it (as on the HTTP path)
    body = rewritten(body, sse, index, with_settlement(message, settlement))
    return ReadAnswer(upstream, body, {PAYMENT_RESPONSE: encode_payment_response_header(settlement)})


async def _read(upstream: aiohttp.ClientResponse, sse: bool, request_id) -> bytes:
    """The answer, up to EOF (JSON) or to the event holding the call's response (SSE: a stateful
    server may keep the stream open after it). Each complete event is looked at once."""
    body, scanned = bytearray(), 0
    try:
        async for chunk in upstream.content.iter_any():
            body += chunk
            if len(body) > MAX_ANSWER:
                # Why refuse rather than settle unseen: only a result the gateway read is paid for.
                raise Problem(502, "upstream_answer_too_large",
                              f"the tool's answer exceeds {MAX_ANSWER} bytes; the payment was not settled")
            if sse and (end := _events_end(body, max(scanned - 3, 0))) > scanned:
                if response_in(bytes(body[scanned:end]), True, request_id)[0] is not None:
                    break
                scanned = end
    finally:
        upstream.release()
    return bytes(body)


def _events_end(body: bytearray, since: int) -> int:
    """Where the last complete SSE event of `body` ends (after its blank line), looking after
    `since` only; 0: none there."""
    ends = [i + len(blank) for blank in (b"\n\n", b"\r\n\r\n", b"\r\r") if (i := body.rfind(blank, since)) >= 0]
    return max(ends, default=0)
