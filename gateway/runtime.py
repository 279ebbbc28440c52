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
from typing import Callable, Mapping

import aiohttp
from aiohttp import web

from gateway.chain.reader import ChainReader, rpc_readers
from gateway.config.model import GatewayConfig
from gateway.credits.plans import PlanChecker
from gateway.credits.settlement import Settler
from gateway.credits.shared_balances import SharedBalances
from gateway.http.pipeline import Pipeline
from gateway.http.upstream import create_session
from gateway.ledger import Ledger
from gateway.ledger.database import SqliteDatabase, sqlite_path
from gateway.ledger.sqlite import SqliteLedger
from gateway.ops.observability import Metrics

Clock = Callable[[], float]


def ledger_database(config: GatewayConfig) -> SqliteDatabase:
    """The real ledger database: the file `metering.ledger` names."""
    return SqliteDatabase(sqlite_path(config.metering.ledger))


def sqlite_ledger(db: SqliteDatabase, clock: Clock) -> Ledger:
    """The real ledger: the embedded SQLite one, in the ledger database."""
    return SqliteLedger(db, clock=clock)


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
    database: Callable[[GatewayConfig], SqliteDatabase] = ledger_database
    ledger: Callable[[SqliteDatabase, Clock], Ledger] = sqlite_ledger
    upstream_session: Callable[[GatewayConfig], aiohttp.ClientSession] = pooled_session
    clock: Clock = time.time
    monotonic: Clock = time.monotonic


@dataclass(frozen=True)
class Resources:
    """Opened on start-up, closed on shutdown; a reload keeps them."""

    db: SqliteDatabase  # the ledger's tables, the sign-in state, the shared balances
    ledger: Ledger
    nonce_secret: bytes  # signs sign-in nonces
    shared_balances: SharedBalances | None  # None with one worker: nobody to share a balance read with
    session: aiohttp.ClientSession  # upstream calls (pooled, keep-alive)
    rpc_session: aiohttp.ClientSession  # chain RPC and JWKS fetches

    async def close(self) -> None:
        await self.session.close()
        await self.rpc_session.close()
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
    def db(self) -> SqliteDatabase:
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
