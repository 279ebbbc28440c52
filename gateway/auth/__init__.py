"""Who calls: JWT verification (`tokens`, `jwks`), the gateway's own issuer (`issuer`), revocations
(`revocation`), their durable state on either database (`state`, `state_postgres`), and Sign-In with Ethereum (`siwe` parser, `signin` checks, `signin_address`,
`signin_rate`).

May import: config, chain (EIP-1271), ledger (nonces, revocations), credits.plans (the balance a
sign-in answers with), `gateway.inflight`. Still an exception, to be removed: the sign-in modules
raise http `Problem`s and use `http.client_json` / `http.public_url` / `http.headers.trusted_peer` (sign-in is an HTTP endpoint
living here; its HTTP half belongs in `http/own_endpoints`).
"""
