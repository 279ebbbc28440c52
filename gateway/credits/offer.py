"""The machine-readable `Payment-Required` header of a 402 answer, in the spirit of x402.

x402 (v2) answers 402 with a `PAYMENT-REQUIRED` header: base64 of a JSON `PaymentRequired`
object listing, under `accepts`, the ways to pay. The gateway uses the same envelope so that
an agent that already reads x402 finds the terms where it looks, with a scheme of its own:
access here is bought as plan credits (or a pass) on chain, not paid per request. The header
holds exactly (README, "The 402 answer"):

    {"x402Version": 2,
     "error": "<the problem's detail>",
     "resource": {"url": "<public URL of the refused call>"},
     "accepts": [{"scheme": "erc1155-credits" | "erc721-pass",
                  "network": "eip155:<chain id>",
                  "asset": "<plan contract>",
                  "amount": "<credits this call needs, decimal string>",
                  "extra": {"standard": "erc1155" | "erc721", "tokenId": "<decimal>" | null,
                            "balance": "<credits available now>", "checkoutUrl": "<url>" | null,
                            "plan": "<public URL of /.gateway/plan>", "shortfall": "<n>" (only when one blocks)}}]}

Base64 is standard (RFC 4648 §4, with padding), of compact UTF-8 JSON.
"""

from __future__ import annotations

import base64
import json
from typing import Any

from gateway.http.problems import Problem

HEADER = "Payment-Required"
SCHEMES = {"erc1155": "erc1155-credits", "erc721": "erc721-pass"}


def payment_required(problem: Problem, base: str, path: str) -> dict[str, Any]:
    """The decoded header for a 402 `problem` whose `plan` member is the plan document."""
    plan = problem.extra.get("plan") or {}
    extra: dict[str, Any] = {
        "standard": plan.get("standard"),
        "tokenId": _decimal(plan.get("token_id")),
        "balance": _decimal(plan.get("balance")),
        "checkoutUrl": plan.get("checkout_url"),
        "plan": f"{base}/.gateway/plan",
    }
    if problem.extra.get("shortfall"):
        extra["shortfall"] = _decimal(problem.extra["shortfall"])
    return {
        "x402Version": 2,
        "error": problem.detail,
        "resource": {"url": base + path},
        "accepts": [{
            "scheme": SCHEMES.get(plan.get("standard"), "erc1155-credits"),
            "network": f"eip155:{plan.get('chain_id')}",
            "asset": plan.get("contract"),
            "amount": _decimal(plan.get("credits")),
            "extra": extra,
        }],
    }


def add_header(problem: Problem, base: str, path: str) -> Problem:
    """Put the header on a 402 problem (other problems are returned untouched)."""
    if problem.status == 402:
        document = json.dumps(payment_required(problem, base, path), separators=(",", ":"))
        problem.headers[HEADER] = base64.b64encode(document.encode()).decode("ascii")
    return problem


def decode(value: str) -> dict[str, Any]:
    """The header's JSON (for clients and tests)."""
    return json.loads(base64.b64decode(value, validate=True))


def _decimal(value: Any) -> str | None:
    return None if value is None else str(value)
