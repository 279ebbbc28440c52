"""Refusals: every way a request is refused, mapped and rendered in one place.

The layers below http raise domain errors that carry data, not HTTP (credits: `NotCovered`,
`HoldExpired`, `PlanUnreadable`; auth: `TokenRejected`, `RevocationsUnavailable`); the http
layer's own steps (and, for now, sign-in's checks in `auth.signin*`) raise `Problem`s directly.
`TABLE` maps each domain error to its status and stable code; `answer` renders any refusal for
the request's `Scope`: RFC 9457 problem JSON, or, for a refusal about paying for an MCP call,
JSON-RPC errors carrying the problem.

The 402 is built here and only here (`payment_required`): problem JSON with the plan (chain_id,
contract, token_id, standard, credits this call needs, balance, checkout_url; `shortfall` when
one blocks the account) and the machine-readable `PAYMENT-REQUIRED` header of x402 v2's HTTP
transport: base64 (RFC 4648 §4, padded) of compact UTF-8 JSON, a `PaymentRequired` that the
official SDK's model accepts (README, "The 402 answer"):

    {"x402Version": 2,
     "error": "<the problem's detail>",
     "resource": {"url": "<public URL of the refused call>"},
     "accepts": [{"scheme": "erc1155-credits" | "erc721-pass",
                  "network": "eip155:<chain id>",
                  "asset": "<plan contract>",
                  "amount": "<credits this call needs, decimal string>",
                  "payTo": "<plan contract>", "maxTimeoutSeconds": <the service's timeout, whole s>,
                  "extra": {"standard": "erc1155" | "erc721", "tokenId": "<decimal>" | null,
                            "balance": "<credits available now>", "checkoutUrl": "<url>" | null,
                            "plan": "<public URL of /.gateway/plan>", "shortfall": "<n>" (only when one blocks)}},
                 <the standard `exact` entry (gateway.x402.offers) where the endpoint is sold per call>]}

A 402 about a per-call payment (`gateway.x402.errors`) has the same shape, its own code, and may
carry a `PAYMENT-RESPONSE` (a failed settlement). For an MCP tool call sold per call, the same
`PaymentRequired` is answered as x402's MCP transport says: in a tool result (`_tool_result`).
"""

from __future__ import annotations

import base64
import json
from dataclasses import dataclass
from typing import Any

import structlog
from aiohttp import web
from aiohttp.web_protocol import RequestPayloadError

from gateway.auth.revocation import RevocationsUnavailable
from gateway.auth.tokens import TokenInvalid, TokenMissing, TokenRejected, TokenRevoked, WrongAudience
from gateway.credits.meter import HoldExpired
from gateway.credits.plans import PlanUnreadable
from gateway.credits.prices import NotCovered, plan_document
from gateway.http.mcp import METADATA_PATH, McpCall
from gateway.http.problems import TITLES, Problem, bearer_challenge, problem_body, render
from gateway.http.scope import Scope
from gateway.ledger import LedgerUnavailable
from gateway.x402.errors import (FacilitatorUnavailable, PaymentMalformed, PaymentNeeded, PaymentRejected,
                                 SettlementFailed)
from gateway.x402.mcp import payment_required_result
from gateway.x402.offers import call_timeout, exact_offer

log = structlog.get_logger("gateway.access")

PAYMENT_REQUIRED = "PAYMENT-REQUIRED"  # x402 v2's HTTP transport spells it so (HTTP: any case)
SCHEMES = {"erc1155": "erc1155-credits", "erc721": "erc721-pass"}


@dataclass(frozen=True)
class Refusal:
    """How one kind of domain error is answered."""

    status: int
    code: str                  # stable: clients and dashboards key on it
    detail: str | None = None  # None: the error's own message (written for the client)
    priced: bool = False       # about paying for the call: answered in JSON-RPC for an MCP call
    challenge: str | None = None  # RFC 6750 `WWW-Authenticate`: "" bare, else its `error`


BARE = ""  # a challenge without an error code (RFC 6750 §3.1: the request had no credentials)


