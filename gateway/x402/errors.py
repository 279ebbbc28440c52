"""Why a per-call payment did not pay for a call (answered 402 by `gateway.http.refusals`).

Each is a `NotCovered` (the plan, as for credits, stays in the 402's body and its credits entry in
`PAYMENT-REQUIRED`), so a client may still choose either way to pay. `reason` is x402's
machine-readable reason (the SDK's `invalid_reason`, or one of ours: `nonce_already_used`, ...).
"""

from __future__ import annotations

from gateway.credits.prices import NotCovered


class PaymentNeeded(NotCovered):
    """No token and no `PAYMENT-SIGNATURE` on an endpoint that is also sold per call."""


class PaymentRejected(NotCovered):
    """A `PAYMENT-SIGNATURE` that does not pay for this call."""

    def __init__(self, reason: str, *args, **kwargs) -> None:
        super().__init__(*args, **kwargs)
        self.reason = reason


class SettlementFailed(NotCovered):
    """The upstream answered 2xx but the transfer could not be made: `headers` carry the failed
    `PAYMENT-RESPONSE`."""

    def __init__(self, reason: str, headers: dict[str, str], *args, **kwargs) -> None:
        super().__init__(*args, **kwargs)
        self.reason, self.headers = reason, headers


class PaymentMalformed(Exception):
    """`PAYMENT-SIGNATURE` is not a base64 x402 v2 payment payload (x402: 400 invalid payment)."""


class FacilitatorUnavailable(Exception):
    """The payment could not be verified: the chain's RPC or the remote facilitator did not answer."""
