"""Wiring: build the public app from a validated config, and swap it on reload.

Long-lived resources (the pooled upstream client, the RPC session, the ledger
database) are opened on start-up and closed on shutdown. Everything derived
from the config (router, token verifier, plan checker, meter, pipeline,
settler) is assembled by `assemble` and replaced as a whole by `reload`:
calls in flight keep the pipeline they started with.
"""

from __future__ import annotations

import asyncio

import aiohttp
import structlog
from aiohttp import web

from gateway.chain.rpc import JsonRpcClient
from gateway.config.model import GatewayConfig
from gateway.ledger.database import SqliteDatabase, sqlite_path
from gateway.http.own_endpoints import GatewayEndpoints
from gateway.http.headers import set_server_header
from gateway.ledger.sqlite import SqliteLedger
from gateway.credits.meter import Meter
from gateway.ops.observability import Metrics
from gateway.auth.issuer import OwnIssuer
from gateway.http.pipeline import Pipeline
from gateway.credits.plans import PlanChecker
from gateway.auth.revocation import RevocationList
from gateway.http.routing import ServiceRouter
from gateway.credits.settlement import Settler
from gateway.credits.shared_balances import SharedBalances
from gateway.auth.signin import NonceBook, SignIn, open_auth
from gateway.auth.tokens import TokenVerifier
from gateway.http.upstream import Upstream, create_session

log = structlog.get_logger("gateway.app")
PIPELINE = web.AppKey("pipeline", Pipeline)
STATE = web.AppKey("state", dict)
FINAL_SETTLEMENT_TIMEOUT = 30.0


def build_app(config: GatewayConfig, metrics: Metrics | None = None, settle: bool = True) -> web.Application:
    """The public application. Its resources open in on_startup and close in on_cleanup.

    `settle`: this process runs the periodic settlement (exactly one process per ledger should).
    """
    # auto_decompress off: a compressed request body is forwarded as the client's very bytes,
    # with its Content-Encoding and Content-Length (SPEC §7); readers that must look inside
    # (MCP pricing, sign-in) decode it themselves, bounded (gateway/http/content_coding.py).
    app = web.Application(handler_args={"max_field_size": 16384, "auto_decompress": False})
    state: dict = {"config": config, "metrics": metrics or Metrics(), "settle": settle}
    app[STATE] = state

    async def start(app: web.Application) -> None:
        state.update(await _open_database(config))
        if config.workers <= 1:  # shared balances: one chain read per new subscriber for all workers
            state.pop("shared_balances")
        state["session"] = create_session(config.upstream_connections)
        state["rpc_session"] = aiohttp.ClientSession(timeout=aiohttp.ClientTimeout(total=None))
        _install(app, assemble(config, state))

    async def stop(app: web.Application) -> None:
        await _stop_settler(state, final=True)
        await state["session"].close()
        await state["rpc_session"].close()
        await state["db"].close()

    async def handle(request: web.Request) -> web.StreamResponse:
        # Looked up per request: a reload swaps it, calls in flight keep theirs.
        return await request.app[PIPELINE].handle(request)

    app.on_startup.append(start)
    app.on_response_prepare.append(set_server_header)  # relayed answers too: no versions, no upstream stack
    app.on_cleanup.append(stop)
    app.router.add_route("*", "/{tail:.*}", handle)
    return app


async def _open_database(config: GatewayConfig) -> dict:
    """The ledger database with every component's schema migrated, and what lives in it."""
    db = SqliteDatabase(sqlite_path(config.metering.ledger))
    ledger = SqliteLedger(db)
    await ledger.open()
    nonce_secret = await open_auth(db)  # sign-in and revocation tables
    lease = max((c.timeout * len(c.rpc_urls) for c in config.chains.values()), default=0.0) + 1.0
    shared_balances = SharedBalances(db, lease)
    await shared_balances.open()
    return {"db": db, "ledger": ledger, "nonce_secret": nonce_secret, "shared_balances": shared_balances}


def prepare_database(config: GatewayConfig) -> None:
    """Create and migrate the ledger database once, before worker processes start.

    Why: workers that open a new file at the same moment race to create it, switch it to WAL and
    migrate it; done once in the parent, each worker finds it ready (and a broken ledger stops the
    gateway before it listens)."""

    async def prepare() -> None:
        await (await _open_database(config))["db"].close()

    asyncio.run(prepare())


