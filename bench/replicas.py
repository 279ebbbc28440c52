"""Replicas on one PostgreSQL ledger next to one gateway on SQLite, measured in one run (issue 12).

Three measurements, on 127.0.0.1 only, with a throwaway PostgreSQL cluster (Debian's server
binaries, as the tests use: `scripts/install-postgres`), anvil and an nginx upstream:

(a) **Ledger operations**, in-process: `--tasks` concurrent tasks (default 64), each on its own
    account, each doing reserve + charge in a loop for `--seconds`; the SQLite ledger (one file,
    `synchronous=FULL`) and the PostgreSQL ledger (one pool, `synchronous_commit=on`), alternating
    A B B A. Reports pairs/s and the p50/p99 of one reserve + charge.
(b) **Protected-call throughput**: one `gateway serve` on SQLite with 2 workers, against 2
    replicas (`gateway serve`, 1 worker each, the same CPU budget) on one PostgreSQL, each behind
    wrk (`-c64` on the single gateway, `-c32` on each replica at once, the replicas' req/s summed),
    `--rounds` rounds alternating. Each call verifies a token (64 subscribers rotating), checks the
    plan (cached) and reserves + charges one credit.
(c) **Settler hand-over**: two replicas with `settle_every: 1s`; the lease holder is killed with
    SIGKILL; the time until the other logs `settler_lease_taken`.

    .venv/bin/python bench/replicas.py [--seconds 10] [--rounds 3] [--json bench/results/replicas-<time>.json]
"""

from __future__ import annotations

import argparse
import asyncio
import json
import os
import signal
import statistics
import subprocess
import sys
import tempfile
import threading
import time
from contextlib import ExitStack
from pathlib import Path

REPO = Path(__file__).resolve().parents[1]
if str(REPO) not in sys.path:
    sys.path.insert(0, str(REPO))

from bench.suite import (CREDITS, HOST, PAID_PATH, Gateway, Nginx, UPSTREAM_BODY, gateway_config,  # noqa: E402
                         issue_tokens, mint_many, parse_wrk, subscriber_addresses, BENCH)
from gateway.auth.issuer import generate_signing_key  # noqa: E402
from gateway.dev.chain import Anvil, DevChain  # noqa: E402
from gateway.ledger import Account  # noqa: E402
from gateway.ledger.backends import ledger_on, open_database  # noqa: E402
from tests.support.postgres import PostgresServer, server_binaries  # noqa: E402


# --- (a) ledger operations ---------------------------------------------------------------------------

