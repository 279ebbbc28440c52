"""Wiring: build the public app from a validated config and its parts, and swap it on reload.

The process's state is a typed `Runtime` (`gateway.runtime`): long-lived `Resources` (the pooled
upstream client, the RPC session, the ledger database) are opened on start-up and closed on
shutdown; everything derived from the config (router, token verifier, plan checker, meter,
pipeline, settler) is an `Assembly`, built by `assemble` and replaced as a whole by `reload`:
calls in flight keep the pipeline they started with. What the gateway reads and writes through
(chain readers, ledger, upstream session, clocks) comes from `Parts`: the real ones by default,
fakes in the pipeline tests.
"""

from __future__ import annotations

import asyncio
from typing import Any

import aiohttp
import structlog
from aiohttp import web

from gateway.auth.issuer import OwnIssuer
from gateway.auth.revocation import RevocationList
from gateway.auth.signin import NonceBook, SignIn
from gateway.auth.state import AuthState, auth_state
from gateway.auth.tokens import TokenVerifier
from gateway.config.model import GatewayConfig
from gateway.credits.meter import Meter
from gateway.credits.plans import PlanChecker
from gateway.credits.settlement import Settler
from gateway.credits.shared_balances import shared_balances
from gateway.http.headers import set_server_header
from gateway.http.own_endpoints import GatewayEndpoints
from gateway.oauth.metadata_documents import MetadataDocuments
from gateway.oauth.server import OAuthServer
from gateway.oauth.store import oauth_store
from gateway.http.pipeline import Pipeline
from gateway.http.routing import ServiceRouter
from gateway.http.upstream import Upstream
from gateway.ledger import Ledger
from gateway.ledger.backends import Database, is_shared
from gateway.ledger.settler_lease import settler_lease
from gateway.ops.observability import Metrics
from gateway.runtime import RUNTIME, Assembly, Parts, Resources, Runtime
from gateway.x402.facilitators import facilitators
from gateway.x402.payments import X402Payments
from gateway.x402.store import x402_store

__all__ = ["RUNTIME", "Parts", "Runtime", "assemble", "build_app", "prepare_database", "public_runner", "reload"]

log = structlog.get_logger("gateway.app")
FINAL_SETTLEMENT_TIMEOUT = 30.0


def build_app(config: GatewayConfig, metrics: Metrics | None = None, settle: bool = True,
              parts: Parts | None = None) -> web.Application:
    """The public application. Its resources open in on_startup and close in on_cleanup.

    `settle`: this process runs the periodic settlement (exactly one process per ledger should).
    `parts`: what to build it from instead of the real chain readers, ledger, session and clocks.
    """
    # auto_decompress off: a compressed request body is forwarded as the client's very bytes,
    # with its Content-Encoding and Content-Length (SPEC §7); readers that must look inside
    # (MCP pricing, sign-in) decode it themselves, bounded (gateway/http/content_coding.py).
    app = web.Application(handler_args={"max_field_size": 16384, "auto_decompress": False})
    runtime = Runtime(config, metrics or Metrics(), settle, parts or Parts())
    app[RUNTIME] = runtime

    async def start(app: web.Application) -> None:
        runtime.resources = await _open_resources(config, runtime.parts)
        _install(runtime, assemble(config, runtime))

    async def stop(app: web.Application) -> None:
        if runtime.assembly is not None:  # this worker's leases of credits go back to the ledger
            await runtime.assembly.pipeline.meter.close()
        await _stop_settler(runtime, final=True)
        await _stop_x402(runtime, close=True)
        if runtime.resources is not None:  # None when start-up failed before opening them
            await runtime.resources.close()

    async def handle(request: web.Request) -> web.StreamResponse:
        # Looked up per request: a reload swaps it, calls in flight keep theirs.
        return await runtime.pipeline.handle(request)

    app.on_startup.append(start)
    app.on_response_prepare.append(set_server_header)  # relayed answers too: no versions, no upstream stack
    app.on_cleanup.append(stop)
    app.router.add_route("*", "/{tail:.*}", handle)
    return app


