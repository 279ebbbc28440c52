"""The admin listener: /healthz, /readyz, /metrics, POST /settle. Operator network only.

/readyz answers 200 only when the config is loaded, every chain's RPC answers
now (within its timeout), the ledger takes a write, and settlement is not
stuck (no charge older than STUCK_AFTER settle periods is still unburned).
"""

from __future__ import annotations

import asyncio
import dataclasses
import time

from aiohttp import web
from prometheus_client import generate_latest
from prometheus_client.exposition import CONTENT_TYPE_LATEST

from gateway.runtime import RUNTIME, Runtime
from gateway.http.headers import set_server_header
from gateway.ops.worker_metrics import registry_to_expose

STUCK_AFTER = 3  # settle periods (and at least 5 minutes)


def build_admin_app(public: web.Application) -> web.Application:
    admin = web.Application()
    admin.on_response_prepare.append(set_server_header)  # no versions on the operator side either
    runtime = public[RUNTIME]

    async def healthz(request: web.Request) -> web.Response:
        return web.json_response({"status": "ok"})

    async def readyz(request: web.Request) -> web.Response:
        chains = await _probe_chains(runtime)
        ledger_ok = await _ledger_writable(runtime)
        lag = await runtime.ledger.oldest_unsettled_age()
        limit = max(STUCK_AFTER * runtime.config.metering.settle_every, 300.0)
        settling = runtime.settler is None or lag < limit
        ready = all(chains.values()) and ledger_ok and settling
        body = {"ready": ready, "chains": chains, "ledger": ledger_ok,
                "settlement": {"ok": settling, "oldest_unsettled_seconds": round(lag, 1)}}
        return web.json_response(body, status=200 if ready else 503)

    async def metrics(request: web.Request) -> web.Response:
        m = runtime.metrics
        now = time.monotonic()
        for name, reader in runtime.readers.items():
            if reader.last_success is not None:
                m.chain_up.labels(name).set(now - reader.last_success)
        m.settlement_lag.set(await runtime.ledger.oldest_unsettled_age())
        # Every worker's counts (workers: N > 1) or this process's, with build and process info.
        body = generate_latest(registry_to_expose(m.registry))
        return web.Response(body=body, headers={"Content-Type": CONTENT_TYPE_LATEST})

    async def settle(request: web.Request) -> web.Response:
        """Settle now (an operator's request also retries groups that were backing off)."""
        settler = runtime.settler
        if settler is None:
            return web.json_response({"error": "metering.operator_key is not configured"}, status=409)
        settler.retry_now()
        report = await settler.settle_once()
        return web.json_response(dataclasses.asdict(report))

    admin.router.add_get("/healthz", healthz)
    admin.router.add_get("/readyz", readyz)
    admin.router.add_get("/metrics", metrics)
    admin.router.add_post("/settle", settle)
    return admin


async def _probe_chains(runtime: Runtime) -> dict[str, bool]:
    """Ask every chain now (eth_chainId, bounded by each chain's timeout and failover)."""

    async def probe(reader) -> bool:
        try:
            await reader.request("eth_chainId", [])
            return True
        except Exception:  # noqa: BLE001 - any failure means "not ready"
            return False

    readers = runtime.readers
    results = await asyncio.gather(*(probe(r) for r in readers.values()))
    return dict(zip(readers, results))


async def _ledger_writable(runtime: Runtime) -> bool:
    try:
        return await asyncio.wait_for(runtime.db.writable(), timeout=5)
    except Exception:  # noqa: BLE001 - locked, read-only, full disk: all "not ready"
        return False
