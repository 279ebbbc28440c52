"""`ChainReader`: the small interface the rest of the gateway reads a chain through.

Plan checks, sign-in (EIP-1271), settlement and the admin probes use only these members of
`JsonRpcClient` (the real one, in `rpc`); tests give the gateway a fake with the same members
(`tests/support/fakes.py`), so the request path runs without a node.
"""

from __future__ import annotations

from typing import Any, Mapping, Protocol

import aiohttp

from gateway.chain.rpc import JsonRpcClient
from gateway.config.model import GatewayConfig


class ChainReader(Protocol):
    """One chain: raw JSON-RPC calls and `eth_call`, raising `ChainUnavailable` when no node answers
    and `RpcError` when the node answers with an error; `last_success` feeds /metrics (the real
    client also reports each call to /metrics as it happens, through its `on_call`)."""

    last_success: float | None  # monotonic time of the last answer, None before the first
    stats: dict[tuple[str, str], int]  # (redacted URL, outcome) -> count

    async def request(self, method: str, params: list) -> Any: ...

    async def eth_call(self, to: str, data: bytes, block: str = "latest") -> bytes: ...


def rpc_readers(config: GatewayConfig, session: aiohttp.ClientSession) -> Mapping[str, ChainReader]:
    """The real readers: one `JsonRpcClient` per configured chain, all on the shared RPC session."""
    return {name: JsonRpcClient(chain, session) for name, chain in config.chains.items()}
