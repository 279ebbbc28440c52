"""Wiring: build the public app and the admin app from a validated config.

Shared resources (the pooled upstream client, the RPC clients, the token
verifier, the plan cache) are created on start-up and closed on shutdown;
everything request-scoped lives in `pipeline.py`.
"""

from __future__ import annotations

import asyncio
import dataclasses
import time

import structlog

import aiohttp
from aiohttp import web
from prometheus_client import generate_latest
from prometheus_client.exposition import CONTENT_TYPE_LATEST

from gateway.chain_rpc import JsonRpcClient
from gateway.config import GatewayConfig
from gateway.database import SqliteDatabase, sqlite_path
from gateway.gateway_endpoints import GatewayEndpoints
from gateway.ledger.sqlite import SqliteLedger
from gateway.metering import Meter
from gateway.observability import Metrics
from gateway.own_issuer import OwnIssuer
from gateway.pipeline import Pipeline
from gateway.plans import PlanChecker
from gateway.routing import ServiceRouter
from gateway.settlement import Settler
from gateway.tokens import TokenVerifier
from gateway.upstream import Upstream, create_session

log = structlog.get_logger("gateway.app")
PIPELINE = web.AppKey("pipeline", Pipeline)
STATE = web.AppKey("state", dict)


def build_app(config: GatewayConfig, metrics: Metrics | None = None, settle: bool = True) -> web.Application:
    """The public application. Its resources open in on_startup and close in on_cleanup.

    `settle`: this process runs the periodic settlement (exactly one process per ledger should).
    """
    app = web.Application(handler_args={"max_field_size": 16384})
    metrics = metrics or Metrics()
    state: dict = {"config": config, "metrics": metrics}
    app[STATE] = state

    async def start(app: web.Application) -> None:
        db = SqliteDatabase(sqlite_path(config.metering.ledger))
        state["db"] = db
        session = create_session()
        rpc_session = aiohttp.ClientSession(timeout=aiohttp.ClientTimeout(total=None))
        readers = {name: JsonRpcClient(chain, rpc_session) for name, chain in config.chains.items()}
        own = OwnIssuer(config.tokens.own) if config.tokens.own else None
        state.update(session=session, rpc_session=rpc_session, readers=readers)
        ledger = SqliteLedger(db)
        await ledger.open()
        plans = PlanChecker(readers, config.plan_cache)
        metrics.watch("gateway_plan_cache", "Plan checks: hits, misses, coalesced, rpc_calls, errors, stale",
                      "outcome", lambda: plans.stats)
        chain_ids = {name: chain.chain_id for name, chain in config.chains.items()}
        state.update(ledger=ledger, plans=plans)
        if config.metering.operator_key:
            rpcs = {config.chains[name].chain_id: reader for name, reader in readers.items()}
            settler = Settler(ledger, rpcs, config.metering.operator_key, config.metering.settle_every)
            state["settler"] = settler
            if settle:
                state["settle_task"] = asyncio.create_task(settler.run())
        else:
            log.warning("no_operator_key", detail="metering.operator_key is not set: charges are recorded, never burned")
        app[PIPELINE] = Pipeline(
            config,
            ServiceRouter(config.services.values(), config.base_domain),
            TokenVerifier(config.tokens, http=rpc_session),
            Meter(ledger, plans, chain_ids),
            Upstream(session),
            GatewayEndpoints(config, own),
            metrics,
        )

    async def stop(app: web.Application) -> None:
        if task := state.get("settle_task"):
            task.cancel()
            await asyncio.gather(task, return_exceptions=True)
            try:  # settle what was charged before going away (bounded: a dead chain must not block shutdown)
                await asyncio.wait_for(state["settler"].settle_once(), timeout=30)
            except Exception:  # noqa: BLE001 - whatever is left stays pending and is settled on the next start
                log.exception("final_settlement_failed")
        await state["session"].close()
        await state["rpc_session"].close()
        await state["db"].close()

    async def handle(request: web.Request) -> web.StreamResponse:
        return await request.app[PIPELINE].handle(request)

    app.on_startup.append(start)
    app.on_cleanup.append(stop)
    app.router.add_route("*", "/{tail:.*}", handle)
    return app


def public_runner(app: web.Application) -> web.AppRunner:
    """The runner for the public app. handler_cancellation: when a client goes away, its request
    task is cancelled, so the upstream call stops and its credits are released at once."""
    return web.AppRunner(app, access_log=None, handle_signals=False, handler_cancellation=True)


def build_admin_app(public: web.Application) -> web.Application:
    """/healthz, /readyz and /metrics: for the operator's network only, never public."""
    admin = web.Application()
    state = public[STATE]

    async def healthz(request: web.Request) -> web.Response:
        return web.json_response({"status": "ok"})

    async def readyz(request: web.Request) -> web.Response:
        # Ready = config loaded and every chain's RPC answered in the last minute (checked now if not).
        now, chains = time.monotonic(), {}
        for name, reader in state.get("readers", {}).items():
            if reader.last_success is None or now - reader.last_success > 60:
                try:
                    await reader.request("eth_chainId", [])
                except Exception:  # noqa: BLE001 - any failure means "not ready", reported below
                    pass
            chains[name] = reader.last_success is not None and time.monotonic() - reader.last_success <= 60
        ready = all(chains.values())
        return web.json_response({"ready": ready, "chains": chains}, status=200 if ready else 503)

    async def metrics(request: web.Request) -> web.Response:
        m: Metrics = state["metrics"]
        for name, reader in state.get("readers", {}).items():
            if reader.last_success is not None:
                m.chain_up.labels(name).set(time.monotonic() - reader.last_success)
        return web.Response(body=generate_latest(m.registry), headers={"Content-Type": CONTENT_TYPE_LATEST})

    admin.router.add_get("/healthz", healthz)
    admin.router.add_get("/readyz", readyz)
    async def settle(request: web.Request) -> web.Response:
        """Settle now (an operator's request also retries groups that were backing off)."""
        settler = state.get("settler")
        if settler is None:
            return web.json_response({"error": "metering.operator_key is not configured"}, status=409)
        settler.retry_now()
        report = await settler.settle_once()
        return web.json_response(dataclasses.asdict(report))

    admin.router.add_get("/metrics", metrics)
    admin.router.add_post("/settle", settle)
    return admin
