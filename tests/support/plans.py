"""Plan checks over JSON-RPC: two subscriber addresses, the plan cache settings, a chain config for given
RPC URLs and a loopback URL nothing listens on."""

from __future__ import annotations

import socket

from gateway.config.model import ChainConfig, PlanCacheConfig


ALICE = "0x70997970C51812dc3A010C7d01b50e0d17dc79C8"
BOB = "0x3C44CdDdB6a900fa2b585dd299e03d12FA4293BC"
CACHE = PlanCacheConfig(ttl=10.0, negative_ttl=2.0, stale_if_error=0.0, size=1000)


def closed_port_url() -> str:
    with socket.socket() as sock:
        sock.bind(("127.0.0.1", 0))
        port = sock.getsockname()[1]
    return f"http://127.0.0.1:{port}/"


def chain_of(*urls: str, timeout: float = 2.0) -> ChainConfig:
    return ChainConfig(name="dev", chain_id=31337, rpc_urls=urls, timeout=timeout)
