"""The OAuth 2.1 authorization server of every service host, whose login is Sign-In with Ethereum
(issue 14; the MCP authorization spec, revision 2025-11-25): AI clients (MCP clients, GPT Actions)
get tokens by themselves from a bare 401.

Owns: the authorization server metadata (`metadata`, RFC 8414), the clients (`clients`: configured
confidential ones, RFC 7591 registrations, and Client ID Metadata Documents fetched with bounds by
`metadata_documents`), the authorization endpoint and its consent page (`authorize`,
`authorize_page.html`), the token endpoint (`token`: codes, rotating refresh tokens, families),
the routes (`server`), refusals in RFC 6749 form (`errors`), and its durable state (`store`, on
SQLite; `store_postgres`, on PostgreSQL). Access tokens are the own issuer's JWTs: everything else
in the gateway verifies them as it verifies any token.

May import: config, auth (the own issuer, the sign-in checks, revocations, the rate limit), ledger
(the database types), http's leaf helpers (`problems`, `client_json`, `public_url`, `upstream.read_bounded`)
and `gateway.inflight`. Imported by http.own_endpoints and the pipeline (routes) and by app (wiring).
"""
