"""The typed runtime of one gateway process: what `gateway.app` builds, the admin listener and
the tests read.

- `Parts`: what the gateway is built from and may be given instead of the real thing: the chain
  readers, the ledger database and ledger, the upstream session, the clocks. The defaults are the
  real ones (`gateway serve` never passes any); pipeline tests pass fakes (`tests/support/fakes.py`).
- `Resources`: the long-lived resources, opened on start-up and closed on shutdown, kept across
  reloads (the database and what lives in it, the pooled HTTP sessions).
- `Assembly`: everything derived from one config (readers, plan checker, pipeline, settler),
  replaced as a whole by a reload: calls in flight keep the pipeline they started with.
- `Runtime`: the three together, with the config in force, the metrics and the settler's task.
"""

from __future__ import annotations

import asyncio
import time
from dataclasses import dataclass
from typing import Any, Callable, Mapping

import aiohttp
from aiohttp import web

from gateway.auth.state import AuthState
from gateway.chain.reader import ChainReader, rpc_readers
from gateway.config.model import GatewayConfig
from gateway.credits.plans import PlanChecker
from gateway.credits.settlement import Settler
from gateway.http.pipeline import Pipeline
from gateway.http.upstream import create_session
from gateway.ledger import Ledger
from gateway.ledger.backends import Database, ledger_on, open_database
from gateway.ledger.settler_lease import SettlerLease
from gateway.ops.observability import Metrics
from gateway.x402.payments import X402Payments

Clock = Callable[[], float]


def ledger_database(config: GatewayConfig) -> Database:
    """The real ledger database: the SQLite file or the PostgreSQL database `metering.ledger` names."""
    # PostgreSQL: up to `metering.ledger_pool` pooled connections per worker (plus one LISTEN
    # connection, and the settler's lease in slot 0). Size the server's max_connections for
    # replicas x workers x (ledger_pool + 2).
    return open_database(config.metering.ledger, config.metering.ledger_password,
                         pool_size=config.metering.ledger_pool)


def pooled_session(config: GatewayConfig) -> aiohttp.ClientSession:
    """The real upstream session: pooled, raw bytes, no cookie jar (`gateway.http.upstream`)."""
    return create_session(config.upstream_connections)


@dataclass(frozen=True)
class Parts:
    """What a gateway is built from. Each is a factory, so the app owns what it opens and closes.

    `readers` is called on start-up and on every reload (the chains may change); the others once.
    `clock` is wall-clock time (token times, ledger rows, nonces), `monotonic` measures intervals
    (caches, refresh periods, settlement backoff)."""

    readers: Callable[[GatewayConfig, aiohttp.ClientSession], Mapping[str, ChainReader]] = rpc_readers
    database: Callable[[GatewayConfig], Database] = ledger_database
    ledger: Callable[[Database, Clock], Ledger] = ledger_on
    upstream_session: Callable[[GatewayConfig], aiohttp.ClientSession] = pooled_session
    clock: Clock = time.time
    monotonic: Clock = time.monotonic


@dataclass(frozen=True)
class Resources:
    """Opened on start-up, closed on shutdown; a reload keeps them."""

    db: Database  # the ledger's tables, the sign-in state, the shared balances
    ledger: Ledger
    auth: AuthState  # spent sign-in nonces, revocations
    nonce_secret: bytes  # signs sign-in nonces
    shared_balances: Any  # SharedBalances or PostgresSharedBalances; None when nobody shares a read
    lease: SettlerLease  # whether this process is the one settler of the ledger
    session: aiohttp.ClientSession  # upstream calls (pooled, keep-alive)
    rpc_session: aiohttp.ClientSession  # chain RPC and JWKS fetches

    async def close(self) -> None:
        await self.session.close()
        await self.rpc_session.close()
        await self.lease.release()
        await self.auth.close()
        await self.ledger.close()
        await self.db.close()


@dataclass(frozen=True)
class Assembly:
    """Everything built from one config on the resources; a reload builds a new one."""

    config: GatewayConfig
    readers: Mapping[str, ChainReader]  # chain name -> reader
    plans: PlanChecker
    pipeline: Pipeline
    settler: Settler | None  # None without metering.operator_key: charges are recorded, never burned
    x402: X402Payments | None = None  # None: no service is sold per call


@dataclass
class Runtime:
    """One gateway process: its parts, resources and current assembly (see the module docstring)."""

    config: GatewayConfig  # the config in force: a reload replaces it
    metrics: Metrics
    settle: bool  # this process runs the periodic settlement (one process per ledger does)
    parts: Parts
    resources: Resources | None = None  # set on start-up
    assembly: Assembly | None = None  # set on start-up, replaced on reload
    settle_task: asyncio.Task | None = None  # the periodic settlement, when this process runs it

    def started(self) -> Resources:
        """The open resources; RuntimeError before start-up."""
        if self.resources is None:
            raise RuntimeError("the gateway has not started: its resources are not open")
        return self.resources

    def _assembly(self) -> Assembly:
        if self.assembly is None:
            raise RuntimeError("the gateway has not started: nothing is assembled yet")
        return self.assembly

    @property
    def db(self) -> Database:
        return self.started().db

    @property
    def ledger(self) -> Ledger:
        return self.started().ledger

    @property
    def pipeline(self) -> Pipeline:
        return self._assembly().pipeline

    @property
    def plans(self) -> PlanChecker:
        return self._assembly().plans

    @property
    def readers(self) -> Mapping[str, ChainReader]:
        """The current chain readers; none before start-up (nothing to probe or report yet)."""
        return self.assembly.readers if self.assembly is not None else {}

    @property
    def settler(self) -> Settler | None:
        """The current settler; None before start-up or without an operator key."""
        return self.assembly.settler if self.assembly is not None else None


RUNTIME = web.AppKey("runtime", Runtime)