TABLE: dict[type[BaseException], Refusal] = {
    # Why 401 with a challenge: the client must (re)authenticate; a revoked token has its own code.
    TokenMissing: Refusal(401, "missing_token", challenge=BARE),
    TokenRevoked: Refusal(401, "token_revoked", challenge="invalid_token"),
    TokenInvalid: Refusal(401, "invalid_token", challenge="invalid_token"),
    # Why 403, not 401: the token is genuine, it is just for another service.
    WrongAudience: Refusal(403, "wrong_audience"),
    # Why 402: the plan does not cover the call; the answer says how to pay (`payment_required`).
    NotCovered: Refusal(402, "payment_required", priced=True),
    # Why 402 (x402): no token and no payment where the call may be paid per call; the terms say how.
    PaymentNeeded: Refusal(402, "payment_required", priced=True),
    # Why 402, not 400: a well-formed payment that does not pay for this call (wrong payee or
    # amount, expired, replayed, unfunded): x402's "payment failed"; the terms say what would.
    PaymentRejected: Refusal(402, "payment_invalid", priced=True),
    # Why 402 and no answer: the upstream answered but the payment could not be settled; x402
    # gives the answer only to a settled payment (the payer keeps the money, the caller the 402).
    SettlementFailed: Refusal(402, "payment_failed", priced=True),
    # Why 400: not a payment at all (x402's HTTP transport: invalid payment payload).
    PaymentMalformed: Refusal(400, "bad_payment"),
    # Why 503 and not a guess: a payment nobody could verify must not let the call through.
    FacilitatorUnavailable: Refusal(503, "payment_unverifiable"),
    # Why 503 and not a guess: a gateway that cannot see the chain must not let calls through.
    PlanUnreadable: Refusal(503, "chain_unavailable", priced=True),
    # Why 503: the hold's credits may already be spent by another call; nothing was charged.
    HoldExpired: Refusal(503, "hold_expired", priced=True),
    # Why 503: a gateway that cannot see revocations must not honour revoked tokens.
    RevocationsUnavailable: Refusal(503, "revocations_unavailable"),
    # Why 503 (fail closed): without the ledger no credit can be held or charged, so no paid call
    # goes through; nothing was charged, the client may retry.
    LedgerUnavailable: Refusal(503, "ledger_unavailable", "the credit ledger cannot be reached; try again shortly",
                               priced=True),
    # The body's framing broke (a bad chunk): the client's fault, not a bug.
    RequestPayloadError: Refusal(400, "bad_request", "malformed request body"),
}
REFUSED: tuple[type[BaseException], ...] = (Problem, *TABLE)  # what `answer` maps (anything else: a bug)


def refusal_of(error: BaseException) -> Refusal | None:
    for kind in type(error).__mro__:
        if (row := TABLE.get(kind)) is not None:
            return row
    return None


def problem_for(error: BaseException, scope: Scope | None = None) -> Problem:
    """The problem a refusal is answered with (a 402's header needs the request's `scope`)."""
    if isinstance(error, Problem):
        return error
    row = refusal_of(error)
    if row is None:
        return Problem(500, "internal_error", "unexpected gateway error")
    if isinstance(error, NotCovered):
        problem = payment_required(error, scope)
        if isinstance(error, PaymentNeeded):
            # Why a challenge on this 402: no credentials came, and a subscriber's token would do as
            # well as a payment; a client that signs in (OAuth discovery) starts from this header
            # (RFC 9110 §11.6.1: it may accompany any status).
            problem.headers["WWW-Authenticate"] = bearer_challenge(error.service.id)
        return problem
    detail = row.detail or str(error)
    headers = {}
    if row.challenge is not None and isinstance(error, TokenRejected):
        headers["WWW-Authenticate"] = bearer_challenge(error.realm, error=row.challenge or None,
                                                       description=detail if row.challenge else None)
    return Problem(row.status, row.code, detail, headers=headers)


def answer(error: BaseException, scope: Scope) -> web.Response:
    """The one answer to a refused request, in problem JSON or (a priced MCP call) JSON-RPC."""
    if not isinstance(error, REFUSED):
        # A bug, not a decision: answer in the same problem format and keep the traceback.
        log.exception("unhandled_error", request_id=scope.request_id)
    problem = problem_for(error, scope)
    scope.log.code = problem.code
    if problem.status in (401, 402) and scope.on_mcp_path and problem.headers.get("WWW-Authenticate"):
        problem = _with_resource_metadata(problem, scope)
    row = refusal_of(error)
    if scope.sale is not None and isinstance(error, NotCovered):
        return _tool_result(problem, scope)  # x402's MCP transport: the terms in a tool result
    call = scope.call
    if call is not None and call.ids and row is not None and row.priced:
        return _jsonrpc(problem, call, scope.request_id)  # an MCP client shows the reason
    return render(problem, scope.request_id)


