"""What operators use besides the request path: the admin listener (`admin`: health, readiness,
metrics, settle now), logs and metrics (`observability`; `worker_metrics`: one /metrics over every
worker process, per-worker memory and CPU, build info), `gateway usage` and `shortfall resolve`
(`usage`), and `gateway import-openapi` (`openapi_import`).

May import: config, credits, ledger, chain, http.headers (the `Server` header), and `gateway.runtime` (the composition root's types, for
the admin listener).
"""
