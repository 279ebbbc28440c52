"""Fakes for pipeline tests that need no anvil and no plugin process.

- `FakeChain`: a `ChainReader` (gateway/chain/reader.py) answering ERC-1155 and ERC-721
  `balanceOf` from dicts, counting its calls, failing on demand.
- `FakeUpstream`: a small aiohttp upstream on a free loopback port that records what reached it.
- `fake_gateway`: the real gateway app (real pipeline, tokens, meter, SQLite ledger in memory)
  built with `Parts` whose chain reader is a `FakeChain`, on a free loopback port.
"""

from __future__ import annotations

import collections
import time
from contextlib import asynccontextmanager
from dataclasses import dataclass
from pathlib import Path
from typing import Any, AsyncIterator, Callable

import aiohttp
from aiohttp import web
from eth_abi import decode, encode

from gateway.app import RUNTIME, Parts, Runtime, build_app, public_runner
from gateway.auth.issuer import OwnIssuer
from gateway.chain.rpc import ChainUnavailable, RpcError
from gateway.config.load import parse_config
from gateway.config.model import GatewayConfig
from gateway.credits.plans import ERC721_BALANCE_OF, ERC1155_BALANCE_OF
from gateway.dev.chain import DEV_ACCOUNTS
from gateway.ledger.database import SqliteDatabase
from tests.support.upstreams import serve_app

OWNER = DEV_ACCOUNTS[1][0]
SUBSCRIBER = DEV_ACCOUNTS[2][0]
BROKE = DEV_ACCOUNTS[3][0]
PASS_HOLDER = DEV_ACCOUNTS[4][0]
CREDITS_PLAN = "0x5FbDB2315678afecb367f032d93F642f64180aa3"  # addresses only: no contract runs
ACCESS_PASS = "0xe7f1725E7734CE288F8367e1Bb143E90bb3F0512"
HOST = "elvis.proxy.localhost"
UPSTREAM_SECRET = "fake-upstream-secret"


class FakeChain:
    """A chain reader with balances in dicts: `credits[(contract, token_id, holder)]` (ERC-1155)
    and `owners[(contract, token_id)] = holder` (ERC-721); addresses compare case-insensitively.
    `fail()` makes every call raise (ChainUnavailable by default) until `recover()`."""

    def __init__(self, chain_id: int = 31337) -> None:
        self.chain_id = chain_id
        self.credits: dict[tuple[str, int, str], int] = {}
        self.owners: dict[tuple[str, int], str] = {}
        self.error: Exception | None = None
        self.calls: collections.Counter[str] = collections.Counter()  # JSON-RPC method -> calls
        self.last_success: float | None = None
        self.stats: dict[tuple[str, str], int] = {}

    def set_credits(self, contract: str, holder: str, amount: int, token_id: int = 1) -> None:
        self.credits[(contract.lower(), token_id, holder.lower())] = amount

    def give_pass(self, contract: str, holder: str, token_id: int | None = None) -> int:
        token_id = len(self.owners) + 1 if token_id is None else token_id
        self.owners[(contract.lower(), token_id)] = holder.lower()
        return token_id

    def fail(self, error: Exception | None = None) -> None:
        self.error = error or ChainUnavailable("fake chain: no RPC URL answered")

    def recover(self) -> None:
        self.error = None

    def _called(self, method: str) -> None:
        self.calls[method] += 1
        outcome = "failed" if self.error is not None else "ok"
        self.stats[("fake://chain", outcome)] = self.stats.get(("fake://chain", outcome), 0) + 1
        if self.error is not None:
            raise self.error

    async def request(self, method: str, params: list) -> Any:
        if method == "eth_call":
            call, block = params
            return "0x" + (await self.eth_call(call["to"], bytes.fromhex(call["data"][2:]), block)).hex()
        self._called(method)
        if method == "eth_chainId":
            return hex(self.chain_id)
        if method == "eth_getCode":
            return "0x"  # every address is an externally owned account
        raise RpcError(-32601, f"the fake chain does not answer {method}")

    async def eth_call(self, to: str, data: bytes, block: str = "latest") -> bytes:
        self._called("eth_call")
        selector, args = data[:4], data[4:]
        if selector == ERC1155_BALANCE_OF:
            holder, token_id = decode(["address", "uint256"], args)
            amount = self.credits.get((to.lower(), token_id, holder.lower()), 0)
        elif selector == ERC721_BALANCE_OF:
            (holder,) = decode(["address"], args)
            amount = sum(1 for (contract, _), owner in self.owners.items()
                         if contract == to.lower() and owner == holder.lower())
        else:
            raise RpcError(3, "execution reverted")
        return encode(["uint256"], [amount])


