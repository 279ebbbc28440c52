"""x402 inside MCP tool calls: the latency a paid `tools/call` adds over a credits one.

One anvil (automine) with the plan contract and the EIP-3009 `PaymentToken`; the example Song tools
MCP server and the real `gateway serve` (1 worker, self-facilitated) as processes on loopback. The
tool `search` costs 1 credit or "0.01" token. The calls alternate, one at a time: a credits call (a
subscriber's token) and a paid call (`params._meta["x402/payment"]`, signed beforehand by the
official SDK's client: only the gateway's work is timed: read the body, verify, record, forward
without the payment, read the server's SSE answer to its result, settle (send + receipt), rewrite
the result with `_meta["x402/payment-response"]`). Every paid answer must carry a successful
settlement; the payee's balance must rise by exactly calls x price.

    .venv/bin/python bench/x402_mcp.py [--calls N] [--json PATH]
"""

from __future__ import annotations

import argparse
import asyncio
import json
import sys
import tempfile
import time
from contextlib import ExitStack
from pathlib import Path

REPO = Path(__file__).resolve().parents[1]
if str(REPO) not in sys.path:
    sys.path.insert(0, str(REPO))

import aiohttp  # noqa: E402
from eth_account import Account  # noqa: E402

from bench.latency import Child, machine, publish  # noqa: E402
from bench.x402_payments import (HOST, OWNER, PAYEE, PAYER, PRICE, SUBSCRIBER, payment_payloads, summary,  # noqa: E402
                                write_config)
from gateway.auth.issuer import OwnIssuer  # noqa: E402
from gateway.config.load import load_config  # noqa: E402
from gateway.dev.chain import Anvil, DevChain, free_port  # noqa: E402

ACCEPT = "application/json, text/event-stream"


def config(work: Path, port: int, upstream: str, secret: str, rpc: str, plan: str, token: str) -> Path:
    """The MCP tool `search` sold for 1 credit or "0.01" per call."""
    return write_config(work, port, rpc, {
        "upstream": upstream, "upstream_auth": {"type": "bearer", "token": secret}, "owner": OWNER,
        "mcp": {"path": "/mcp", "tools": {"search": {"credits": 1, "x402": "0.01"}}},
        "plan": {"chain": "local", "standard": "erc1155", "contract": plan, "token_id": 1, "credits": 1},
        "x402": {"network": "eip155:31337", "asset": token, "pay_to": PAYEE,
                 "extra": {"name": "Demo USD", "version": "1"}},
    })


async def payments(token: str, n: int) -> list[dict]:
    return [payload.model_dump(by_alias=True, exclude_none=True) for payload in await payment_payloads(token, n)]


def result_of(body: bytes) -> dict:
    """The JSON-RPC result in an SSE answer (the server's stateless default)."""
    (data,) = [line[5:].strip() for line in body.decode().splitlines() if line.startswith("data:")]
    return json.loads(data)["result"]


async def calls(url: str, bearer: str, paid: list[dict], warmup: int) -> dict:
    credits_ms, x402_ms = [], []
    async with aiohttp.ClientSession(headers={"Host": HOST, "Accept": ACCEPT}) as http:
        for i, payment in enumerate(paid):
            for kind in ("credits", "x402"):
                params = {"name": "search", "arguments": {"query": "blue highway"}}
                headers = {"Authorization": f"Bearer {bearer}"} if kind == "credits" else {}
                if kind == "x402":
                    params["_meta"] = {"x402/payment": payment}
                message = {"jsonrpc": "2.0", "id": i, "method": "tools/call", "params": params}
                started = time.perf_counter()
                async with http.post(url, json=message, headers=headers) as resp:
                    body = await resp.read()
                    elapsed = (time.perf_counter() - started) * 1000
                result = result_of(body) if resp.status == 200 else {}
                if resp.status != 200 or result.get("isError"):
                    raise SystemExit(f"{kind} call answered {resp.status}: {body[:500]!r}")
                if kind == "x402" and not result["_meta"]["x402/payment-response"]["success"]:
                    raise SystemExit(f"not settled: {result['_meta']}")
                if i >= warmup:
                    (credits_ms if kind == "credits" else x402_ms).append(elapsed)
    return {"credits_ms": credits_ms, "x402_ms": x402_ms}


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(prog="bench/x402_mcp.py")
    parser.add_argument("--calls", type=int, default=200)
    parser.add_argument("--warmup", type=int, default=10)
    parser.add_argument("--json", type=Path)
    args = parser.parse_args(argv)
    info = machine()
    with ExitStack() as stack:
        anvil = stack.enter_context(Anvil())
        chain = DevChain(anvil.rpc_url)
        plan, token = chain.deploy_credits_plan(), chain.deploy_payment_token()
        chain.mint_credits(plan, SUBSCRIBER, 1, 10**9)
        chain.mint_tokens(token, PAYER[0], 10**12)
        secret = "bench-" + Account.create().key.hex()[:24]
        server = Child([sys.executable, "-m", "examples.song_mcp", "--port", "0"],
                       ready=r"listening on (http://[^/\s]+)", env={"SONG_MCP_TOKEN": secret})
        stack.callback(server.stop)
        port = free_port()
        work = Path(stack.enter_context(tempfile.TemporaryDirectory(prefix="gateway-x402-mcp-")))
        path = config(work, port, server.ready_match.group(1), secret, anvil.rpc_url, plan, token)
        bearer = OwnIssuer(load_config(path).tokens.own).issue(SUBSCRIBER, ["elvis"])
        gateway = Child([sys.executable, "-m", "gateway", "serve", "--config", str(path)], port=port)
        stack.callback(gateway.stop)
        paid = asyncio.run(payments(token, args.calls + args.warmup))
        result = asyncio.run(calls(f"http://127.0.0.1:{port}/mcp", bearer, paid, args.warmup))
        received = chain.token_balance(token, PAYEE)
        if received != PRICE * len(paid):
            raise SystemExit(f"payee received {received}, expected {PRICE * len(paid)}")
    info |= {"loadavg_after": Path("/proc/loadavg").read_text().split()[:3]}
    credits, x402 = summary(result["credits_ms"]), summary(result["x402_ms"])
    report = {"calls": args.calls, "credits": credits, "x402": x402, "added_p50_ms": x402["p50"] - credits["p50"],
              "payee_received": received, "machine": info}
    rows = [f"| {name} | {s['p50']:.2f} | {s['p90']:.2f} | {s['p99']:.2f} | {s['mean']:.2f} |"
            for name, s in (("MCP tools/call, credits (token)", credits),
                            ("MCP tools/call, x402 in _meta (self-facilitated)", x402))]
    text = "\n".join([
        f"MCP `tools/call` of `search` (SSE answer), {args.calls} calls of each kind alternating at concurrency 1 "
        f"(after {args.warmup} warm-up pairs):",
        "", "| call | p50 ms | p90 ms | p99 ms | mean ms |", "|---|---:|---:|---:|---:|", *rows, "",
        f"added p50 of a paid tool call over a credits one: +{report['added_p50_ms']:.2f} ms; "
        f"payee received {received:,} = calls x price."])
    return publish(report, text, info, args.json)


if __name__ == "__main__":
    raise SystemExit(main())
