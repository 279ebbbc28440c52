"""x402 inside MCP tool calls (x402 v2's MCP transport, `specs/transports-v2/mcp.md`): the pure part.

A tool sold per call (`mcp.tools.NAME.x402`, else the service's `x402.price`) is paid in the call
itself, not in HTTP headers:

    unpaid tools/call   -> a tool RESULT (not a JSON-RPC error): isError, structuredContent = the
                           `PaymentRequired`, content[0].text = the same JSON (`payment_required_result`)
    paid tools/call     -> params._meta["x402/payment"] = a `PaymentPayload` (`sale_of`, `payload_of`);
                           verified and recorded, forwarded WITHOUT it (`forwarded`)
    the upstream answer -> JSON or server-sent events, read to the JSON-RPC response of the call
                           (`response_in`); only a successful tool result is settled (`served`), and
                           it carries result._meta["x402/payment-response"] (`with_settlement`,
                           `rewritten`)

Only a POST holding ONE JSON-RPC request (a `tools/call` with an id) is sold per call: a batch
or a notification has no single result to carry the terms or the settlement (they keep the
token's credits). The request path that uses this is gateway.http.mcp_payments.
"""

from __future__ import annotations

import json
from dataclasses import dataclass
from typing import Any, Callable

from x402.mcp.constants import MCP_PAYMENT_META_KEY, MCP_PAYMENT_RESPONSE_META_KEY
from x402.schemas import PaymentPayload, PaymentRequirements, SettleResponse

TOOLS_CALL = "tools/call"
PROBLEM_META = "gateway/problem"  # the RFC 9457 problem beside the terms, in the tool result's _meta
PROTOCOL_VERSION_META = "io.modelcontextprotocol/protocolVersion"  # in each request's _meta from 2026-07-28
TAGGED_RESULTS = "2026-07-28"  # the first MCP version whose results must say `resultType`


@dataclass(frozen=True)
class ToolSale:
    """A single `tools/call` request of a tool sold per call: its JSON-RPC id, the tool, its
    `exact` offer, its price in credits (the token's way), and the payment it carries (None: unpaid)."""

    id: Any
    tool: str
    offer: PaymentRequirements
    credits: int
    message: dict[str, Any]
    payment: Any = None
    tagged: bool = False  # the request's protocol (2026-07-28 on) requires results to carry `resultType`


def sale_of(message: Any, offer_of: Callable[[str], PaymentRequirements | None],
            credits_of: Callable[[str], int]) -> ToolSale | None:
    """The sale a lone JSON-RPC message makes; None: not a tools/call request of a tool sold per call."""
    if not isinstance(message, dict) or message.get("method") != TOOLS_CALL or "id" not in message:
        return None  # a notification runs no answerable call: it cannot be told the terms
    params = message.get("params")
    name = params.get("name") if isinstance(params, dict) else None
    if not isinstance(name, str):
        return None
    offer = offer_of(name)
    if offer is None:
        return None  # this tool is sold for credits only
    meta = params.get("_meta") if isinstance(params.get("_meta"), dict) else {}
    version = meta.get(PROTOCOL_VERSION_META)
    tagged = isinstance(version, str) and version >= TAGGED_RESULTS  # ISO dates compare as strings
    return ToolSale(message["id"], name, offer, credits_of(name), message, meta.get(MCP_PAYMENT_META_KEY), tagged)


def payload_of(raw: Any) -> PaymentPayload:
    """The x402 v2 payment payload of `_meta["x402/payment"]` (ValueError: not one)."""
    if not isinstance(raw, dict):
        raise ValueError('_meta["x402/payment"] must be an x402 payment payload object')
    try:
        payload = PaymentPayload.model_validate(raw)
    except Exception as exc:  # noqa: BLE001 - the SDK's model: the client's fault, whatever it says
        raise ValueError(f'_meta["x402/payment"] is not an x402 payment payload: {type(exc).__name__}') from None
    if payload.x402_version != 2:
        raise ValueError('_meta["x402/payment"] must be x402 version 2')
    return payload


def forwarded(sale: ToolSale) -> bytes:
    """The request the upstream gets: the call without its payment.

    Why strip it: the upstream is paid, not told (as PAYMENT-SIGNATURE is dropped on the HTTP
    path); a signed authorization in its hands could be submitted before the gateway settles it."""
    params = dict(sale.message["params"])
    meta = {k: v for k, v in params["_meta"].items() if k != MCP_PAYMENT_META_KEY}
    if meta:
        params["_meta"] = meta
    else:
        del params["_meta"]
    return _json({**sale.message, "params": params})