class FakeUpstream:
    """An upstream on a free loopback port: GET /health, POST /query (answers who the gateway
    said calls), and every request it received in `requests` (method, path, headers)."""

    def __init__(self) -> None:
        self.requests: list[tuple[str, str, dict[str, str]]] = []
        self.url = ""
        self._runner: web.AppRunner | None = None

    async def _answer(self, request: web.Request) -> web.Response:
        self.requests.append((request.method, request.path_qs, dict(request.headers)))
        await request.read()
        return web.json_response({"path": request.path, "subscriber": request.headers.get("X-Gateway-Subscriber")})

    async def __aenter__(self) -> "FakeUpstream":
        app = web.Application()
        app.router.add_route("*", "/{tail:.*}", self._answer)
        self._runner, self.url = await serve_app(app)
        return self

    async def __aexit__(self, *exc) -> None:
        assert self._runner is not None
        await self._runner.cleanup()


def fake_config(upstream_url: str, signing_key: Path, **service: Any) -> GatewayConfig:
    """One service `elvis` in front of `upstream_url`, paid with credits of `CREDITS_PLAN`."""
    svc: dict[str, Any] = {
        "upstream": upstream_url,
        "upstream_auth": {"type": "bearer", "token": UPSTREAM_SECRET},
        "owner": OWNER,
        "open_endpoints": ["GET /health"],
        "protected_endpoints": ["POST /query", {"endpoint": "POST /ask", "credits": 2}],
        "plan": {"chain": "local", "standard": "erc1155", "contract": CREDITS_PLAN, "token_id": 1, "credits": 1,
                 "checkout_url": "https://example.com/buy"},
    }
    svc.update(service)
    return parse_config({
        "listen": "127.0.0.1:0",
        "public_scheme": "http",
        "base_domain": "proxy.localhost",
        # Never dialled: the chain reader is a FakeChain.
        "chains": {"local": {"chain_id": 31337, "rpc_urls": ["http://127.0.0.1:9"], "timeout": "2s"}},
        "tokens": {"own": {"issuer": "https://gateway.test", "signing_key_file": str(signing_key)}, "leeway": "5s"},
        "services": {"elvis": svc},
        # Never opened: the database part below is SQLite in memory.
        "metering": {"ledger": f"sqlite:///{signing_key.parent / 'unused-ledger.db'}"},
    }, {})


def fake_parts(chain: FakeChain, clock: Callable[[], float] = time.time) -> Parts:
    """The real parts but the chain (every configured chain is `chain`), the ledger (in memory)
    and, when given, the wall clock."""
    return Parts(readers=lambda config, _session: {name: chain for name in config.chains},
                 database=lambda _config: SqliteDatabase(":memory:"), clock=clock)


@dataclass
class FakeGateway:
    url: str
    config: GatewayConfig
    app: web.Application
    runtime: Runtime
    chain: FakeChain
    session: aiohttp.ClientSession
    issuer: OwnIssuer

    def token(self, subscriber: str, audience: list[str] | None = None) -> str:
        return self.issuer.issue(subscriber, audience or ["elvis"])

    def request(self, method: str, path: str, *, token: str | None = None, host: str = HOST, **kwargs) -> Any:
        headers = {"Host": host, **({"Authorization": f"Bearer {token}"} if token else {})}
        return self.session.request(method, self.url + path, headers=headers, **kwargs)


@asynccontextmanager
async def fake_gateway(config: GatewayConfig, chain: FakeChain,
                       clock: Callable[[], float] = time.time) -> AsyncIterator[FakeGateway]:
    """The real gateway app on `chain` and an in-memory ledger, served on a free loopback port."""
    app = build_app(config, parts=fake_parts(chain, clock))
    runner = public_runner(app, shutdown_timeout=1.0)
    await runner.setup()
    try:
        await web.TCPSite(runner, "127.0.0.1", 0).start()
        async with aiohttp.ClientSession() as session:
            url = f"http://127.0.0.1:{runner.addresses[0][1]}"
            yield FakeGateway(url, config, app, app[RUNTIME], chain, session, OwnIssuer(config.tokens.own))
    finally:
        await runner.cleanup()
