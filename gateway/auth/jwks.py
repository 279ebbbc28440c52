"""An issuer's JWKS URL: fetched when first needed, cached, refetched sparingly.

An unknown `kid` triggers one refetch, at most once per JWKS_REFETCH_INTERVAL per
issuer, and concurrent refetches share one request; a failed fetch is not retried
before that interval either. Only the configured URL is ever fetched.
"""

from __future__ import annotations

import json
import math
from typing import Callable

import aiohttp
import structlog

from gateway.auth.issuer import VerificationKey, parse_jwks
from gateway.inflight import InFlight

log = structlog.get_logger("gateway.jwks")  # JSON lines like every other log (ops.observability)

JWKS_TIMEOUT = 5.0           # seconds for one JWKS fetch, connect to last byte
JWKS_REFETCH_INTERVAL = 30.0  # at most one unknown-kid refetch per issuer in this many seconds
JWKS_MAX_AGE = 300.0          # a fetched JWKS is refreshed when next needed after this long
JWKS_MAX_BYTES = 1 << 20


class RemoteJwks:
    """One issuer's JWKS URL: fetched when first needed, cached, refetched sparingly."""

    def __init__(self, url: str, session: Callable[[], aiohttp.ClientSession], clock: Callable[[], float]) -> None:
        self.url, self._session, self._clock = url, session, clock
        self.keys: list[VerificationKey] | None = None
        self._fetched_at = self._kid_refetch_at = self._retry_after = -math.inf
        self._inflight: InFlight[None, None] = InFlight()  # one fetch at a time, shared by its callers

    async def current(self) -> list[VerificationKey]:
        now = self._clock()
        # Why: after a failed fetch wait before trying again, so a dead JWKS URL is not hammered
        # by every request; stale keys keep working meanwhile.
        if (self.keys is None or now - self._fetched_at >= JWKS_MAX_AGE) and now >= self._retry_after:
            await self._refresh()
        return self.keys or []

    async def refetch_for_unknown_kid(self) -> bool:
        """Refetch because a token names a key we do not have; False when rate-limited."""
        if not self._inflight.running(None):
            now = self._clock()
            # Why: tokens with random `kid`s must not turn the gateway into a JWKS flooder.
            if now - self._kid_refetch_at < JWKS_REFETCH_INTERVAL or now < self._retry_after:
                return False
            self._kid_refetch_at = now
        await self._refresh()  # Why: a refetch already in flight answers this token too.
        return True

    async def _refresh(self) -> None:
        # Why shared: concurrent callers wait for one fetch; one caller giving up (client
        # hang-up) does not cancel it for the others.
        await self._inflight.run(None, self._fetch)

    async def _fetch(self) -> None:
        try:
            timeout = aiohttp.ClientTimeout(total=JWKS_TIMEOUT)
            # Why no redirects: the key source is exactly the configured URL (TLS verified by default).
            async with self._session().get(self.url, timeout=timeout, allow_redirects=False) as resp:
                if resp.status != 200:
                    raise ValueError(f"HTTP {resp.status}")
                body = bytearray()
                async for chunk in resp.content.iter_chunked(65536):
                    body += chunk
                    if len(body) > JWKS_MAX_BYTES:
                        raise ValueError("JWKS larger than 1 MiB")
            self.keys = parse_jwks(json.loads(body))
            self._fetched_at = self._clock()
        except Exception as exc:  # Why: whatever the key server does, callers get a 401, never a 500.
            self._retry_after = self._clock() + JWKS_REFETCH_INTERVAL
            log.warning("jwks_fetch_failed", url=self.url, error=str(exc) or type(exc).__name__)
