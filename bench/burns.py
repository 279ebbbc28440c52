"""Burns on chain: the gateway's batched settlement next to one burn transaction per call.

For `--calls` protected calls (default 1000) from `--subscribers` subscribers (default 10), on one
anvil with one `CreditsPlan` (token id 1, every subscriber minted `--credits` credits):

1. **Gateway (batched).** The example plugin and the real `gateway serve` run as processes on
   loopback. Metering is on, with the operator key = anvil dev account 0 (it holds the burner
   role) and `settle_every` 1h, so nothing settles by itself. Each subscriber gets a token from
   `OwnIssuer` with the config's key. The calls go through the gateway as `POST /query` (1 credit
   each), round-robin over the subscribers, with `--concurrency` (default 16) in flight on one
   aiohttp session. Then one `POST /settle` on the admin port. The gas comes from the receipt of
   every settlement transaction in its report.
2. **Per call (the stack we replace).** The chain is reverted to a snapshot taken before step 1.
   Then the operator sends one `burnCredits(subscriber, 1, 1)` per call, sequentially: sign,
   send, wait for the receipt, next. This is what the Nevermined burner does.

Both phases check on chain that each subscriber's balance dropped by exactly the number of
calls it made. Any answer other than 200 stops the run, as does a mismatch, a failed or refused
settlement, or a shortfall. The run exits 1 and prints the details.

    .venv/bin/python bench/burns.py [--calls N] [--subscribers S] [--concurrency C] [--json PATH]

anvil automines: a receipt exists as soon as its transaction is accepted. So the wall times here
are RPC and signing time, not block time.
"""

from __future__ import annotations

import argparse
import asyncio
import datetime as dt
import json
import os
import statistics
import sys
import tempfile
import time
import urllib.request
from contextlib import ExitStack
from pathlib import Path

REPO = Path(__file__).resolve().parents[1]
if str(REPO) not in sys.path:  # `python bench/burns.py` puts bench/, not the repo, on the path
    sys.path.insert(0, str(REPO))

import aiohttp  # noqa: E402
from eth_account import Account  # noqa: E402

from bench.latency import QUERY_BODY, TOKEN_ID, Child, machine, publish  # noqa: E402
from gateway.config.load import load_config  # noqa: E402
from gateway.dev.demo import HOST  # noqa: E402
from gateway.dev.chain import DEV_ACCOUNTS, Anvil, DevChain, free_port  # noqa: E402
from gateway.auth.issuer import OwnIssuer, generate_signing_key  # noqa: E402

OPERATOR, OPERATOR_KEY = DEV_ACCOUNTS[0]
CONFIG = REPO / "config" / "gateway.yaml"
FIRST_DEV_SUBSCRIBER = 2  # dev account 1 is the service owner (config/gateway.yaml): owners are never charged


class BenchFailed(Exception):
    """The gateway or the chain did something wrong: the run stops and reports it."""


def subscribers(n: int) -> list[str]:
    """Dev accounts 2.. first, then fresh addresses. They only hold credits and never sign."""
    dev = [addr for addr, _ in DEV_ACCOUNTS[FIRST_DEV_SUBSCRIBER:FIRST_DEV_SUBSCRIBER + n]]
    return dev + [Account.create().address for _ in range(n - len(dev))]


def balances(chain: DevChain, plan: str, subs: list[str]) -> dict[str, int]:
    return {s: chain.credits_of(plan, s, TOKEN_ID) for s in subs}


def check_drop(phase: str, before: dict[str, int], after: dict[str, int], expected: dict[str, int]) -> None:
    wrong = {s: {"before": before[s], "after": after[s], "dropped": before[s] - after[s], "expected": expected[s]}
             for s in before if before[s] - after[s] != expected[s]}
    if wrong:
        raise BenchFailed(f"{phase}: on-chain balances did not drop by the calls made:\n"
                          + json.dumps(wrong, indent=2))


def gas_summary(gas: list[int]) -> dict:
    return {"min": min(gas), "median": statistics.median(gas), "max": max(gas)} if gas else {}