def assemble(config: GatewayConfig, state: dict) -> dict:
    """Everything that depends on the config, built on the long-lived resources in `state`."""
    metrics: Metrics = state["metrics"]
    readers = {name: JsonRpcClient(chain, state["rpc_session"]) for name, chain in config.chains.items()}
    plans = PlanChecker(readers, config.plan_cache, shared=state.get("shared_balances"))
    chain_ids = {name: chain.chain_id for name, chain in config.chains.items()}
    own = OwnIssuer(config.tokens.own) if config.tokens.own else None
    revocations = RevocationList(state["db"], config.tokens.revocation_refresh)
    signin = None
    if own is not None:  # sign-in issues the own issuer's tokens: no own issuer, no sign-in
        signin = SignIn(config, own, NonceBook(state["db"], state["nonce_secret"], config.tokens.nonce_ttl),
                        plans, readers)
    tokens = TokenVerifier(config.tokens, http=state["rpc_session"], revocations=revocations)
    meter = Meter(state["ledger"], plans, chain_ids, metrics, hold_margin=config.metering.hold_margin)
    pipeline = Pipeline(
        config,
        ServiceRouter(config.services.values(), config.base_domain),
        tokens,
        meter,
        Upstream(state["session"], metrics),
        GatewayEndpoints(config, own, signin, tokens, meter),
        metrics,
    )
    settler = None
    if config.metering.operator_key:
        rpcs = {config.chains[name].chain_id: reader for name, reader in readers.items()}
        settler = Settler(state["ledger"], rpcs, config.metering.operator_key, config.metering.settle_every, metrics)
    else:
        log.warning("no_operator_key", detail="metering.operator_key is not set: charges are recorded, never burned")
    return {"config": config, "readers": readers, "plans": plans, "pipeline": pipeline, "settler": settler}


def _install(app: web.Application, parts: dict) -> None:
    state = app[STATE]
    state.update(parts)
    app[PIPELINE] = parts["pipeline"]
    metrics: Metrics = state["metrics"]
    metrics.watch("gateway_plan_cache", "Plan checks: hits, misses, coalesced, rpc_calls, errors, stale",
                  "outcome", lambda: state["plans"].stats)
    metrics.watch_rpc(lambda: state["readers"])
    if parts["settler"] is not None and state["settle"]:
        state["settle_task"] = asyncio.create_task(parts["settler"].run())


async def reload(app: web.Application, config: GatewayConfig) -> None:
    """Swap in a new config: new requests use it at once, calls in flight finish on the old one."""
    state = app[STATE]
    old = state["config"]
    for key in ("listen", "admin_listen", "workers", "connections"):
        if getattr(old, key) != getattr(config, key):
            log.warning("reload_needs_restart", key=key, detail=f"{key} changes take effect on restart")
    if old.metering.ledger != config.metering.ledger:
        log.warning("reload_needs_restart", key="metering.ledger", detail="the ledger path changes on restart")
    parts = assemble(config, state)
    await _stop_settler(state, final=False)
    _install(app, parts)
    log.info("reloaded", services=sorted(config.services))


async def _stop_settler(state: dict, final: bool) -> None:
    task, settler = state.pop("settle_task", None), state.get("settler")
    if task is not None:
        async with settler.lock:  # never cut a cycle in half (it would be reconciled, but needn't be)
            task.cancel()
        await asyncio.gather(task, return_exceptions=True)
        if final:
            try:  # settle what was charged before going away (bounded: a dead chain must not block shutdown)
                await asyncio.wait_for(settler.settle_once(), timeout=FINAL_SETTLEMENT_TIMEOUT)
            except Exception:  # noqa: BLE001 - what is left stays pending and is settled on the next start
                log.exception("final_settlement_failed")


def public_runner(app: web.Application, shutdown_timeout: float = 60.0,
                  keepalive_timeout: float = 15.0) -> web.AppRunner:
    """The runner for the public app. handler_cancellation: when a client goes away, its request
    task is cancelled, so the upstream call stops and its credits are released at once.
    shutdown_timeout: on shutdown, calls in flight (streams included) get this long to finish.
    keepalive_timeout: an idle kept-alive connection is closed after this long (`connections.`)."""
    return web.AppRunner(app, access_log=None, handle_signals=False, handler_cancellation=True,
                         shutdown_timeout=shutdown_timeout, keepalive_timeout=keepalive_timeout)
