"""Every log line is a structlog event: the JWKS fetcher and the revocation list included (they
logged through the standard `logging` module, whose records came out as plain text)."""

from __future__ import annotations

import ast
import json
import sqlite3
from pathlib import Path

import aiohttp
import pytest
import structlog
from structlog.testing import capture_logs

from gateway.auth.state import SqliteAuthState
from gateway.auth import jwks, revocation
from gateway.auth.jwks import RemoteJwks
from gateway.auth.revocation import RevocationList, RevocationsUnavailable
from gateway.ops.observability import configure_logging

GATEWAY = Path(__file__).resolve().parents[2] / "gateway"


class RefusingSession:
    """An aiohttp session whose every request fails to connect."""

    def get(self, *args, **kwargs):
        raise aiohttp.ClientConnectionError("connection refused")


class BrokenDatabase:
    async def run(self, query):
        raise sqlite3.OperationalError("disk I/O error")


@pytest.fixture(autouse=True)
def fresh_loggers(monkeypatch):
    """Fresh module loggers: a logger used once is cached with the config of that moment
    (cache_logger_on_first_use), which would hide it from capture_logs in a later test."""
    monkeypatch.setattr(jwks, "log", structlog.get_logger("gateway.jwks"))
    monkeypatch.setattr(revocation, "log", structlog.get_logger("gateway.revocations"))


async def fail_a_jwks_fetch() -> None:
    fetcher = RemoteJwks("https://issuer.example/jwks.json", lambda: RefusingSession(), lambda: 0.0)
    assert await fetcher.current() == []  # a failed fetch: no keys (the caller answers 401)


async def fail_a_revocations_read() -> None:
    with pytest.raises(RevocationsUnavailable):
        await RevocationList(SqliteAuthState(BrokenDatabase()), refresh=0).is_revoked("0x" + "ab" * 20, "jti-1", 0.0)


@pytest.mark.asyncio
async def test_a_failed_jwks_fetch_is_a_structured_warning():
    with capture_logs() as logs:
        await fail_a_jwks_fetch()
    assert logs == [{"event": "jwks_fetch_failed", "log_level": "warning",
                     "url": "https://issuer.example/jwks.json", "error": "connection refused"}]


@pytest.mark.asyncio
async def test_an_unreadable_revocation_list_is_a_structured_error():
    with capture_logs() as logs:
        await fail_a_revocations_read()
    assert logs == [{"event": "revocations_unreadable", "log_level": "error", "error": "disk I/O error"}]


@pytest.mark.asyncio
async def test_their_lines_are_json_objects_in_the_process_output(capsys):
    configure_logging("info", "json")
    try:
        await fail_a_jwks_fetch()
        await fail_a_revocations_read()
        out = capsys.readouterr().out
    finally:
        structlog.reset_defaults()
    records = [json.loads(line) for line in out.splitlines()]  # each line is one JSON object
    assert [(r["event"], r["level"]) for r in records] == [("jwks_fetch_failed", "warning"),
                                                           ("revocations_unreadable", "error")]
    assert all("timestamp" in r for r in records)


def test_no_gateway_module_logs_through_the_standard_logging_module():
    """Why: a `logging.getLogger` logger is plain text unless something routes it; only the log
    configuration itself (ops/observability.py, which routes library records) may touch it."""
    offenders = []
    for path in GATEWAY.rglob("*.py"):
        if path.relative_to(GATEWAY).as_posix() == "ops/observability.py":
            continue
        for node in ast.walk(ast.parse(path.read_text(), str(path))):
            if (isinstance(node, ast.Call) and isinstance(node.func, ast.Attribute) and node.func.attr == "getLogger"
                    and isinstance(node.func.value, ast.Name) and node.func.value.id == "logging"):
                offenders.append(f"{path.relative_to(GATEWAY)}:{node.lineno}")
    assert offenders == []