# --- 1. the gateway, batched -----------------------------------------------------------------------

async def send_calls(url: str, tokens: list[str], calls: int, concurrency: int) -> dict:
    """`calls` POST /query round-robin over the subscribers' tokens, `concurrency` in flight."""
    next_call = 0
    charged_seen = [0] * len(tokens)

    async def worker(session: aiohttp.ClientSession) -> None:
        nonlocal next_call
        while next_call < calls:
            i = next_call
            next_call += 1
            k = i % len(tokens)
            headers = {"Host": HOST, "Authorization": f"Bearer {tokens[k]}", "Content-Type": "application/json"}
            async with session.post(url + "/query", headers=headers, data=QUERY_BODY) as resp:
                body = await resp.read()
            if resp.status != 200 or resp.headers.get("X-Credits-Charged") != "1":
                raise BenchFailed(f"call {i} (subscriber #{k}): POST /query -> {resp.status}\n"
                                  f"headers: {dict(resp.headers)}\nbody: {body.decode(errors='replace')[:2000]}")
            charged_seen[k] += 1

    t0 = time.perf_counter()
    async with aiohttp.ClientSession(connector=aiohttp.TCPConnector(limit=concurrency)) as session:
        await asyncio.gather(*(worker(session) for _ in range(min(concurrency, calls))))
    return {"seconds": time.perf_counter() - t0, "charged_seen": charged_seen}


def post_settle(admin_port: int) -> tuple[dict, float]:
    req = urllib.request.Request(f"http://127.0.0.1:{admin_port}/settle", data=b"", method="POST")
    t0 = time.perf_counter()
    with urllib.request.urlopen(req, timeout=300) as resp:
        report = json.loads(resp.read())
    return report, time.perf_counter() - t0


def gateway_phase(stack: ExitStack, anvil: Anvil, chain: DevChain, plan: str, subs: list[str],
                  args: argparse.Namespace) -> dict:
    secret = "bench-" + Account.create().key.hex()[:24]
    plugin_port = free_port()
    plugin = Child([sys.executable, "-m", "examples.song_plugin", "--port", str(plugin_port)],
                   ready=r"listening on", env={"SONG_PLUGIN_TOKEN": secret})
    stack.callback(plugin.stop)

    work = Path(stack.enter_context(tempfile.TemporaryDirectory(prefix="gateway-burns-")))
    key_file = work / "signing-key.pem"
    generate_signing_key(key_file, "ES256")
    port, admin_port = free_port(), free_port()
    env = {
        "GATEWAY_LISTEN": f"127.0.0.1:{port}", "GATEWAY_ADMIN_LISTEN": f"127.0.0.1:{admin_port}",
        "GATEWAY_SIGNING_KEY_FILE": str(key_file), "CHAIN_RPC_URL": anvil.rpc_url, "PLAN_CONTRACT": plan,
        "GATEWAY_STATE_DIR": str(work), "GATEWAY_OPERATOR_KEY": OPERATOR_KEY, "GATEWAY_SETTLE_EVERY": "1h",
        "ELVIS_UPSTREAM": f"http://127.0.0.1:{plugin_port}", "ELVIS_UPSTREAM_TOKEN": secret,
        "GATEWAY_WORKERS": "1", "GATEWAY_LOG_LEVEL": args.gateway_log_level,
    }
    config = load_config(CONFIG, {**os.environ, **env})
    issuer = OwnIssuer(config.tokens.own)
    tokens = [issuer.issue(s, ["elvis"]) for s in subs]
    gateway = Child([sys.executable, "-m", "gateway", "serve", "--config", str(CONFIG)], port=port, env=env)
    stack.callback(gateway.stop)
    try:
        before = balances(chain, plan, subs)
        calls = asyncio.run(send_calls(f"http://127.0.0.1:{port}", tokens, args.calls, args.concurrency))
        expected = dict(zip(subs, calls["charged_seen"]))
        # Nothing may be burned before the settlement (settle_every is 1h).
        if balances(chain, plan, subs) != before:
            raise BenchFailed("balances changed before POST /settle")
        report, settle_s = post_settle(admin_port)
        if report["failed"] or report["refused"] or report["shortfalls"] or set(report["sent"]) != set(report["confirmed"]):
            raise BenchFailed(f"settlement report not clean: {json.dumps(report, indent=2)}")
        after = balances(chain, plan, subs)
        check_drop("gateway (batched)", before, after, expected)
    except BaseException:
        print("gateway output (last 30 lines):\n" + "\n".join(gateway.lines[-30:]), file=sys.stderr)
        raise

    receipts = []
    for tx in report["confirmed"]:
        r = chain.w3.eth.get_transaction_receipt(tx)
        if r["status"] != 1 or r["from"].lower() != OPERATOR.lower() or r["to"].lower() != plan.lower():
            raise BenchFailed(f"unexpected settlement receipt {tx}: {dict(r)}")
        receipts.append({"tx": tx, "gas_used": r["gasUsed"], "block": r["blockNumber"]})

    # The gateway settles on shutdown too: with nothing pending, stopping it must burn nothing more.
    gateway_rc = gateway.stop()
    plugin.stop()
    if balances(chain, plan, subs) != after:
        raise BenchFailed("balances changed when the gateway stopped (a second burn?)")
    gas = [r["gas_used"] for r in receipts]
    return {
        "transactions": len(receipts), "total_gas": sum(gas), "gas_per_call": sum(gas) / args.calls,
        "gas_per_tx": gas_summary(gas), "burn_seconds": settle_s, "calls_seconds": calls["seconds"],
        "calls_per_s": args.calls / calls["seconds"], "calls_per_subscriber": calls["charged_seen"],
        "balances_before": before, "balances_after": after, "settle_report": report, "receipts": receipts,
        "gateway_exit_code": gateway_rc, "gateway_output_lines": gateway.lines[-20:],
    }


