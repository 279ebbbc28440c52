"""What operators use besides the request path: the admin listener (`admin`: health, readiness,
metrics, settle now), logs and metrics (`observability`; `worker_metrics`: one /metrics over every
worker process, per-worker memory and CPU, build info), `gateway usage` and `shortfall resolve`
(`usage`), and `gateway import-openapi` (`openapi_import`; the document read and checked by
`openapi_document`, the paths as the gateway will see them by `openapi_paths`).

May import: config, credits, ledger, chain, http.headers (the `Server` header), http.routing and
http.problems (import-openapi writes rules for the path as `normalize_path` spells it), and
`gateway.runtime` (the composition root's types, for the admin listener).
"""