def payment_required(error: NotCovered, scope: Scope | None) -> Problem:
    """The 402: the plan in the body, the terms in the `Payment-Required` header."""
    plan = plan_document(error.service, error.chain_id, error.balance) | {"credits": error.needed}
    extra: dict[str, Any] = {"plan": plan} | ({"shortfall": error.shortfall} if error.shortfall else {})
    row = refusal_of(error)
    problem = Problem(402, row.code if row else "payment_required", str(error), extra=extra,
                      headers=dict(getattr(error, "headers", {})))
    if scope is not None:
        document = json.dumps(_terms(problem, plan, scope), separators=(",", ":"))
        problem.headers[PAYMENT_REQUIRED] = base64.b64encode(document.encode()).decode("ascii")
    return problem


def _terms(problem: Problem, plan: dict[str, Any], scope: Scope) -> dict[str, Any]:
    """The decoded `PAYMENT-REQUIRED` header (x402's `PaymentRequired`: our credits entry, and the
    standard `exact` entry where the endpoint is sold per call)."""
    extra: dict[str, Any] = {
        "standard": plan.get("standard"),
        "tokenId": _decimal(plan.get("token_id")),
        "balance": _decimal(plan.get("balance")),
        "checkoutUrl": plan.get("checkout_url"),
        "plan": f"{scope.base}/.gateway/plan",
    }
    if problem.extra.get("shortfall"):
        extra["shortfall"] = _decimal(problem.extra["shortfall"])
    service = scope.service
    accepts: list[dict[str, Any]] = [{
        "scheme": SCHEMES.get(plan.get("standard"), "erc1155-credits"),
        "network": f"eip155:{plan.get('chain_id')}",
        "asset": plan.get("contract"),
        "amount": _decimal(plan.get("credits")),
        # Why the plan contract: credits are held there (bought at checkoutUrl), not paid to anyone
        # per call; x402 requires a payee and a positive timeout in every entry.
        "payTo": plan.get("contract"),
        "maxTimeoutSeconds": call_timeout(service) if service else 60,
        "extra": extra,
    }]
    if scope.sale is not None:  # an MCP tool sold per call: its own price
        offer = scope.sale.offer
    else:
        offer = exact_offer(service, scope.decision.rule if scope.decision else None) if service else None
    if offer is not None:
        accepts.append(offer.model_dump(by_alias=True, exclude_none=True))
    return {"x402Version": 2, "error": problem.detail, "resource": {"url": scope.base + scope.path},
            "accepts": accepts}


def _decimal(value: Any) -> str | None:
    return None if value is None else str(value)


def _with_resource_metadata(problem: Problem, scope: Scope) -> Problem:
    """A 401 on the MCP path tells the client where the resource's metadata is (RFC 9728 §5.1)."""
    assert scope.service is not None and scope.service.mcp is not None
    challenge = (f'{problem.headers["WWW-Authenticate"]}, '
                 f'resource_metadata="{scope.base}{METADATA_PATH}{scope.service.mcp.path}"')
    return Problem(problem.status, problem.code, problem.detail, extra=problem.extra,
                   headers={**problem.headers, "WWW-Authenticate": challenge})


def _tool_result(problem: Problem, scope: Scope) -> web.Response:
    """A refused tool call sold per call, as x402's MCP transport answers it: HTTP 200 with a
    JSON-RPC result (isError, the `PaymentRequired` as structuredContent and as text), the
    problem in its `_meta` and the x402 headers as on a 402. Why not a JSON-RPC error: x402 MCP
    clients look for the terms in a tool result, and pay from there."""
    assert scope.sale is not None
    terms = _terms(problem, problem.extra["plan"], scope)
    body = payment_required_result(scope.sale, terms, problem_body(problem, scope.request_id))
    return web.Response(status=200, body=json.dumps(body).encode(), content_type="application/json",
                        headers={"X-Request-Id": scope.request_id, **problem.headers})


def _jsonrpc(problem: Problem, call: McpCall, request_id: str) -> web.Response:
    """JSON-RPC errors, one per request of the body, carrying the problem (same status, headers)."""
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
              for i, rid in enumerate(call.ids)]
    return web.Response(status=problem.status, body=json.dumps(errors if call.batch else errors[0]).encode(),
                        content_type="application/json", headers={"X-Request-Id": request_id, **problem.headers})
