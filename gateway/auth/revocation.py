"""Token revocation: `gateway token revoke`, and each process's view of the revocations.

Revocations are kept in the auth state (`gateway.auth.state`: the gateway's database, SQLite or
PostgreSQL). `RevocationList` is each process's view of them. It is refreshed at most every
`tokens.revocation_refresh` seconds (incrementally: only rows added since the last read) and
consulted on every protected call, verified-token cache hits included. So a revocation takes
effect everywhere within `revocation_refresh` (default 5 s) of being recorded; on PostgreSQL
every replica is also told at once (LISTEN/NOTIFY) and refreshes on its next call. If the state
cannot be read when a refresh is due, calls are refused 503 (fail closed).

Revoking a subscriber revokes every token issued to them up to that moment (`iat` at or before
the revocation; a token without `iat` counts as older). A later sign-in proves the wallet again
and gets a new, valid token.
"""

from __future__ import annotations

import asyncio
import math
import sqlite3
import time
from typing import Callable

import structlog
from eth_utils import to_checksum_address

from gateway.auth.state import AuthState, auth_state
from gateway.config.model import MeteringConfig
from gateway.inflight import InFlight
from gateway.ledger import LedgerUnavailable
from gateway.ledger.backends import command_database

log = structlog.get_logger("gateway.revocations")  # JSON lines like every other log (ops.observability)


async def revoke(state: AuthState, *, jti: str | None = None, subscriber: str | None = None,
                 now: float | None = None) -> float:
    """Record a revocation (exactly one of jti / subscriber); returns its time."""
    if (jti is None) == (subscriber is None):
        raise ValueError("revoke exactly one of: a jti, a subscriber")
    if jti is not None and not jti:
        raise ValueError("the jti must not be empty")
    who = to_checksum_address(subscriber) if subscriber is not None else None
    return await state.revoke(jti, who, now)


class RevocationsUnavailable(Exception):
    """The revocation list cannot be read: protected calls are refused (fail closed)."""

    def __init__(self) -> None:
        super().__init__("the token revocation list cannot be read; try again later")


class RevocationList:
    """One process's copy of the revocations, refreshed at most every `refresh` seconds."""

    def __init__(self, state: AuthState, refresh: float, clock: Callable[[], float] = time.monotonic) -> None:
        self._state, self._refresh, self._clock = state, max(0.0, refresh), clock
        self._jtis: set[str] = set()
        self._subscribers: dict[str, float] = {}  # lower-case address -> latest revocation time
        self._last_id = 0
        self._loaded_at = -math.inf  # clock() when the last successful read began
        self._inflight: InFlight[None, None] = InFlight()
        state.watch(self.mark_stale)

    def mark_stale(self) -> None:
        """A revocation was announced: the next check reads the list again."""
        self._loaded_at = -math.inf

    async def is_revoked(self, subscriber: str, token_id: str | None, issued_at: float | None) -> bool:
        if self._clock() - self._loaded_at >= self._refresh:
            await self._refresh_shared()
        if token_id is not None and token_id in self._jtis:
            return True
        revoked_at = self._subscribers.get(subscriber.lower())
        # Why "<=" and a missing iat counts as old: when in doubt, the token predates the revocation.
        return revoked_at is not None and (issued_at is None or issued_at <= revoked_at)

    async def _refresh_shared(self) -> None:
        # Why one shared read: a burst of calls when the list goes stale costs one query; a
        # caller that goes away does not cancel the read the others wait for.
        await self._inflight.run(None, self._load)

    async def _load(self) -> None:
        started = self._clock()
        try:
            rows = await self._state.revocations_after(self._last_id)
        except (LedgerUnavailable, sqlite3.Error) as exc:
            # Why fail closed: a gateway that cannot see revocations must not honour revoked tokens.
            log.error("revocations_unreadable", error=getattr(exc, "detail", str(exc)))
            raise RevocationsUnavailable() from exc
        for row_id, jti, subscriber, revoked_at in rows:
            if jti is not None:
                self._jtis.add(jti)
            else:
                key = subscriber.lower()
                self._subscribers[key] = max(revoked_at, self._subscribers.get(key, -math.inf))
            self._last_id = row_id
        self._loaded_at = started


def revoke_command(metering: MeteringConfig, *, jti: str | None, subscriber: str | None) -> str:
    """`gateway token revoke`: record the revocation in the gateway's database; what to print.

    Takes the `metering` section alone (`load_metering`): revoking needs the database, none of the
    secrets serving needs."""

    async def run() -> float:
        async with command_database(metering.ledger, metering.ledger_password) as db:
            return await revoke(auth_state(db), jti=jti, subscriber=subscriber)

    asyncio.run(run())
    what = f"token {jti}" if jti is not None else f"every token issued to {subscriber} until now"
    return (f"revoked {what}; running gateways on {metering.ledger} refuse it within their "
            f"tokens.revocation_refresh (at once on a shared PostgreSQL ledger), and the OAuth grants "
            f"it belongs to get no new token from their refresh tokens")
