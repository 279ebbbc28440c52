"""Shared fixtures for integration tests: a real anvil with the plan contracts, the real
example plugin, MCP server and httpbin as upstream processes, and the real gateway app on a free port.
The helpers behind them live in tests/support/stack.py; test modules import those from there."""

from __future__ import annotations

import sys
from pathlib import Path

import aiohttp
import pytest
import pytest_asyncio
from aiohttp import web

from gateway.auth.issuer import OwnIssuer, generate_signing_key
from gateway.dev.chain import Anvil, DevChain, free_port
from gateway.dev.process import ChildProcess
from tests.support.stack import (PASS_HOLDER, START_CREDITS, SUBSCRIBER, Chain, Gateway, Plugin, base_config,
                                 example_server, start_gateway)


@pytest.fixture(scope="session")
def chain_session():
    with Anvil() as anvil:
        dev = DevChain(anvil.rpc_url)
        plan = dev.deploy_credits_plan()
        access_pass = dev.deploy_access_pass()
        dev.mint_credits(plan, SUBSCRIBER, 1, START_CREDITS)
        dev.mint_pass(access_pass, PASS_HOLDER)
        yield Chain(anvil, dev, plan, access_pass)


@pytest.fixture
def chain(chain_session):
    """The session's chain, reverted to its starting state after each test."""
    snap = chain_session.dev.snapshot()
    yield chain_session
    chain_session.dev.revert(snap)


@pytest.fixture(scope="session")
def plugin():
    with example_server("examples.song_plugin", "SONG_PLUGIN_TOKEN") as server:
        yield server


@pytest.fixture(scope="session")
def mcp_upstream() -> Plugin:
    """The example MCP server (`examples.song_mcp`); its MCP endpoint is /mcp."""
    with example_server("examples.song_mcp", "SONG_MCP_TOKEN") as server:
        yield server


@pytest.fixture(scope="session")
def httpbin_url():
    """The httpbin endpoints the tests use, answered as httpbin does, in their own process
    (tests/support/httpbin_subset.py says why not PyPI's httpbin: it pins greenlet<3)."""
    port = free_port()
    child = ChildProcess([sys.executable, "-m", "tests.support.httpbin_subset", str(port)],
                         ready=r"httpbin subset ready on http://127\.0\.0\.1")
    yield f"http://127.0.0.1:{port}"
    child.stop()


@pytest.fixture(scope="session")
def signing_key(tmp_path_factory) -> Path:
    path = tmp_path_factory.mktemp("keys") / "own.pem"
    generate_signing_key(path, "ES256")
    return path


@pytest_asyncio.fixture
async def make_gateway(signing_key, chain):
    """Start the real gateway app on a free loopback port from a config dict.

    Depends on `chain` so that gateways stop (and settle what they charged) before the chain is
    reverted for the next test."""
    runners: list[web.AppRunner] = []
    sessions: list[aiohttp.ClientSession] = []

    async def make(data: dict) -> Gateway:
        runner, config = await start_gateway(data)
        runners.append(runner)
        session = aiohttp.ClientSession(auto_decompress=False)
        sessions.append(session)
        port = runner.addresses[0][1]
        return Gateway(f"http://127.0.0.1:{port}", config, runner.app, session, OwnIssuer(config.tokens.own))

    yield make
    for session in sessions:
        await session.close()
    for runner in runners:
        await runner.cleanup()


@pytest_asyncio.fixture
async def gateway(make_gateway, chain, plugin, signing_key) -> Gateway:
    """The gateway in front of the example plugin, on the real chain; the plugin's request log is emptied."""
    gw = await make_gateway(base_config(chain, plugin, signing_key))
    async with gw.session.delete(f"{plugin.url}/debug/requests", headers={"Authorization": f"Bearer {plugin.secret}"}) as resp:
        assert resp.status in (200, 204)
    return gw


@pytest_asyncio.fixture
async def session():
    """An aiohttp client session, closed after the test."""
    async with aiohttp.ClientSession() as s:
        yield s
