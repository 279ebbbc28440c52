"""The HTTP side of a call, top to bottom in `pipeline`: route and normalize (`routing`), the
gateway's own answers (`own_endpoints`, `plugin_documents`, `cors`, `mcp` metadata), pricing of MCP
calls (`mcp`), forwarding and relaying (`upstream`, `headers`, `websocket`), refusals as RFC 9457
problem JSON (`problems`), and the parsing of what clients send (`client_json`, `content_coding`,
`malformed_requests`).

May import: config, auth, credits, ops.observability. Nothing below imports http except `problems`
(the refusal type the lower layers still raise: see the redesign issue).
"""
