"""x402 per-call payments: the latency they add over a credits call, and the gas per paid call.

One anvil (automine) with the plan contract and the EIP-3009 `PaymentToken`; the example plugin
and the real `gateway serve` (1 worker, self-facilitated: the operator key submits
`transferWithAuthorization`) as processes on loopback. `POST /query` costs 1 credit or "0.01" token.

The calls alternate, one at a time (concurrency 1): a credits call (a subscriber's token, plan
balance cached after the warm-up) and an x402 call (a `PAYMENT-SIGNATURE` signed beforehand by the
official SDK's client, so the client's signing time is not counted: only the gateway's work is,
i.e. verify (signature, balance, simulation on chain), the durable record, forward, settle (send the
transaction and wait for its receipt), relay). Every x402 answer must be 200 with a successful
`PAYMENT-RESPONSE`; the payee's balance must rise by exactly calls x price. Gas per paid call is
read from each settlement's receipt. Then, in this process, the SDK's facilitator alone (the code
the gateway runs on its threads, on the gateway's signer) verifies and settles `--calls` more payments, timed separately:
where the added latency goes.

    .venv/bin/python bench/x402_payments.py [--calls N] [--json PATH]
"""

from __future__ import annotations

import argparse
import asyncio
import statistics
import sys
import tempfile
import time
from contextlib import ExitStack
from pathlib import Path

REPO = Path(__file__).resolve().parents[1]
if str(REPO) not in sys.path:
    sys.path.insert(0, str(REPO))

import aiohttp  # noqa: E402
import yaml  # noqa: E402
from eth_account import Account  # noqa: E402
from x402 import x402Client  # noqa: E402
from x402.http import decode_payment_response_header, encode_payment_signature_header  # noqa: E402
from x402.mechanisms.evm.exact import register_exact_evm_client  # noqa: E402
from x402.schemas import PaymentPayload, PaymentRequired, PaymentRequirements  # noqa: E402

from bench.latency import Child, machine, publish  # noqa: E402
from gateway.auth.issuer import OwnIssuer, generate_signing_key  # noqa: E402
from gateway.config.load import load_config  # noqa: E402
from gateway.dev.chain import DEV_ACCOUNTS, Anvil, DevChain, free_port  # noqa: E402

OPERATOR_KEY = DEV_ACCOUNTS[0][1]
OWNER, SUBSCRIBER, PAYER, PAYEE = DEV_ACCOUNTS[1][0], DEV_ACCOUNTS[2][0], DEV_ACCOUNTS[5], DEV_ACCOUNTS[6][0]
HOST = "elvis.proxy.localhost"
BODY = {"queries": [{"query": "blue suede"}]}
PRICE = 10_000  # "0.01" of a 6-decimals token


def config(work: Path, port: int, plugin: str, secret: str, rpc: str, plan: str, token: str) -> Path:
    """/query sold for 1 credit or "0.01" per call."""
    return write_config(work, port, rpc, {
        "upstream": plugin, "upstream_auth": {"type": "bearer", "token": secret}, "owner": OWNER,
        "protected_endpoints": [{"endpoint": "POST /query", "credits": 1, "x402": "0.01"}],
        "plan": {"chain": "local", "standard": "erc1155", "contract": plan, "token_id": 1, "credits": 1},
        "x402": {"network": "eip155:31337", "asset": token, "pay_to": PAYEE, "price": "0.01",
                 "extra": {"name": "Demo USD", "version": "1"}},
    })


def write_config(work: Path, port: int, rpc: str, service: dict) -> Path:
    """The benchmark gateway's config file around one service `elvis` (also bench/x402_mcp.py's)."""
    key = work / "own.pem"
    generate_signing_key(key, "ES256")
    data = {
        "listen": f"127.0.0.1:{port}", "public_scheme": "http", "base_domain": "proxy.localhost", "workers": 1,
        "log": {"level": "warning"},
        "chains": {"local": {"chain_id": 31337, "rpc_urls": [rpc], "timeout": "2s"}},
        "tokens": {"own": {"issuer": "https://gateway.test", "signing_key_file": str(key)}},
        "services": {"elvis": service},
        "metering": {"ledger": f"sqlite:///{work / 'ledger.db'}", "operator_key": OPERATOR_KEY, "settle_every": "1h"},
    }
    path = work / "gateway.yaml"
    path.write_text(yaml.safe_dump(data))
    return path


async def payment_payloads(token: str, n: int) -> list[PaymentPayload]:
    """`n` payments of PRICE to PAYEE, signed by PAYER with the official SDK (also bench/x402_mcp.py's)."""
    client = x402Client()
    client.set_spend_controls({"allowed_assets": [{"network": "eip155:31337", "asset": token}]})
    register_exact_evm_client(client, Account.from_key(PAYER[1]))
    offer = PaymentRequirements(scheme="exact", network="eip155:31337", asset=token, amount=str(PRICE), pay_to=PAYEE,
                                max_timeout_seconds=600, extra={"name": "Demo USD", "version": "1"})
    return [await client.create_payment_payload(PaymentRequired(accepts=[offer])) for _ in range(n)]


async def signatures(token: str, n: int) -> list[str]:
    return [encode_payment_signature_header(payload) for payload in await payment_payloads(token, n)]


