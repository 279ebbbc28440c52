"""The 402's `PAYMENT-REQUIRED` header read by the official x402 SDK (PyPI `x402`): it parses into
the SDK's `PaymentRequired` model; an endpoint sold per call carries a standard `exact` entry besides
the credits entry; a client with no matching scheme gets the SDK's own error, not a crash.
Unit tests: no chain, no processes (the SDK's httpx client talks to an in-process aiohttp server)."""

from __future__ import annotations

from decimal import Decimal

import pytest
from aiohttp import web
from aiohttp.test_utils import TestServer, make_mocked_request
from eth_account import Account
from x402 import x402Client
from x402.http import decode_payment_required_header
from x402.http.clients.httpx import PaymentError, x402HttpxClient
from x402.mechanisms.evm.exact import register_exact_evm_client
from x402.schemas import NoMatchingRequirementsError, PaymentRequired

from gateway.config.load import ConfigError, parse_config
from gateway.credits.meter import InsufficientCredits
from gateway.http import refusals
from gateway.http.routing import Decision
from gateway.http.scope import Scope
from gateway.x402.errors import PaymentNeeded
from tests.support.stack import HOST, base_config

BASE = f"http://{HOST}"
TOKEN = "0x5FbDB2315678afecb367f032d93F642f64180aa3"
PAYEE = "0x15d34AAf54267DB7D7c367839AAf71A00a2C6A65"
X402 = {"network": "eip155:31337", "asset": TOKEN, "pay_to": PAYEE, "price": "0.01",
        "extra": {"name": "Demo USD", "version": "1"}}


def config_with(signing_key, **overrides) -> dict:
    data = base_config(None, None, signing_key, **overrides)
    data["metering"]["operator_key"] = "0x" + "11" * 32  # settles per-call payments itself
    return data


def service_with(signing_key, **overrides):
    return parse_config(config_with(signing_key, **overrides), {}).services["elvis"]


def refused(service, path: str) -> dict[str, str]:
    """The headers of the 402 for a call to `path` that the plan does not cover."""
    scope = Scope.of(make_mocked_request("POST", path, headers={"Host": HOST}))
    scope.routed(service, BASE)
    scope.normalized(path)
    rule = next(r for r in service.protected_endpoints if r.matches("POST", path))
    scope.classified(Decision("protected", rule))
    error = InsufficientCredits("0 credit(s) available, this call needs 2", service, 31337, 2, 0)
    return refusals.problem_for(error, scope).headers


def test_the_credits_only_402_parses_with_the_sdk(signing_key):
    terms = decode_payment_required_header(refused(service_with(signing_key), "/ask")["PAYMENT-REQUIRED"])
    assert isinstance(terms, PaymentRequired) and terms.x402_version == 2
    (credits,) = terms.accepts
    assert (credits.scheme, credits.amount, credits.pay_to) == ("erc1155-credits", "2", credits.asset)
    assert credits.max_timeout_seconds == 60 and credits.extra["checkoutUrl"] == "https://example.com/buy"


def test_an_endpoint_sold_per_call_offers_exact_beside_credits(signing_key):
    rules = ["POST /query", {"endpoint": "POST /ask", "credits": 2, "x402": "0.05"}]
    service = service_with(signing_key, x402=X402, protected_endpoints=rules)
    for path, amount in (("/query", "10000"), ("/ask", "50000")):  # the service's price; the rule's own
        terms = decode_payment_required_header(refused(service, path)["PAYMENT-REQUIRED"])
        credits, exact = terms.accepts
        assert credits.scheme == "erc1155-credits"
        assert (exact.scheme, exact.network, exact.asset, exact.pay_to) == ("exact", "eip155:31337", TOKEN, PAYEE)
        assert exact.amount == amount and exact.max_timeout_seconds == 90  # the call's timeout + 30 s
        assert exact.extra == {"name": "Demo USD", "version": "1", "assetTransferMethod": "eip3009"}
        assert terms.resource.url == f"{BASE}{path}"


