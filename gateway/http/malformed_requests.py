"""Requests aiohttp refuses before any app sees them, answered and logged like every other refusal.

A malformed request (bad request line, invalid header bytes, an oversized head, broken body
framing, TLS on the plain port...) never reaches the pipeline: aiohttp's protocol layer answers
it in `RequestHandler.handle_error`, with a plain-text body, its own `Server` header, and a
multi-line traceback on the `aiohttp.server` logger (and no access-log line at all).
`ProblemRequestHandler` answers instead with problem JSON (RFC 9457, like every refusal), the
gateway's `Server` header, closes the connection, and writes ONE access-log line (event `request`,
decision `malformed`, status, code, a short reason: never the request's bytes, which may hold a
token). A framing error inside the body of a request already being handled (a bad chunk size)
fails that body's reads, so the pipeline answers 400 instead of waiting for a body that never ends.
aiohttp offers no public hook for any of this: `handle_error`, `data_received` and `log_exception`
are overridden as of aiohttp 3.14.5 (pinned); tests/integration/test_edge_logs_and_errors_gateway.py fails if that
stops working. `LimitedRequestHandler` (connection_limits) builds on this class.
"""

from __future__ import annotations

import json
import re

import structlog
from aiohttp.http_exceptions import HttpProcessingError, LineTooLong
from aiohttp.http_parser import RawRequestMessage
from aiohttp.web_protocol import RequestHandler, RequestPayloadError
from aiohttp.web_request import BaseRequest
from aiohttp.web_response import Response, StreamResponse

from gateway.http.headers import SERVER_NAME, request_id
from gateway.ops.observability import count_malformed
from gateway.http.problems import PROBLEM_CONTENT_TYPE, Problem, problem_body

log = structlog.get_logger("gateway.access")
_REASON = re.compile(r"[A-Za-z0-9 `.,()-]{1,100}")  # stops at a quote: what follows one is the client's bytes


def classify_error(status: int, exc: BaseException | None, max_line_size: int) -> Problem:
    """The problem a request refused by the protocol layer is answered with."""
    if status == 500:
        return Problem(500, "internal_error", "unexpected gateway error")
    if status == 504:
        return Problem(504, "gateway_timeout", "the gateway did not answer in time")
    if isinstance(exc, LineTooLong):
        limit = exc.args[1] if len(exc.args) > 1 else None
        # Why two statuses: the request line (URL) has its own limit (max_line_size); anything
        # else too long is a header field (max_field_size).
        if limit == max_line_size:
            return Problem(414, "uri_too_long", f"the request line is longer than {limit} bytes")
        return Problem(431, "headers_too_large", f"a header field is longer than {limit} bytes")
    reason = _reason(exc)
    if reason.startswith("Too many headers"):
        return Problem(431, "headers_too_large", "too many header fields")
    return Problem(400, "bad_request", f"malformed request: {reason}")


def _reason(exc: BaseException | None) -> str:
    """The parser's short reason ("Invalid header value char"), without the bytes it quotes."""
    if not isinstance(exc, HttpProcessingError):
        return type(exc).__name__ if exc is not None else "unreadable request"
    for line in (exc.message or "").splitlines():
        text = line.strip().split(":", 1)[0].strip()
        if text and text != "400, message":
            match = _REASON.match(text)
            return match.group(0).strip() if match and match.group(0).strip() else type(exc).__name__
    return type(exc).__name__


class ProblemRequestHandler(RequestHandler):
    """aiohttp's request handler whose own error answers are problem JSON with one log line."""

    __slots__ = ()

    def data_received(self, data: bytes) -> None:
        queued = len(self._messages)
        super().data_received(data)
        request = self._current_request
        if request is None or len(self._messages) == queued or request.content.is_eof():
            return
        if not isinstance(self._messages[-1][0], RawRequestMessage):
            # A framing error in the body of the request being handled (a bad chunk size): aiohttp's
            # C parser reports it as a new malformed request and never tells the body's stream, so
            # the handler reading that body would wait for ever. Fail the read instead: the
            # pipeline answers 400 and the connection is closed after it.
            request.content.set_exception(RequestPayloadError("malformed request body framing"))

    def log_exception(self, *args, **kw) -> None:
        exc = kw.get("exc_info")
        if isinstance(exc, RequestPayloadError):
            return  # a broken body framing: answered 400 and logged by the pipeline already
        super().log_exception(*args, **kw)  # a bug: one JSON line, through the logging bridge

    def handle_error(self, request: BaseRequest, status: int = 500, exc: BaseException | None = None,
                     message: str | None = None) -> StreamResponse:
        problem = classify_error(status, exc, self.max_line_size)
        rid = request_id(None)
        if problem.status < 500:
            count_malformed(problem.code)
        else:
            # A bug outside the pipeline (which answers its own errors): keep the exception, as JSON.
            log.error("unhandled_error", request_id=rid, exc_info=exc)
        # Why one "request" line: every request the gateway answers is in the access log, with the
        # same fields; the reason is the parser's words, never the client's bytes (tokens, secrets).
        log.info("request", request_id=rid, method=None, path=None, service=None, rule=None,
                 decision="malformed", subscriber=None, status=problem.status, upstream_status=None,
                 credits=None, code=problem.code, duration_ms=0.0, reason=problem.detail)
        if request.writer.output_size > 0:
            # Part of an answer is out already: the connection is broken, nothing more can be said.
            raise ConnectionError("response already started, cannot send an error answer")
        response = Response(status=problem.status, body=json.dumps(problem_body(problem, rid)).encode(),
                            content_type=PROBLEM_CONTENT_TYPE,
                            headers={"Server": SERVER_NAME, "X-Request-Id": rid})
        response.force_close()  # the stream cannot be trusted past a framing error
        return response
