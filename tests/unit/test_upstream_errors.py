"""gateway.http.upstream.upstream_problem: the one mapping of upstream failures to refusals."""

from __future__ import annotations

import asyncio

import aiohttp
import pytest

from gateway.http.upstream import UPSTREAM_ERRORS, bad_upstream_document, upstream_problem


@pytest.mark.parametrize("exc, timeout, expected", [
    (asyncio.TimeoutError(), 2.5, (504, "upstream_timeout", "upstream did not answer within 2.5s")),
    (asyncio.TimeoutError(), None, (504, "upstream_timeout", "upstream did not answer in time")),
    # aiohttp's read timeout is a ClientError too: it is still a timeout.
    (aiohttp.ServerTimeoutError("read"), 30.0, (504, "upstream_timeout", "upstream did not answer within 30s")),
    (aiohttp.ClientConnectionError("refused by 10.0.0.7:8080"), 30.0,
     (502, "upstream_unavailable", "upstream unreachable: ClientConnectionError")),
    (aiohttp.WSServerHandshakeError(None, (), status=403, message="forbidden"), None,
     (502, "upstream_unavailable", "upstream refused the WebSocket upgrade (403)")),
])
def test_upstream_failures_become_502_or_504(exc, timeout, expected):
    assert isinstance(exc, UPSTREAM_ERRORS)
    problem = upstream_problem(exc, timeout)
    assert (problem.status, problem.code, problem.detail) == expected
    assert "10.0.0.7" not in problem.detail  # the upstream's address is not the client's business


def test_a_bad_document_is_502_bad_upstream_document():
    problem = bad_upstream_document("the upstream's /.well-known/ai-plugin.json is not JSON")
    assert (problem.status, problem.code) == (502, "bad_upstream_document")