def test_x402_config_problems_are_reported_with_their_paths(signing_key):
    bad = {"network": "solana:1", "asset": "nope", "pay_to": PAYEE, "price": "0.0000001", "extra": {"x": 1}}
    with pytest.raises(ConfigError) as exc:
        parse_config(config_with(signing_key, x402=bad,
                                 protected_endpoints=[{"endpoint": "POST /ask", "x402": "-1"}]), {})
    problems = "\n".join(exc.value.problems)
    for expected in ("services.elvis.x402.network: must be eip155:<chain id>", "services.elvis.x402.asset: not an address",
                     "services.elvis.x402.price: 1E-7 has more than 6 decimals", "services.elvis.x402.extra: must be",
                     "services.elvis.protected_endpoints[0].x402: must be a positive price"):
        assert expected in problems
    with pytest.raises(ConfigError) as exc:
        parse_config(base_config(None, None, signing_key, x402={**X402, "network": "eip155:8453"}), {})
    problems = "\n".join(exc.value.problems)
    assert "services.elvis.x402.network: no chain with id 8453 under `chains`" in problems
    assert "services.elvis.x402: needs metering.x402_key or metering.operator_key to settle payments itself" \
        in problems
    service = service_with(signing_key, x402={**X402, "price": 2})
    assert service.x402.price == Decimal(2) and service.x402.atomic(service.x402.price) == 2_000_000


@pytest.mark.asyncio
async def test_a_client_without_a_matching_scheme_gets_the_sdks_own_error(signing_key):
    service = service_with(signing_key)  # credits only: no `exact` entry a stock client could pay

    async def ask(request: web.Request) -> web.Response:
        return web.json_response({"status": 402}, status=402, headers=refused(service, "/ask"))

    app = web.Application()
    app.router.add_post("/ask", ask)
    client = x402Client()
    register_exact_evm_client(client, Account.create())
    async with TestServer(app) as server:
        async with x402HttpxClient(client) as http:
            with pytest.raises(PaymentError) as exc:
                await http.post(str(server.make_url("/ask")))
    # Why this matters: the SDK parsed the terms (no validation error) and found nothing it can pay.
    assert isinstance(exc.value.__cause__, NoMatchingRequirementsError)


def test_without_a_service_price_only_rules_with_their_own_are_sold_per_call(signing_key):
    rules = ["POST /query", {"endpoint": "POST /ask", "credits": 2, "x402": "0.05"}]
    service = service_with(signing_key, x402={k: v for k, v in X402.items() if k != "price"}, protected_endpoints=rules)
    query = decode_payment_required_header(refused(service, "/query")["PAYMENT-REQUIRED"])
    ask = decode_payment_required_header(refused(service, "/ask")["PAYMENT-REQUIRED"])
    assert [a.scheme for a in query.accepts] == ["erc1155-credits"]
    assert [(a.scheme, a.amount) for a in ask.accepts][1] == ("exact", "50000")


def test_a_402_for_a_call_without_credentials_also_says_a_token_would_do(signing_key):
    """No token and no payment on an endpoint sold per call: 402 with the terms, and the bare Bearer
    challenge of a 401 (a client that signs in, e.g. by OAuth discovery, starts from it); a 402 to a
    subscriber whose credits ran out has no challenge (the token was fine)."""
    service = service_with(signing_key, x402=X402)
    scope = Scope.of(make_mocked_request("POST", "/query", headers={"Host": HOST}))
    scope.routed(service, BASE)
    scope.normalized("/query")
    scope.classified(Decision("protected", next(r for r in service.protected_endpoints if r.matches("POST", "/query"))))
    needed = PaymentNeeded("send a token or a payment", service, 31337, 1, 0)
    problem = refusals.problem_for(needed, scope)
    assert problem.status == 402 and problem.headers["WWW-Authenticate"] == 'Bearer realm="elvis"'
    assert "PAYMENT-REQUIRED" in problem.headers
    assert "WWW-Authenticate" not in refused(service, "/query")


def test_x402_transfers_are_signed_with_their_own_key_when_one_is_given(signing_key, tmp_path):
    """`metering.x402_key(_file)`: the credit burns keep operator_key's nonces to themselves."""
    from gateway.x402.facilitators import facilitators

    key = tmp_path / "x402-key"
    key.write_text("0x" + "22" * 32 + "\n")
    key.chmod(0o600)
    data = config_with(signing_key, x402=X402)
    data["chains"] = {"local": {"chain_id": 31337, "rpc_urls": ["http://127.0.0.1:9"]}}
    data["services"]["elvis"]["plan"]["chain"] = "local"
    without = parse_config(data, {})
    data["metering"]["x402_key_file"] = str(key)
    config = parse_config(data, {})
    assert config.metering.x402_key == "0x" + "22" * 32 and "22" * 32 not in repr(config.metering)
    signers = {c: facilitators(cfg)["elvis"].scheme._signer.address for c, cfg in (("own", config), ("op", without))}
    assert signers == {"own": Account.from_key("0x" + "22" * 32).address, "op": Account.from_key("0x" + "11" * 32).address}
    del data["metering"]["operator_key"]  # the x402 key alone is enough to settle per-call payments
    assert parse_config(data, {}).metering.operator_key is None
