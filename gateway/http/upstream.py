"""Forwarding to the upstream service over one shared, pooled client (SPEC §7).

`Upstream.send` streams the client's body upstream and returns once the
upstream's status line and headers are in, so that the caller can decide (and
record) a charge from the status alone; `relay` then streams the body back
chunk by chunk as it arrives (SSE, chunked, long downloads). Bytes pass
through untouched both ways: neither the server (`auto_decompress` off) nor
the client session decompresses; `read_bounded` decodes a body, bounded, for
the readers that must look inside it.

Every upstream failure becomes a refusal through `upstream_problem` (forwarding here, the
WebSocket handshake in `websocket`, plugin documents in `plugin_documents`): 504
`upstream_timeout`, 502 `upstream_unavailable`; `bad_upstream_document` for a document the
gateway must read and cannot.
"""

from __future__ import annotations

import asyncio
import time
from functools import partial
from typing import AsyncIterator, Callable, Coroutine, TypeVar

import aiohttp
import structlog
from aiohttp import web
from multidict import CIMultiDict
from yarl import URL

from gateway.http import content_coding
from gateway.config.model import ServiceConfig
from gateway.http.headers import client_response_headers
from gateway.ops.observability import Metrics
from gateway.http.problems import Problem

log = structlog.get_logger("gateway.upstream")
CHUNK = 64 * 1024
DECODE_INLINE = 2 * 1024  # compressed bodies up to this size (~2 MB decoded at most) are decoded inline
T = TypeVar("T")
# What a failed upstream call raises (aiohttp's ServerTimeoutError is both: a timeout wins).
UPSTREAM_ERRORS = (asyncio.TimeoutError, aiohttp.ClientError)


def upstream_problem(exc: BaseException, timeout: float | None = None) -> Problem:
    """The refusal for an upstream call that failed with `exc` (one of UPSTREAM_ERRORS): 504
    `upstream_timeout` when it did not answer (within `timeout` seconds, when that is what bounded
    it), otherwise 502 `upstream_unavailable`."""
    if isinstance(exc, asyncio.TimeoutError):  # first: aiohttp's ServerTimeoutError is also a ClientError
        within = f"within {timeout:g}s" if timeout is not None else "in time"
        return Problem(504, "upstream_timeout", f"upstream did not answer {within}")
    if isinstance(exc, aiohttp.WSServerHandshakeError):
        return Problem(502, "upstream_unavailable", f"upstream refused the WebSocket upgrade ({exc.status})")
    # Why only the type: the message can name the upstream's internal address, not the client's business.
    return Problem(502, "upstream_unavailable", f"upstream unreachable: {type(exc).__name__}")


def bad_upstream_document(detail: str) -> Problem:
    """502: the upstream answered, but not with a document the gateway can read (plugin documents)."""
    return Problem(502, "bad_upstream_document", detail)


# Headers aiohttp's client would add on its own: a proxy forwards the client's, and adds none of these.
SKIP_AUTO_HEADERS = ("Accept", "Accept-Encoding", "Content-Type", "User-Agent")


class _ForwardedRequest(aiohttp.ClientRequest):
    """aiohttp's client request, minus its per-call copy of the headers to decide which automatic
    headers to add: with SKIP_AUTO_HEADERS it adds none (its defaults are Accept, Accept-Encoding
    and User-Agent, all skipped), so the answer is known once (`create_session` checks it)."""

    _SKIP = CIMultiDict((name, None) for name in sorted(SKIP_AUTO_HEADERS))

    def update_auto_headers(self, skip_auto_headers) -> None:
        self._skip_auto_headers = self._SKIP  # read later (Content-Type of a body): the same skips