async def calls(url: str, bearer: str, paid: list[str], warmup: int) -> dict:
    credits_ms, x402_ms, txs = [], [], []
    async with aiohttp.ClientSession(headers={"Host": HOST}) as http:
        for i, signature in enumerate(paid):
            for kind in ("credits", "x402"):
                headers = {"Authorization": f"Bearer {bearer}"} if kind == "credits" else {"PAYMENT-SIGNATURE": signature}
                started = time.perf_counter()
                async with http.post(url, json=BODY, headers=headers) as resp:
                    await resp.read()
                    elapsed = (time.perf_counter() - started) * 1000
                    if resp.status != 200:
                        raise SystemExit(f"{kind} call answered {resp.status}: {await resp.text()}")
                    if kind == "x402":
                        settled = decode_payment_response_header(resp.headers["PAYMENT-RESPONSE"])
                        assert settled.success, settled
                        txs.append(settled.transaction)
                if i >= warmup:
                    (credits_ms if kind == "credits" else x402_ms).append(elapsed)
    return {"credits_ms": credits_ms, "x402_ms": x402_ms, "txs": txs}


async def facilitator_alone(rpc: str, token: str, n: int) -> dict:
    """The SDK's verify and settle, timed one by one (no gateway, no HTTP)."""
    from x402.http import decode_payment_signature_header

    from gateway.x402.facilitators import SelfFacilitator

    scheme = SelfFacilitator(OPERATOR_KEY, rpc).scheme  # the SDK's scheme on the gateway's signer
    offer = PaymentRequirements(scheme="exact", network="eip155:31337", asset=token, amount=str(PRICE), pay_to=PAYEE,
                                max_timeout_seconds=600, extra={"name": "Demo USD", "version": "1"})
    verify_ms, settle_ms = [], []
    for header in await signatures(token, n):
        payload = decode_payment_signature_header(header)
        started = time.perf_counter()
        assert scheme.verify(payload, offer).is_valid
        verify_ms.append((time.perf_counter() - started) * 1000)
        started = time.perf_counter()
        assert scheme.settle(payload, offer).success
        settle_ms.append((time.perf_counter() - started) * 1000)
    return {"verify": summary(verify_ms), "settle": summary(settle_ms)}


def summary(ms: list[float]) -> dict:
    q = statistics.quantiles(ms, n=100)
    return {"p50": statistics.median(ms), "p90": q[89], "p99": q[98], "mean": statistics.fmean(ms)}


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(prog="bench/x402_payments.py")
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
        plugin_port, port = free_port(), free_port()
        plugin = Child([sys.executable, "-m", "examples.song_plugin", "--port", str(plugin_port)],
                       ready=r"listening on", env={"SONG_PLUGIN_TOKEN": secret})
        stack.callback(plugin.stop)
        work = Path(stack.enter_context(tempfile.TemporaryDirectory(prefix="gateway-x402-")))
        path = config(work, port, f"http://127.0.0.1:{plugin_port}", secret, anvil.rpc_url, plan, token)
        bearer = OwnIssuer(load_config(path).tokens.own).issue(SUBSCRIBER, ["elvis"])
        gateway = Child([sys.executable, "-m", "gateway", "serve", "--config", str(path)], port=port)
        stack.callback(gateway.stop)
        paid = asyncio.run(signatures(token, args.calls + args.warmup))
        result = asyncio.run(calls(f"http://127.0.0.1:{port}/query", bearer, paid, args.warmup))
        received = chain.token_balance(token, PAYEE)
        if received != PRICE * len(paid):
            raise SystemExit(f"payee received {received}, expected {PRICE * len(paid)}")
        gas = [chain.w3.eth.get_transaction_receipt(tx)["gasUsed"] for tx in result["txs"]]
        gateway.stop()
        alone = asyncio.run(facilitator_alone(anvil.rpc_url, token, args.calls))
    info |= {"loadavg_after": Path("/proc/loadavg").read_text().split()[:3]}
    credits, x402 = summary(result["credits_ms"]), summary(result["x402_ms"])
    report = {"calls": args.calls, "credits": credits, "x402": x402, "added_p50_ms": x402["p50"] - credits["p50"],
              "gas_per_paid_call": {"min": min(gas), "median": statistics.median(gas), "max": max(gas)},
              "payee_received": received, "sdk_facilitator_alone": alone, "machine": info}
    rows = [f"| {name} | {s['p50']:.2f} | {s['p90']:.2f} | {s['p99']:.2f} | {s['mean']:.2f} |"
            for name, s in (("credits call (token, plan cached)", credits), ("x402 call (self-facilitated)", x402))]
    text = "\n".join([
        f"`POST /query`, {args.calls} calls of each kind alternating at concurrency 1 (after {args.warmup} warm-up pairs):",
        "", "| call | p50 ms | p90 ms | p99 ms | mean ms |", "|---|---:|---:|---:|---:|", *rows, "",
        f"added p50 of an x402 call over a credits call: +{report['added_p50_ms']:.2f} ms; "
        f"gas per paid call (transferWithAuthorization): {report['gas_per_paid_call']['median']:,.0f} "
        f"(min {min(gas):,}, max {max(gas):,}); payee received {received:,} = calls x price.", "",
        f"The SDK's facilitator alone, in-process ({args.calls} payments): verify p50 {alone['verify']['p50']:.2f} ms "
        f"(p90 {alone['verify']['p90']:.2f}), settle p50 {alone['settle']['p50']:.2f} ms "
        f"(p90 {alone['settle']['p90']:.2f}): signature check, eth_getCode, balance and simulation (eth_call); "
        "then re-verify, send, receipt."])
    return publish(report, text, info, args.json)


if __name__ == "__main__":
    raise SystemExit(main())