async def ledger_pairs(url: str, tasks: int, seconds: float) -> dict:
    db = open_database(url, pool_size=20)
    ledger = ledger_on(db)
    await ledger.open()
    latencies: list[float] = []
    stop = time.perf_counter() + seconds

    async def one(k: int) -> None:
        account = Account(31337, "0x" + "ab" * 20, 1, f"0x{k:040x}")
        n = 0
        while time.perf_counter() < stop:
            t0 = time.perf_counter()
            held = await ledger.reserve(account, "bench", 1, 10**12, time.time(), f"r{k}-{n}", 60)
            await ledger.charge(held, 1, 10**12, time.time())
            latencies.append(time.perf_counter() - t0)
            n += 1

    t0 = time.perf_counter()
    await asyncio.gather(*(one(k) for k in range(tasks)))
    elapsed = time.perf_counter() - t0
    await db.close()
    latencies.sort()
    return {"pairs_per_s": len(latencies) / elapsed, "p50_ms": 1000 * latencies[len(latencies) // 2],
            "p99_ms": 1000 * latencies[int(len(latencies) * 0.99)], "pairs": len(latencies)}


def ledger_ops(server: PostgresServer, work: Path, tasks: int, seconds: float, log) -> dict:
    runs: dict[str, list[dict]] = {"sqlite": [], "postgresql": []}
    for i, name in enumerate(("sqlite", "postgresql", "postgresql", "sqlite")):
        url = f"sqlite:///{work}/ops-{i}.db" if name == "sqlite" else server.new_database()
        res = asyncio.run(ledger_pairs(url, tasks, seconds))
        runs[name].append(res)
        log(f"  ledger {name:<10} {res['pairs_per_s']:>8.0f} reserve+charge/s  p50 {res['p50_ms']:.2f} ms"
            f"  p99 {res['p99_ms']:.2f} ms")
    return {name: {k: statistics.mean(r[k] for r in rs) for k in ("pairs_per_s", "p50_ms", "p99_ms")}
            for name, rs in runs.items()}


# --- (b) throughput ----------------------------------------------------------------------------------

def wrk(url: str, connections: int, seconds: float, tokens: Path) -> dict:
    cmd = ["wrk", "-t1", f"-c{connections}", f"-d{seconds:g}s", "--latency", "--timeout", "10s",
           "-s", str(BENCH / "wrk" / "tokens.lua"), url, "--", str(tokens), HOST]
    out = subprocess.run(cmd, capture_output=True, text=True, timeout=seconds + 60)
    res = parse_wrk(out.stdout)
    if not res["requests"] or res["non_2xx"]:
        raise RuntimeError(f"wrk {url}: {out.stdout}\n{out.stderr}")
    return res


def wrk_together(urls: list[str], connections: int, seconds: float, tokens: Path) -> dict:
    """One wrk per URL at the same time; req/s summed, latency percentiles the worst of them."""
    results: list[dict] = [None] * len(urls)  # type: ignore[list-item]
    threads = [threading.Thread(target=lambda i=i, u=u: results.__setitem__(i, wrk(u, connections, seconds, tokens)))
               for i, u in enumerate(urls)]
    for t in threads:
        t.start()
    for t in threads:
        t.join()
    return {"rps": sum(r["rps"] for r in results), "p50_ms": max(r["p50_ms"] for r in results),
            "p99_ms": max(r["p99_ms"] for r in results)}


def throughput(stack: ExitStack, server: PostgresServer, work: Path, args, log) -> dict:
    anvil = stack.enter_context(Anvil())
    chain = DevChain(anvil.rpc_url)
    plan = chain.deploy_credits_plan()
    subs = subscriber_addresses(64, "replicas")
    mint_many(chain, plan, subs, CREDITS)
    upstream = Nginx(stack, work, "upstream", BODY=UPSTREAM_BODY)
    key = work / "signing-key.pem"
    generate_signing_key(key, "ES256")
    common = dict(rpc_url=anvil.rpc_url, plan=plan, upstream=upstream.url, key_file=key)
    single = Gateway(stack, work, "sqlite", gateway_config(workers=2, ledger=work / "ledger.db", **common))
    url = server.new_database()
    replicas = []
    for i in range(2):
        data = gateway_config(workers=1, ledger=work / "unused.db", **common)
        data["metering"]["ledger"] = url
        replicas.append(Gateway(stack, work, f"replica-{i}", data))
    tokens = work / "tokens.txt"
    tokens.write_text("\n".join(issue_tokens(single.path, subs)) + "\n")
    for name, fn in (("sqlite", lambda s: wrk(single.url + PAID_PATH, 64, s, tokens)),
                     ("postgresql", lambda s: wrk_together([r.url + PAID_PATH for r in replicas], 32, s, tokens))):
        fn(args.warmup)
    runs: dict[str, list[dict]] = {"sqlite": [], "postgresql": []}
    order = ["sqlite", "postgresql"]
    for r in range(args.rounds):
        for name in (order if r % 2 == 0 else order[::-1]):
            res = (wrk(single.url + PAID_PATH, 64, args.seconds, tokens) if name == "sqlite" else
                   wrk_together([g.url + PAID_PATH for g in replicas], 32, args.seconds, tokens))
            runs[name].append(res)
            log(f"  round {r + 1} {name:<10} {res['rps']:>8.0f} req/s  p50 {res['p50_ms']:.2f} ms  p99 {res['p99_ms']:.2f} ms")
    return {name: {"rps": statistics.median(x["rps"] for x in rs), "p50_ms": statistics.median(x["p50_ms"] for x in rs),
                   "p99_ms": statistics.median(x["p99_ms"] for x in rs), "rounds_rps": [x["rps"] for x in rs]}
            for name, rs in runs.items()}, (anvil, plan, key, upstream)


# --- (c) hand-over -----------------------------------------------------------------------------------

def handover(stack: ExitStack, server: PostgresServer, work: Path, pieces, trials: int, log) -> list[float]:
    anvil, plan, key, upstream = pieces
    times = []
    for trial in range(trials):
        url = server.new_database()
        gws = []
        for i in range(2):
            data = gateway_config(workers=1, ledger=work / "unused.db", rpc_url=anvil.rpc_url, plan=plan,
                                  upstream=upstream.url, key_file=key)
            data["metering"].update(ledger=url, settle_every="1s")
            gws.append(Gateway(stack, work, f"handover-{trial}-{i}", data))
        holder = next(g for g in gws if '"settler_lease_taken"' in g.log_file.read_text())
        other = next(g for g in gws if g is not holder)
        t0 = time.monotonic()
        os.kill(holder.child.proc.pid, signal.SIGKILL)
        while '"settler_lease_taken"' not in other.log_file.read_text():
            if time.monotonic() - t0 > 30:
                raise RuntimeError("no hand-over within 30 s")
            time.sleep(0.01)  # polling a log file for the line, at 10 ms resolution
        times.append(time.monotonic() - t0)
        log(f"  hand-over {trial + 1}: {times[-1]:.2f} s (settle_every 1s)")
        other.stop()
    return times


def main(argv: list[str] | None = None) -> int:
    p = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    p.add_argument("--seconds", type=float, default=10.0)
    p.add_argument("--warmup", type=float, default=3.0)
    p.add_argument("--rounds", type=int, default=3)
    p.add_argument("--tasks", type=int, default=64)
    p.add_argument("--trials", type=int, default=3)
    p.add_argument("--json", type=Path)
    args = p.parse_args(argv)
    bins = server_binaries()
    if bins is None:
        print("PostgreSQL server binaries not found: run scripts/install-postgres", file=sys.stderr)
        return 2
    with ExitStack() as stack:
        server = PostgresServer(bins).start()
        stack.callback(server.stop)
        work = Path(stack.enter_context(tempfile.TemporaryDirectory(prefix="gateway-replicas-")))
        os.chmod(work, 0o755)  # nginx workers read their prefix dir
        load_before = Path("/proc/loadavg").read_text().split()[:3]
        print(f"(a) ledger operations: {args.tasks} tasks, {args.seconds:g}s per run, A B B A")
        ops = ledger_ops(server, work, args.tasks, args.seconds, print)
        print(f"(b) protected calls: 1 gateway (2 workers) on SQLite vs 2 replicas (1 worker each) on PostgreSQL")
        tp, pieces = throughput(stack, server, work, args, print)
        print("(c) settler hand-over after SIGKILL of the holder")
        hand = handover(stack, server, work, pieces, args.trials, print)
        load_after = Path("/proc/loadavg").read_text().split()[:3]
    result = {"ledger_ops": ops, "throughput": tp, "handover_s": hand,
              "loadavg": {"before": load_before, "after": load_after}, "args": {k: str(v) for k, v in vars(args).items()}}
    print(json.dumps(result, indent=2))
    print(f"replicas/sqlite throughput: {tp['postgresql']['rps'] / tp['sqlite']['rps']:.2f}x; "
          f"hand-over median {statistics.median(hand):.2f} s")
    if args.json:
        args.json.write_text(json.dumps(result, indent=2))
    return 0


if __name__ == "__main__":
    sys.exit(main())
