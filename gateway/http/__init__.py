"""The HTTP side of a call, top to bottom in `pipeline` (what it learns kept in one `scope`):
route and normalize (`routing`), the gateway's own answers (`own_endpoints`, `plugin_documents`,
`cors`, `mcp` metadata), pricing of MCP calls (`mcp`), x402 payments inside MCP tool calls
(`mcp_payments`), forwarding and relaying (`upstream`,
`headers`, `websocket`), refusals (`refusals`: domain errors mapped to status and code, rendered
as RFC 9457 problem JSON from `problems` or as JSON-RPC, the 402 built), and the parsing of what
clients send (`client_json`, `content_coding`, `malformed_requests`).

May import: config, auth, credits, ops.observability. Nothing below imports http except `problems`
(`Problem`, still raised by auth's sign-in checks).
"""