# --- 2. one burn transaction per call ---------------------------------------------------------------

def per_call_phase(chain: DevChain, plan: str, subs: list[str], expected: dict[str, int], calls: int) -> dict:
    """One burnCredits(subscriber, 1, 1) per call, in the same round-robin order, sequentially."""
    before = balances(chain, plan, subs)
    gas: list[int] = []
    blocks: list[int] = []
    t0 = time.perf_counter()
    for i in range(calls):
        receipt = chain.transact(plan, "CreditsPlan", "burnCredits", subs[i % len(subs)], TOKEN_ID, 1,
                                 sender_key=OPERATOR_KEY)  # estimate, sign, send, wait for the receipt
        gas.append(receipt["gasUsed"])
        blocks.append(receipt["blockNumber"])
    seconds = time.perf_counter() - t0
    after = balances(chain, plan, subs)
    check_drop("per call", before, after, expected)
    return {
        "transactions": len(gas), "total_gas": sum(gas), "gas_per_call": sum(gas) / calls,
        "gas_per_tx": gas_summary(gas), "distinct_gas_values": sorted(set(gas)), "burn_seconds": seconds,
        "blocks": [min(blocks), max(blocks)] if blocks else [], "balances_before": before, "balances_after": after,
    }


# --- reporting ---------------------------------------------------------------------------------------

def table(r: dict, args: argparse.Namespace) -> str:
    b, p = r["batched"], r["per_call"]
    lines = [
        f"{args.calls} protected calls (POST /query, 1 credit) from {args.subscribers} subscribers, "
        f"anvil (automine):",
        f"{'':28}{'transactions':>13}{'total gas':>13}{'gas/call':>10}{'burn wall (s)':>15}",
        f"{'gateway (batched)':28}{b['transactions']:13d}{b['total_gas']:13,d}{b['gas_per_call']:10.0f}"
        f"{b['burn_seconds']:15.3f}",
        f"{'one burn tx per call':28}{p['transactions']:13d}{p['total_gas']:13,d}{p['gas_per_call']:10.0f}"
        f"{p['burn_seconds']:15.3f}",
        f"{'ratio batched / per call':28}{r['ratios']['transactions']:13.4f}{r['ratios']['total_gas']:13.4f}"
        f"{r['ratios']['gas_per_call']:10.4f}{r['ratios']['burn_seconds']:15.4f}",
        "",
        f"gas per transaction: batched {b['gas_per_tx']['min']:,}..{b['gas_per_tx']['max']:,}, "
        f"per call {p['gas_per_tx']['min']:,}..{p['gas_per_tx']['max']:,}",
        f"calls through the gateway: {b['calls_seconds']:.2f} s ({b['calls_per_s']:.0f} req/s at concurrency "
        f"{args.concurrency}); settlement = one POST /settle",
    ]
    return "\n".join(lines)