async def _open_state(config: GatewayConfig, parts: Parts) -> tuple[Database, Ledger, AuthState, bytes, Any]:
    """The ledger database with every component's schema migrated, and what lives in it:
    (db, ledger, auth state, nonce secret, shared balances)."""
    db = parts.database(config)
    ledger = parts.ledger(db, parts.clock)
    await ledger.open()
    auth = auth_state(db)
    nonce_secret = await auth.open()  # sign-in and revocation tables
    lease = max((c.timeout * len(c.rpc_urls) for c in config.chains.values()), default=0.0) + 1.0
    balances = shared_balances(db, lease, clock=parts.clock)
    await balances.open()
    # Always, whatever this config uses: a reload may turn x402 or OAuth on, and it cannot migrate.
    await x402_store(db, parts.clock).open()  # x402 payments
    await oauth_store(db).open()  # the OAuth server's clients, codes, refresh tokens
    return db, ledger, auth, nonce_secret, balances


async def _open_resources(config: GatewayConfig, parts: Parts) -> Resources:
    db, ledger, auth, nonce_secret, balances = await _open_state(config, parts)
    # Shared balances: one chain read per new subscriber for all workers (of every replica on a
    # shared ledger); with one worker on one machine there is nobody to share it with.
    if config.workers <= 1 and not is_shared(config.metering.ledger):
        balances = None
    return Resources(db, ledger, auth, nonce_secret, balances, settler_lease(db),
                     session=parts.upstream_session(config),
                     rpc_session=aiohttp.ClientSession(timeout=aiohttp.ClientTimeout(total=None)))


def prepare_database(config: GatewayConfig, parts: Parts | None = None) -> None:
    """Create and migrate the ledger database once, before worker processes start.

    Why: workers that open a new file at the same moment race to create it, switch it to WAL and
    migrate it; done once in the parent, each worker finds it ready (and a broken ledger stops the
    gateway before it listens)."""

    async def prepare() -> None:
        db, *_ = await _open_state(config, parts or Parts())
        await db.close()

    asyncio.run(prepare())


def assemble(config: GatewayConfig, runtime: Runtime) -> Assembly:
    """Everything that depends on the config, built on the runtime's long-lived resources."""
    res, parts, metrics = runtime.started(), runtime.parts, runtime.metrics
    readers = parts.readers(config, res.rpc_session)
    for name, reader in readers.items():  # counted as they happen: every worker's calls reach /metrics
        if hasattr(reader, "on_call"):  # the real client (a test's fake keeps its own stats)
            reader.on_call = lambda url, outcome, chain=name: metrics.count_rpc(chain, url, outcome)
    plans = PlanChecker(readers, config.plan_cache, clock=parts.monotonic, wall_clock=parts.clock,
                        shared=res.shared_balances, on_event=metrics.count_plan)
    chain_ids = {name: chain.chain_id for name, chain in config.chains.items()}
    own = OwnIssuer(config.tokens.own, clock=parts.clock) if config.tokens.own else None
    revocations = RevocationList(res.auth, config.tokens.revocation_refresh, clock=parts.monotonic)
    signin = None
    if own is not None:  # sign-in issues the own issuer's tokens: no own issuer, no sign-in
        nonces = NonceBook(res.auth, res.nonce_secret, config.tokens.nonce_ttl, clock=parts.clock)
        signin = SignIn(config, own, nonces, plans, readers, clock=parts.clock)
    tokens = TokenVerifier(config.tokens, http=res.rpc_session, clock=parts.clock, revocations=revocations)
    meter = Meter(res.ledger, plans, chain_ids, metrics, hold_margin=config.metering.hold_margin,
                  workers=config.workers)
    endpoints = GatewayEndpoints(config, own, signin, tokens, meter)
    if own is not None and signin is not None and config.oauth.enabled:  # OAuth tokens are the own issuer's
        documents = MetadataDocuments(config.oauth.metadata_private_addresses) \
            if config.oauth.client_metadata_documents else None
        endpoints.oauth = OAuthServer(config, own, signin, oauth_store(res.db), revocations, endpoints.plan,
                                      documents, clock=parts.clock)
    payments = None
    if any(service.x402 for service in config.services.values()):  # some calls may be paid per call
        payments = X402Payments(config, x402_store(res.db, parts.clock), facilitators(config), clock=parts.clock,
                                every=config.metering.settle_every, on_event=metrics.count_x402)
    pipeline = Pipeline(
        config,
        ServiceRouter(config.services.values(), config.base_domain),
        tokens,
        meter,
        Upstream(res.session, metrics),
        endpoints,
        metrics,
        x402=payments,
    )
    settler = None
    if config.metering.operator_key:
        rpcs = {config.chains[name].chain_id: reader for name, reader in readers.items()}
        settler = Settler(res.ledger, rpcs, config.metering.operator_key, config.metering.settle_every, metrics,
                          clock=parts.monotonic, lease=res.lease)
    else:
        log.warning("no_operator_key", detail="metering.operator_key is not set: charges are recorded, never burned")
    return Assembly(config, readers, plans, pipeline, settler, x402=payments)


