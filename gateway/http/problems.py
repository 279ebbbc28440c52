"""Refusals as RFC 9457 problem details.

Every step of the pipeline refuses by raising `Problem(status, code, detail)`;
`render` turns it into one `application/problem+json` answer in one place.
Codes are stable: clients and dashboards key on them.
"""

from __future__ import annotations

import json
from typing import Any, Mapping

from aiohttp import web

PROBLEM_CONTENT_TYPE = "application/problem+json"

TITLES = {
    400: "Bad Request",
    401: "Unauthorized",
    402: "Payment Required",
    403: "Forbidden",
    404: "Not Found",
    405: "Method Not Allowed",
    413: "Content Too Large",
    415: "Unsupported Media Type",
    414: "URI Too Long",
    431: "Request Header Fields Too Large",
    429: "Too Many Requests",
    500: "Internal Server Error",
    502: "Bad Gateway",
    503: "Service Unavailable",
    504: "Gateway Timeout",
}


class Problem(Exception):
    """A refusal: HTTP status, stable code, human detail, optional extra members and headers."""

    def __init__(
        self,
        status: int,
        code: str,
        detail: str,
        *,
        extra: Mapping[str, Any] | None = None,
        headers: Mapping[str, str] | None = None,
    ) -> None:
        super().__init__(f"{status} {code}: {detail}")
        self.status = status
        self.code = code
        self.detail = detail
        self.extra = dict(extra or {})
        self.headers = dict(headers or {})


def bearer_challenge(realm: str, error: str | None = None, description: str | None = None) -> str:
    """RFC 6750 `WWW-Authenticate` value; quotes and backslashes escaped."""
    parts = [f'realm="{_quote(realm)}"']
    if error:
        parts.append(f'error="{_quote(error)}"')
    if description:
        parts.append(f'error_description="{_quote(description)}"')
    return "Bearer " + ", ".join(parts)


def _quote(value: str) -> str:
    return value.replace("\\", "\\\\").replace('"', '\\"')


def problem_body(problem: Problem, request_id: str) -> dict[str, Any]:
    body = {
        "type": f"urn:payment-gateway:problem:{problem.code}",
        "title": TITLES.get(problem.status, "Error"),
        "status": problem.status,
        "detail": problem.detail,
        "code": problem.code,
        "request_id": request_id,
    }
    body.update(problem.extra)
    return body


def render(problem: Problem, request_id: str) -> web.Response:
    headers = {"X-Request-Id": request_id, **problem.headers}
    return web.Response(
        status=problem.status,
        body=json.dumps(problem_body(problem, request_id)).encode(),
        content_type=PROBLEM_CONTENT_TYPE,
        headers=headers,
    )