def parse_args(argv: list[str] | None = None) -> argparse.Namespace:
    p = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    p.add_argument("--calls", type=int, default=1000)
    p.add_argument("--subscribers", type=int, default=10)
    p.add_argument("--concurrency", type=int, default=16, help="calls in flight through the gateway")
    p.add_argument("--credits", type=int, default=None,
                   help="credits minted to each subscriber (default: 10x its calls, so no balance reaches 0)")
    p.add_argument("--gateway-log-level", default="warning")
    p.add_argument("--json", type=Path, default=None, help="write the results here")
    args = p.parse_args(argv)
    if args.calls < 1 or args.subscribers < 1 or args.concurrency < 1:
        p.error("--calls, --subscribers and --concurrency must be >= 1")
    per_sub = -(-args.calls // args.subscribers)
    args.credits = args.credits if args.credits is not None else 10 * per_sub
    if args.credits <= per_sub:
        p.error(f"--credits must exceed the calls per subscriber ({per_sub}): a balance burned to 0 "
                "costs different gas (storage refund)")
    return args


def main(argv: list[str] | None = None) -> int:
    args = parse_args(argv)
    info = machine()
    started = dt.datetime.now(dt.timezone.utc)
    subs = subscribers(args.subscribers)
    with ExitStack() as stack:
        anvil = stack.enter_context(Anvil())
        chain = DevChain(anvil.rpc_url)
        plan = chain.deploy_credits_plan()  # the admin, dev account 0, holds the burner role
        for s in subs:
            chain.mint_credits(plan, s, TOKEN_ID, args.credits)
        snap = chain.snapshot()
        print(f"anvil {anvil.rpc_url}, plan {plan}, {args.subscribers} subscribers x {args.credits} credits; "
              f"{args.calls} calls at concurrency {args.concurrency}", flush=True)
        try:
            batched = gateway_phase(stack, anvil, chain, plan, subs, args)
            print(f"batched: {batched['transactions']} transactions, {batched['total_gas']:,} gas", flush=True)
            chain.revert(snap)
            if any(v != args.credits for v in balances(chain, plan, subs).values()):
                raise BenchFailed("revert to the snapshot did not restore the minted balances")
            expected = dict(zip(subs, batched["calls_per_subscriber"]))
            per_call = per_call_phase(chain, plan, subs, expected, args.calls)
        except BenchFailed as exc:
            print(f"\nSTOPPED: {exc}", file=sys.stderr)
            return 1
    info["loadavg_after"] = Path("/proc/loadavg").read_text().split()[:3]
    ratios = {k: batched[k] / per_call[k] for k in ("transactions", "total_gas", "gas_per_call", "burn_seconds")}
    result = {"batched": batched, "per_call": per_call, "ratios": ratios}
    report = {
        "benchmark": "burns: batched settlement vs one transaction per call (bench/burns.py)",
        "started_utc": started.isoformat(timespec="seconds"),
        "command": " ".join([Path(sys.executable).name, *sys.argv]),
        "params": {k: (str(v) if isinstance(v, Path) else v) for k, v in vars(args).items()},
        "chain": {"node": "anvil (automine)", "plan": plan, "token_id": TOKEN_ID, "operator": OPERATOR,
                  "subscribers": subs},
        "machine": info, **result,
    }
    return publish(report, table(result, args), info, args.json)


if __name__ == "__main__":
    sys.exit(main())
