"""The real stack the integration tests run against, as plain helpers (the fixtures that start it
live in tests/conftest.py): the dev accounts' roles, a config for service `elvis` in front of the
example plugin, the example servers as processes, and a client for a gateway on a free port."""

from __future__ import annotations

import secrets
import sys
from contextlib import contextmanager
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import aiohttp
import jwt
from aiohttp import web
from yarl import URL

from gateway.app import build_app, public_runner
from gateway.auth.issuer import OwnIssuer, load_private_key
from gateway.config.load import parse_config
from gateway.config.model import GatewayConfig
from gateway.dev.chain import DEV_ACCOUNTS, Anvil, DevChain
from gateway.dev.process import ChildProcess

__all__ = ["DEV_ACCOUNTS", "OWNER", "SUBSCRIBER", "BROKE", "PASS_HOLDER", "HOST", "START_CREDITS", "Chain", "Plugin",
           "example_server", "base_config", "Gateway", "start_gateway"]


OWNER = DEV_ACCOUNTS[1][0]
SUBSCRIBER = DEV_ACCOUNTS[2][0]   # holds credits
BROKE = DEV_ACCOUNTS[3][0]        # holds nothing
PASS_HOLDER = DEV_ACCOUNTS[4][0]  # holds an ERC-721 pass
HOST = "elvis.proxy.localhost"
START_CREDITS = 5


@dataclass
class Chain:
    anvil: Anvil
    dev: DevChain
    credits_plan: str
    access_pass: str

    @property
    def rpc_url(self) -> str:
        return self.anvil.rpc_url


@dataclass
class Plugin:
    url: str
    secret: str


@contextmanager
def example_server(module: str, token_env: str, ready: str = r"listening on (http://[^/\s]+)"):
    """One of the examples as a real process on a free port, with a fresh owner secret."""
    secret = secrets.token_urlsafe(24)
    child = ChildProcess([sys.executable, "-m", module, "--port", "0"], ready=ready, env={token_env: secret})
    try:
        yield Plugin(child.ready_match.group(1), secret)
    finally:
        child.stop()


def base_config(chain: Chain | None, plugin: Plugin | None, signing_key: Path, **service: Any) -> dict:
    """A config dict for one service `elvis` in front of the example plugin."""
    svc: dict[str, Any] = {
        "upstream": plugin.url if plugin else "http://127.0.0.1:9",
        "upstream_auth": {"type": "bearer", "token": plugin.secret if plugin else "x"},
        "owner": OWNER,
        "open_endpoints": ["GET /health", "GET /status/:code"],
        "protected_endpoints": [
            "POST /query", {"endpoint": "POST /ask", "credits": 2}, "GET /stream", "GET /ws", "GET /debug/requests",
        ],
        "plan": {"chain": "local", "standard": "erc1155", "contract": chain.credits_plan if chain else OWNER,
                 "token_id": 1, "credits": 1, "checkout_url": "https://example.com/buy"},
    }
    svc.update(service)
    return {
        "listen": "127.0.0.1:0",
        "public_scheme": "http",
        "base_domain": "proxy.localhost",
        "chains": {"local": {"chain_id": 31337, "rpc_urls": [chain.rpc_url if chain else "http://127.0.0.1:9"],
                             "timeout": "2s"}},
        "tokens": {"own": {"issuer": "https://gateway.test", "signing_key_file": str(signing_key)}, "leeway": "5s"},
        "services": {"elvis": svc},
        "metering": {"ledger": f"sqlite:///{signing_key.parent / ('ledger-' + secrets.token_hex(4) + '.db')}"},
    }


@dataclass
class Gateway:
    url: str
    config: GatewayConfig
    app: web.Application
    session: aiohttp.ClientSession
    issuer: OwnIssuer
    log: list = field(default_factory=list)

    def token(self, subscriber: str, audience: list[str] | None = None, ttl: float | None = None) -> str:
        return self.issuer.issue(subscriber, audience or ["elvis"], ttl=ttl)

    def sign(self, claims: dict, headers: dict | None = None) -> str:
        """A token with arbitrary claims, signed by the gateway's own key."""
        key = load_private_key(self.config.tokens.own.signing_key_file)
        return jwt.encode(claims, key, algorithm=self.issuer.algorithm, headers={"kid": self.issuer.kid, **(headers or {})})

    def request(self, method: str, path: str, *, token: str | None = None, host: str = HOST,
                headers: dict | None = None, **kwargs) -> Any:
        h = {"Host": host, **(headers or {})}
        if token:
            h["Authorization"] = f"Bearer {token}"
        # encoded=True: send the path exactly as written (no client-side dot-segment cleanup).
        return self.session.request(method, URL(self.url + path, encoded=True), headers=h, **kwargs)


async def start_gateway(data: dict) -> tuple[web.AppRunner, GatewayConfig]:
    config = parse_config(data, {})
    app = build_app(config)
    runner = public_runner(app)
    await runner.setup()
    await web.TCPSite(runner, "127.0.0.1", 0).start()
    return runner, config
