"""Forwarding to the upstream service over one shared, pooled client (SPEC §7).

`Upstream.send` streams the client's body upstream and returns once the
upstream's status line and headers are in, so that the caller can decide (and
record) a charge from the status alone; `relay` then streams the body back
chunk by chunk as it arrives (SSE, chunked, long downloads). Bytes pass
through untouched: the client session never decompresses.
"""

from __future__ import annotations

import asyncio
import time
from typing import AsyncIterator

import aiohttp
from aiohttp import web
from multidict import CIMultiDict
from yarl import URL

from gateway.config import ServiceConfig
from gateway.headers import client_response_headers
from gateway.observability import Metrics
from gateway.problems import Problem

CHUNK = 64 * 1024


def create_session(total_connections: int = 10_000) -> aiohttp.ClientSession:
    """The one client session every upstream call shares (connection pooling, keep-alive)."""
    connector = aiohttp.TCPConnector(limit=total_connections, limit_per_host=0, ttl_dns_cache=300)
    return aiohttp.ClientSession(
        connector=connector,
        auto_decompress=False,  # raw bytes: no stale Content-Encoding / Content-Length
        cookie_jar=aiohttp.DummyCookieJar(),  # a proxy must not keep one client's cookies for another
        skip_auto_headers=("User-Agent", "Accept-Encoding", "Accept", "Content-Type"),
    )


def target_url(service: ServiceConfig, path: str, query: str) -> URL:
    """Upstream base + exactly the path that was authorized + the original query string."""
    return URL(service.upstream + path + (f"?{query}" if query else ""), encoded=True)


async def read_bounded(request: web.Request, limit: int) -> bytes:
    """The whole body, or Problem 413 as soon as it passes `limit` bytes."""
    if request.content_length is not None and request.content_length > limit:
        raise Problem(413, "body_too_large", f"request body exceeds {limit} bytes")
    body = bytearray()
    async for chunk in request.content.iter_any():
        body += chunk
        if len(body) > limit:
            raise Problem(413, "body_too_large", f"request body exceeds {limit} bytes")
    return bytes(body)


class BodyTooLarge(Exception):
    pass


class _LimitedBody:
    """The client's body, streamed; stops (and remembers why) once it passes `limit` bytes."""

    def __init__(self, request: web.Request, limit: int) -> None:
        self.request, self.limit, self.exceeded = request, limit, False

    async def chunks(self) -> AsyncIterator[bytes]:
        seen = 0
        async for chunk in self.request.content.iter_any():
            seen += len(chunk)
            if seen > self.limit:
                self.exceeded = True
                raise BodyTooLarge()
            yield chunk


class Upstream:
    def __init__(self, session: aiohttp.ClientSession, metrics: Metrics | None = None) -> None:
        self.session = session
        self.metrics = metrics or Metrics()

    async def send(
        self, request: web.Request, service: ServiceConfig, url: URL, headers: CIMultiDict[str],
        buffered: bytes | None = None,
    ) -> aiohttp.ClientResponse:
        """Send the request; return the upstream's response with only its head read.

        `buffered`: the body, already read (within max_body) by a caller that had to look at it
        to price the call (an MCP request); sent as is instead of streaming the client's body."""
        if request.content_length is not None and request.content_length > service.max_body:
            # Why: refuse before forwarding anything when the client announces an oversized body.
            raise Problem(413, "body_too_large", f"request body exceeds {service.max_body} bytes")
        body = _LimitedBody(request, service.max_body) if request.body_exists and buffered is None else None
        started = time.perf_counter()
        try:
            response = await self.session.request(
                request.method,
                url,
                headers=headers,
                data=body.chunks() if body else buffered,
                allow_redirects=False,  # redirects are the client's to follow
                timeout=aiohttp.ClientTimeout(total=None, sock_connect=service.timeout, sock_read=service.timeout),
            )
            self.metrics.upstream_duration.labels(service.id).observe(time.perf_counter() - started)
            return response
        except asyncio.TimeoutError:  # first: aiohttp's ServerTimeoutError is also a ClientError
            raise Problem(504, "upstream_timeout", f"upstream did not answer within {service.timeout:g}s") from None
        except (BodyTooLarge, aiohttp.ClientError) as exc:
            # aiohttp wraps an error raised by the body generator in a ClientError: check the flag.
            if body is not None and body.exceeded:
                raise Problem(413, "body_too_large", f"request body exceeds {service.max_body} bytes") from None
            raise Problem(502, "upstream_unavailable", f"upstream unreachable: {type(exc).__name__}") from None

    async def relay(
        self,
        request: web.Request,
        upstream: aiohttp.ClientResponse,
        extra_headers: dict[str, str],
        strip: frozenset[str] = frozenset(),
    ) -> web.StreamResponse:
        """Stream the upstream's answer to the client as it arrives."""
        headers = client_response_headers(upstream.headers, strip=strip)
        headers.update(extra_headers)
        response = web.StreamResponse(status=upstream.status, reason=upstream.reason, headers=headers)
        self.metrics.open_streams.inc()
        try:
            await response.prepare(request)
            async for chunk in upstream.content.iter_chunked(CHUNK):
                await response.write(chunk)
        except (asyncio.TimeoutError, aiohttp.ClientError):
            # The upstream broke off mid-answer. The head was sent already: all we can do is cut
            # the stream, which the client sees as an incomplete body (never as a complete one).
            if request.transport is not None:
                request.transport.close()
            return response
        finally:
            upstream.release()
            self.metrics.open_streams.dec()
        await response.write_eof()
        return response