def payment_required_result(sale: ToolSale, terms: dict[str, Any], problem: dict[str, Any]) -> dict[str, Any]:
    """The JSON-RPC response to a tool call that is not (or not properly) paid: a tool result with
    `isError` and the `PaymentRequired` in both forms the transport requires; the gateway's RFC
    9457 problem (status, code, detail) rides in the result's `_meta`."""
    result = {
        "isError": True,
        "structuredContent": terms,
        "content": [{"type": "text", "text": _json(terms).decode()}],
        "_meta": {PROBLEM_META: problem},
    }
    # Why only when the request's protocol says so: older clients' schemas know no `resultType`.
    return {"jsonrpc": "2.0", "id": sale.id, "result": result | ({"resultType": "complete"} if sale.tagged else {})}


def served(message: dict[str, Any]) -> bool:
    """Whether the upstream's response is a successful tool result (the only kind that is settled)."""
    result = message.get("result")
    # Why `is not True`: a tool result without isError is a success (MCP's default is false).
    return isinstance(result, dict) and result.get("isError") is not True


def with_settlement(message: dict[str, Any], settlement: SettleResponse) -> dict[str, Any]:
    """The response with `result._meta["x402/payment-response"]` (the other _meta keys kept)."""
    result = dict(message["result"])
    meta = result.get("_meta") if isinstance(result.get("_meta"), dict) else {}
    result["_meta"] = {**meta, MCP_PAYMENT_RESPONSE_META_KEY: settlement.model_dump(by_alias=True, exclude_none=True)}
    return {**message, "result": result}


# --- the upstream's answer: one JSON body, or server-sent events -------------------------------------

def response_in(body: bytes, sse: bool, request_id: Any) -> tuple[dict[str, Any] | None, int]:
    """The JSON-RPC response to `request_id` in an answer, and where it is (the SSE event's index;
    -1 in a JSON body); (None, -1) when the answer holds none (yet)."""
    pieces = events(body) if sse else [body]
    for index, piece in enumerate(pieces):
        data = event_data(piece) if sse else piece
        if data is None:
            continue
        try:
            parsed = json.loads(data)
        except ValueError:
            continue  # not JSON: no response to find here (the answer is relayed as is, unsettled)
        for message in parsed if isinstance(parsed, list) else [parsed]:
            if isinstance(message, dict) and _same_id(message.get("id"), request_id) and (
                    "result" in message or "error" in message):
                return message, index if sse else -1
    return None, -1


def rewritten(body: bytes, sse: bool, index: int, message: dict[str, Any]) -> bytes:
    """The answer with the response at `index` replaced by `message` (a JSON body: the message
    alone, or in its batch)."""
    if not sse:
        parsed = json.loads(body)
        if isinstance(parsed, list):
            return _json([message if isinstance(m, dict) and _same_id(m.get("id"), message["id"]) else m
                          for m in parsed])
        return _json(message)
    pieces = events(body)
    lines = [line for line in pieces[index].split(b"\n") if not line.startswith(b"data:")]
    pieces[index] = b"\n".join([*lines, b"data: " + _json(message)])
    return b"".join(piece + b"\n\n" for piece in pieces)


def events(body: bytes) -> list[bytes]:
    """The complete events of an SSE body (each ends with a blank line; a partial last one is not
    an event), line ends normalized to LF."""
    text = body.replace(b"\r\n", b"\n").replace(b"\r", b"\n")
    return text.split(b"\n\n")[:-1]


def event_data(event: bytes) -> bytes | None:
    """An event's data (its `data:` lines joined by LF); None when it has none."""
    data = [line[5:].removeprefix(b" ") for line in event.split(b"\n") if line.startswith(b"data:")]
    return b"\n".join(data) if data else None


def _same_id(a: Any, b: Any) -> bool:
    # Why the type too: JSON-RPC ids 1 and "1" (or 1 and true) are different requests.
    return type(a) is type(b) and a == b


def _json(value: Any) -> bytes:
    return json.dumps(value, separators=(",", ":"), ensure_ascii=False).encode()