def _install(runtime: Runtime, assembly: Assembly) -> None:
    runtime.assembly, runtime.config = assembly, assembly.config
    if assembly.settler is not None and runtime.settle:
        runtime.settle_task = asyncio.create_task(assembly.settler.run())
    if assembly.x402 is not None and runtime.settle:  # the settling process also reconciles x402 payments
        assembly.x402.start()


async def reload(app: web.Application, config: GatewayConfig) -> None:
    """Swap in a new config: new requests use it at once, calls in flight finish on the old one."""
    runtime = app[RUNTIME]
    old = runtime.config
    for key in ("listen", "admin_listen", "workers", "connections"):
        if getattr(old, key) != getattr(config, key):
            log.warning("reload_needs_restart", key=key, detail=f"{key} changes take effect on restart")
    if old.metering.ledger != config.metering.ledger:
        log.warning("reload_needs_restart", key="metering.ledger", detail="the ledger path changes on restart")
    assembly = assemble(config, runtime)
    await _stop_settler(runtime, final=False)
    await _stop_x402(runtime, close=False)  # calls in flight still settle through its facilitators
    _install(runtime, assembly)
    log.info("reloaded", services=sorted(config.services))


async def _stop_settler(runtime: Runtime, final: bool) -> None:
    task, settler = runtime.settle_task, runtime.settler
    runtime.settle_task = None
    if task is not None:
        async with settler.lock:  # never cut a cycle in half (it would be reconciled, but needn't be)
            task.cancel()
        await asyncio.gather(task, return_exceptions=True)
        if final:
            try:  # settle what was charged before going away (bounded: a dead chain must not block shutdown)
                await asyncio.wait_for(settler.settle_once(), timeout=FINAL_SETTLEMENT_TIMEOUT)
            except Exception:  # noqa: BLE001 - what is left stays pending and is settled on the next start
                log.exception("final_settlement_failed")


async def _stop_x402(runtime: Runtime, close: bool) -> None:
    if runtime.assembly is not None and runtime.assembly.x402 is not None:
        await runtime.assembly.x402.stop(close=close)


def public_runner(app: web.Application, shutdown_timeout: float = 60.0,
                  keepalive_timeout: float = 15.0) -> web.AppRunner:
    """The runner for the public app. handler_cancellation: when a client goes away, its request
    task is cancelled, so the upstream call stops and its credits are released at once.
    shutdown_timeout: on shutdown, calls in flight (streams included) get this long to finish.
    keepalive_timeout: an idle kept-alive connection is closed after this long (`connections.`)."""
    return web.AppRunner(app, access_log=None, handle_signals=False, handler_cancellation=True,
                         shutdown_timeout=shutdown_timeout, keepalive_timeout=keepalive_timeout)