def create_session(total_connections: int = 10_000) -> aiohttp.ClientSession:
    """The one client session every upstream call shares (connection pooling, keep-alive)."""
    # Why a check: if aiohttp ever adds another automatic header, _ForwardedRequest must not hide it.
    if not {h.lower() for h in (*aiohttp.ClientRequest.DEFAULT_HEADERS, "User-Agent")} <= \
            {h.lower() for h in SKIP_AUTO_HEADERS}:
        raise RuntimeError("aiohttp adds automatic request headers SKIP_AUTO_HEADERS does not list")
    connector = aiohttp.TCPConnector(limit=total_connections, limit_per_host=0, ttl_dns_cache=300)
    return aiohttp.ClientSession(
        connector=connector,
        auto_decompress=False,  # raw bytes: no stale Content-Encoding / Content-Length
        cookie_jar=aiohttp.DummyCookieJar(),  # a proxy must not keep one client's cookies for another
        skip_auto_headers=SKIP_AUTO_HEADERS,
        request_class=_ForwardedRequest,
    )


def target_url(service: ServiceConfig, path: str, query: str) -> URL:
    """Upstream base + exactly the path that was authorized + the original query string."""
    return URL(service.upstream + path + (f"?{query}" if query else ""), encoded=True)


async def read_bounded(request: web.Request, limit: int) -> bytes:
    """The whole body decoded (its Content-Encoding undone), at most `limit` bytes as sent and as
    decoded; Problem 413 past that, 415 for an encoding the gateway cannot decode, 400 if corrupt.
    For readers that look inside a body (sign-in); what is forwarded is always `read_raw`'s."""
    return await decoded(await read_raw(request, limit), request.headers.get("Content-Encoding"), limit)


async def decoded(raw: bytes, content_encoding: str | None, limit: int) -> bytes:
    """`raw` with `content_encoding` undone, bounded by `limit` (see gateway/http/content_coding.py)."""
    if not content_coding.encodings(content_encoding):
        return raw
    if len(raw) <= DECODE_INLINE:
        return content_coding.decode(raw, content_encoding, limit)
    # Why a thread: inflating up to max_body is CPU work that must not stall the event loop.
    return await asyncio.to_thread(content_coding.decode, raw, content_encoding, limit)


async def read_raw(request: web.Request, limit: int) -> bytes:
    """The whole body as the client sent it, or Problem 413 as soon as it passes `limit` bytes."""
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


class Handover:
    """Whether the complete request is in the upstream's hands yet (see `carried_through`)."""

    __slots__ = ("done",)

    def __init__(self) -> None:
        self.done = False


async def carried_through(work: Coroutine[object, object, T], handover: Handover, abandon: Callable[[T], None],
                          request_id: str = "") -> T:
    """Await `work` (send upstream, then charge on the status line) so that a client leaving
    cannot take back a request the upstream already has.

    The rule: a call is carried through once its complete request is in the upstream's hands:
    for a body streamed from the client, once its last byte is handed to the upstream
    connection; for a request without a body, or whose body the gateway read first (an MCP
    call), once forwarding starts. If the client leaves (aiohttp cancels the handler) after that
    point, the gateway still waits for the upstream's status line (within the service's
    `timeout`), charges a 2xx as for any call, drops the answer (`abandon`) and only then lets
    the cancellation through: work the upstream did is paid. If the client leaves before that
    point, the upstream call is cut off (the upstream never has a complete request) and the
    caller releases the hold."""
    loop = asyncio.get_running_loop()
    task = loop.create_task(work)
    # asyncio.shield's effect at a lower cost (one future, one callback; this runs on every metered
    # call): cancelling the handler cancels `waiter`, never `task`.
    waiter = loop.create_future()
    task.add_done_callback(partial(_wake, waiter))
    try:
        await waiter
        return task.result()
    except asyncio.CancelledError:
        if not handover.done:
            task.cancel()  # the upstream has no complete request: nothing to pay for
        else:
            log.info("client_left_call_carried_through", request_id=request_id)
        (outcome,) = await asyncio.gather(task, return_exceptions=True)
        if not isinstance(outcome, BaseException):
            abandon(outcome)  # charged; nobody is left to read the answer
        raise


def _wake(waiter: asyncio.Future, _task: asyncio.Task) -> None:
    if not waiter.done():
        waiter.set_result(None)


