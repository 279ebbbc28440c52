"""x402 per-call payments in tests: the EIP-3009 token on the test chain, `gateway serve` selling
/ask per call, and the official SDK's client (`x402Client` + `ExactEvmScheme` signer) as the payer."""

from __future__ import annotations

import base64
import json

import httpx
import yaml
from eth_account import Account
from x402 import x402Client
from x402.http import decode_payment_required_header, encode_payment_signature_header
from x402.http.clients.httpx import x402HttpxClient
from x402.mechanisms.evm.exact import register_exact_evm_client
from x402.mechanisms.evm.signers import EthAccountSigner
from x402.schemas import PaymentPayload, PaymentRequired, PaymentRequirements

from gateway.config.load import load_config
from tests.support.served import Served
from tests.support.stack import DEV_ACCOUNTS, HOST

PAYER = DEV_ACCOUNTS[5]           # holds the token, no plan, no token of the gateway
PAYEE = DEV_ACCOUNTS[6][0]        # the service owner's wallet
ASK_PRICE = 50_000                # "0.05" of a 6-decimals token
FUNDS = 10_000_000                # 10 tokens


def sell_per_call(served: Served, token: str, facilitator_url: str | None = None) -> None:
    """Rewrite `served`'s config: /ask and /status/:code are also sold per call (x402)."""
    data = yaml.safe_load(served.path.read_text())
    service = data["services"]["elvis"]
    service["x402"] = {"network": "eip155:31337", "asset": token, "pay_to": PAYEE, "price": "0.01",
                       "extra": {"name": "Demo USD", "version": "1"}}
    if facilitator_url:
        service["x402"]["facilitator_url"] = facilitator_url
    service["open_endpoints"] = ["GET /health"]
    service["protected_endpoints"] = ["POST /query", {"endpoint": "POST /ask", "credits": 2, "x402": "0.05"},
                                      "GET /status/:code"]
    served.path.write_text(yaml.safe_dump(data))
    served.config = load_config(served.path)


def payer_client(token: str, key: str = PAYER[1]) -> x402Client:
    client = x402Client()
    # Why allowed_assets: the SDK pays only known assets (USDC...) unless told about this one.
    client.set_spend_controls({"allowed_assets": [{"network": "eip155:31337", "asset": token}]})
    register_exact_evm_client(client, EthAccountSigner(Account.from_key(key)))
    return client


def paying_http(token: str) -> x402HttpxClient:
    """The SDK's httpx client: on a 402 it signs a payment and retries with PAYMENT-SIGNATURE."""
    return x402HttpxClient(payer_client(token), headers={"Host": HOST}, timeout=30)


async def terms(served: Served, path: str = "/ask", method: str = "POST") -> PaymentRequired:
    async with httpx.AsyncClient(headers={"Host": HOST}) as http:
        resp = await http.request(method, f"http://127.0.0.1:{served.port}{path}", json={"question": "what happens on the blue highway"})
    assert resp.status_code == 402, resp.text
    return decode_payment_required_header(resp.headers["PAYMENT-REQUIRED"])


async def signed(token: str, offer: PaymentRequirements, **changes) -> str:
    """A PAYMENT-SIGNATURE for `offer`, signed by PAYER after `changes` (pay_to, amount, ...)."""
    wanted = offer.model_copy(update=changes)
    payload: PaymentPayload = await payer_client(token).create_payment_payload(PaymentRequired(accepts=[wanted]))
    return encode_payment_signature_header(payload)


async def pay(served: Served, signature: str, path: str = "/ask", method: str = "POST") -> httpx.Response:
    async with httpx.AsyncClient(headers={"Host": HOST, "PAYMENT-SIGNATURE": signature}, timeout=30) as http:
        return await http.request(method, f"http://127.0.0.1:{served.port}{path}", json={"question": "what happens on the blue highway"})


def exact(required: PaymentRequired) -> PaymentRequirements:
    return next(a for a in required.accepts if a.scheme == "exact")


def decoded(header: str) -> dict:
    return json.loads(base64.b64decode(header))


def funded_payment_token(chain) -> str:
    """A new EIP-3009 token on the test chain, with FUNDS minted to the payer."""
    address = chain.dev.deploy_payment_token()
    chain.dev.mint_tokens(address, PAYER[0], FUNDS)
    return address
