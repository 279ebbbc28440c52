"""Who calls: JWT verification (`tokens`, `jwks`), the gateway's own issuer (`issuer`), revocations
(`revocation`), and Sign-In with Ethereum (`siwe` parser, `signin` checks, `signin_address`,
`signin_rate`).

May import: config, chain (EIP-1271 and balances for sign-in), ledger (nonces, revocations).
"""