class _LimitedBody:
    """The client's body, streamed; stops (and remembers why) once it passes `limit` bytes."""

    def __init__(self, request: web.Request, limit: int, handover: Handover) -> None:
        self.request, self.limit, self.exceeded, self.handover = request, limit, False, handover

    async def chunks(self) -> AsyncIterator[bytes]:
        seen, expected = 0, self.request.content_length
        async for chunk in self.request.content.iter_any():
            seen += len(chunk)
            if seen > self.limit:
                self.exceeded = True
                raise BodyTooLarge()
            if expected is not None and seen >= expected:
                # Why before the last yield: once it is written the upstream holds the whole
                # request (its length is known), and the body is not read again.
                self.handover.done = True
                yield chunk
                return
            yield chunk
        self.handover.done = True  # chunked: the terminating chunk follows once this returns


class _WholeResponse(web.StreamResponse):
    """A relayed answer whose length is known (Content-Length): its head goes out with the first
    body bytes (or the end), in one write. Why: a head written alone is one more system call and
    one more TCP segment per answer. An answer of unknown length (SSE, chunked) keeps
    StreamResponse's rule, the head at once: its client may wait long for the first event."""

    _send_headers_immediately = False


class Upstream:
    def __init__(self, session: aiohttp.ClientSession, metrics: Metrics | None = None) -> None:
        self.session = session
        self.metrics = metrics or Metrics()
        self._timeouts: dict[float, aiohttp.ClientTimeout] = {}  # one per service timeout, built once

    async def send(
        self, request: web.Request, service: ServiceConfig, url: URL, headers: CIMultiDict[str],
        buffered: bytes | None = None, handover: Handover | None = None,
    ) -> aiohttp.ClientResponse:
        """Send the request; return the upstream's response with only its head read.

        `buffered`: the body, already read (within max_body) by a caller that had to look at it
        to price the call (an MCP request); sent as is instead of streaming the client's body.
        `handover.done` turns true once the complete request is in the upstream's hands."""
        handover = handover or Handover()
        if request.content_length is not None and request.content_length > service.max_body:
            # Why: refuse before forwarding anything when the client announces an oversized body.
            raise Problem(413, "body_too_large", f"request body exceeds {service.max_body} bytes")
        body = _LimitedBody(request, service.max_body, handover) \
            if request.body_exists and buffered is None else None
        if body is None:
            handover.done = True  # no body to stream: the request goes out whole with its head
        timeout = self._timeouts.get(service.timeout)
        if timeout is None:
            timeout = self._timeouts[service.timeout] = aiohttp.ClientTimeout(
                total=None, sock_connect=service.timeout, sock_read=service.timeout)
        started = time.perf_counter()
        try:
            response = await self.session.request(
                request.method,
                url,
                headers=headers,
                data=body.chunks() if body else buffered,
                allow_redirects=False,  # redirects are the client's to follow
                timeout=timeout,
            )
            self.metrics.observe_upstream(service.id, time.perf_counter() - started)
            return response
        except asyncio.TimeoutError as exc:  # first: aiohttp's ServerTimeoutError is also a ClientError
            raise upstream_problem(exc, service.timeout) from None
        except (BodyTooLarge, aiohttp.ClientError) as exc:
            # aiohttp wraps an error raised by the body generator in a ClientError: check the flag.
            if body is not None and body.exceeded:
                raise Problem(413, "body_too_large", f"request body exceeds {service.max_body} bytes") from None
            raise upstream_problem(exc, service.timeout) from None

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
        kind = _WholeResponse if "Content-Length" in upstream.headers else web.StreamResponse
        response = kind(status=upstream.status, reason=upstream.reason, headers=headers)
        content = upstream.content
        if content.is_eof() and content.exception() is None:
            # The whole answer came in with its head (a small one): relayed as it is, head and
            # body in one write, with no chunk loop.
            body = content.read_nowait()
            upstream.release()
            await response.prepare(request)
            await response.write_eof(body)
            return response
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
