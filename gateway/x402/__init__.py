"""x402 per-call payments (x402 v2, scheme `exact` on EVM: EIP-3009 `transferWithAuthorization`).

A protected call may be paid per call instead of with plan credits: the client sends a signed
authorization in `PAYMENT-SIGNATURE`; the gateway verifies it (the official `x402` SDK's
`ExactEvmScheme` facilitator code), records it durably, forwards the call and, on a 2xx answer
only, settles it (self-facilitated: submits `transferWithAuthorization` with the operator key; or a
remote facilitator's `/settle`), answering with `PAYMENT-RESPONSE`.

- `offers`: the `exact` payment requirements of an endpoint (price, token, payee), from the config.
- `store`, `store_postgres`: the durable record of each authorization (one table, SQLite or
  PostgreSQL, picked by `x402_store(db)`); `usage`: its lines in `gateway usage`.
- `errors`: why a payment did not pay for a call (answered by gateway.http.refusals).
- `facilitators`: verify / settle / read `authorizationState`: self-facilitated (the SDK's facilitator
  scheme on a web3 signer, run on threads) or remote (the SDK's HTTP facilitator client).
- `payments`: the request path (accept -> forward -> settle or void) and the reconcile on start-up.
- `mcp`: x402's MCP transport (payment in a tool call's `_meta`, terms and settlement in its
  result): which calls are sold, and reading / rewriting the answer (used by gateway.http.mcp_payments).

May import: gateway.config, gateway.ledger (the database), gateway.credits.prices (a 402 about
paying per call still shows the plan), gateway.ops.crash_points, and the `x402` SDK (web3 through
it, imported only where used). Imported by gateway.http (pipeline, refusals, own_endpoints, scope),
gateway.app and gateway.ops.usage.
"""
