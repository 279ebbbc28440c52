"""Refusals in one place (gateway.http.refusals): the domain errors of the layers below http mapped
to status, code, detail and headers; the 402 built from the error and the request's scope; the
JSON-RPC form for a refusal about paying for an MCP call; the RFC 9728 hint on an MCP 401.
Unit tests: no chain, no processes."""

from __future__ import annotations

import base64
import json

import pytest
from aiohttp.test_utils import make_mocked_request

from gateway.auth.revocation import RevocationsUnavailable
from gateway.auth.tokens import TokenInvalid, TokenMissing, TokenRevoked, WrongAudience
from gateway.config.load import parse_config
from gateway.credits.meter import HoldExpired, InsufficientCredits
from gateway.credits.plans import PlanUnreadable
from gateway.credits.prices import NoPass
from gateway.http import cors, refusals
from gateway.http.mcp import McpCall, price_messages
from gateway.http.problems import Problem
from gateway.http.routing import Decision
from gateway.http.scope import Scope
from tests.support.stack import HOST, base_config

BASE = f"http://{HOST}"


@pytest.fixture
def service(signing_key):
    data = base_config(None, None, signing_key, mcp={"path": "/mcp", "tools": {"search": 2}},
                       cors={"origins": ["https://app.example.com"]})
    return parse_config(data, {}).services["elvis"]


def scope_for(service, method: str = "POST", path: str = "/mcp", call: McpCall | None = None) -> Scope:
    scope = Scope.of(make_mocked_request(method, path, headers={"Host": HOST}))
    scope.routed(service, BASE)
    scope.normalized(path)
    rule = service.mcp.rule if path == service.mcp.path else service.protected_endpoints[0]
    scope.classified(Decision("protected", rule))
    scope.call = call
    return scope


@pytest.mark.parametrize("error, status, code, challenge", [
    (PlanUnreadable("local", "cannot read the plan on chain 'local': no RPC node answered; try again later"),
     503, "chain_unavailable", None),
    (HoldExpired("r1"), 503, "hold_expired", None),
    (RevocationsUnavailable(), 503, "revocations_unavailable", None),
    (TokenMissing("elvis", "send Authorization: Bearer <token>"), 401, "missing_token", 'Bearer realm="elvis"'),
    (TokenInvalid("elvis", "token expired"), 401, "invalid_token",
     'Bearer realm="elvis", error="invalid_token", error_description="token expired"'),
    (TokenRevoked("elvis", "token revoked"), 401, "token_revoked",
     'Bearer realm="elvis", error="invalid_token", error_description="token revoked"'),
    (WrongAudience("elvis", "token is not for service elvis"), 403, "wrong_audience", None),
    (RuntimeError("a bug"), 500, "internal_error", None),
])
def test_every_domain_error_has_one_row(error, status, code, challenge):
    problem = refusals.problem_for(error)
    assert (problem.status, problem.code) == (status, code)
    assert problem.detail == ("unexpected gateway error" if status == 500 else str(error))
    assert problem.headers.get("WWW-Authenticate") == challenge


def test_the_402_is_built_from_the_error_and_the_scope(service):
    scope = scope_for(service, path="/ask")
    error = InsufficientCredits("unpaid shortfall of 3 credit(s) on this plan", service, 31337, 2, 0, shortfall=3)
    problem = refusals.problem_for(error, scope)
    assert (problem.status, problem.code) == (402, "payment_required")
    plan = problem.extra["plan"]
    assert (plan["credits"], plan["balance"], plan["chain_id"], problem.extra["shortfall"]) == (2, 0, 31337, 3)
    terms = json.loads(base64.b64decode(problem.headers["PAYMENT-REQUIRED"], validate=True))
    assert terms["resource"] == {"url": f"{BASE}/ask"}
    accepted = terms["accepts"][0]
    assert (accepted["scheme"], accepted["amount"], accepted["network"]) == ("erc1155-credits", "2", "eip155:31337")
    assert accepted["extra"]["plan"] == f"{BASE}/.gateway/plan" and accepted["extra"]["shortfall"] == "3"
    no_pass = refusals.problem_for(NoPass("this service needs a pass, and none is held", service, 31337, 1, 0), scope)
    assert "shortfall" not in no_pass.extra and no_pass.extra["plan"]["credits"] == 1


def test_a_refusal_about_paying_for_an_mcp_call_is_jsonrpc_others_stay_problem_json(service):
    call = price_messages(service.mcp, b"", [{"jsonrpc": "2.0", "id": 7, "method": "tools/call",
                                             "params": {"name": "search"}}], batch=False)
    scope = scope_for(service, call=call)
    answer = refusals.answer(PlanUnreadable("local", "no chain"), scope)
    body = json.loads(answer.body)
    assert (answer.status, answer.content_type, body["id"], body["error"]["code"]) == (503, "application/json", 7, 503)
    assert body["error"]["data"]["code"] == "chain_unavailable" and scope.log.code == "chain_unavailable"
    for error in (Problem(502, "upstream_unavailable", "upstream unreachable"), RevocationsUnavailable()):
        answer = refusals.answer(error, scope)
        assert answer.content_type == "application/problem+json"


def test_a_401_on_the_mcp_path_names_the_resource_metadata(service):
    answer = refusals.answer(TokenMissing("elvis", "send a token"), scope_for(service))
    assert answer.headers["WWW-Authenticate"] == (
        f'Bearer realm="elvis", resource_metadata="{BASE}/.well-known/oauth-protected-resource/mcp"')
    elsewhere = refusals.answer(TokenMissing("elvis", "send a token"), scope_for(service, path="/ask"))
    assert elsewhere.headers["WWW-Authenticate"] == 'Bearer realm="elvis"'


def test_a_preflight_is_answered_from_the_one_classification(service):
    request = make_mocked_request("OPTIONS", "/ask", headers={
        "Host": HOST, "Origin": "https://app.example.com", "Access-Control-Request-Method": "post"})
    headers = cors.answer_headers(service.cors, request)
    assert cors.requested_method(request) == "POST"
    assert cors.preflight(service.cors, request, headers, "/ask", exposed=True).status == 204
    with pytest.raises(Problem) as refused:
        cors.preflight(service.cors, request, headers, "/ask", exposed=False)
    assert (refused.value.status, refused.value.code) == (404, "endpoint_not_exposed")
