"""Scale checks of issue 7, as benchmarks: SSE streams, eth_calls per plan-cache TTL, start-up.

Runs after the throughput rounds in `bench/run` (bench/suite.py), or alone:

    .venv/bin/python bench/scale.py [--workers N] [--quick] [--streams 5000] [--calls 10000] [--no-results]

Everything on 127.0.0.1: anvil with a `CreditsPlan`, the small SSE upstream `bench/sse_upstream.py`
(it also answers any other GET with a small JSON body), and `gateway serve` processes built with the
suite's helpers (`--workers`, default the machine's cores; metering on with the operator key,
`settle_every: 1h`). The soft open-files limit is raised to the hard one (`resource.setrlimit`)
before anything starts; the children inherit it.

(d) **Start-up**: `--startup-runs` (3) starts of `gateway serve`: seconds from just before the
    process starts to the first 200 from admin `/healthz`, and to every worker listening on the
    public port (counted in /proc/net/tcp). The first run also creates the ledger.
(b) **eth_calls, many subscribers**: the gateway's chain RPC URL is a counting JSON-RPC proxy
    (`tests/support/rpc_proxy.py`'s `RpcProxy`, run on its own thread and loop) in front of anvil;
    `--calls` (10,000) protected calls, round-robin over `--call-subscribers` (100) subscribers, 64
    in flight, all within one plan-cache TTL (`ttl: 60s`; the run checks it took less). Target:
    <= 100 `eth_call`s.
(c) **eth_calls, 500 concurrent first calls**: then `--first-calls` (500) calls at once (one new
    connection each) from ONE subscriber never seen before. Target: exactly 1 `eth_call`.
    (b) and (c) run on a gateway with `--workers` workers, and again on one with 1 worker, so that
    a per-process cache shows as such.
(e) **Ledger history**: `--history-runs` (4) back-to-back `wrk -t1 -c64 -d<--history-seconds>s` runs of
    protected calls from ONE subscriber (nothing settles), then `POST /settle` and one more run: the
    req/s of each next to the charges already on the account (the ledger's per-call sums).
(a) **SSE streams**: `--streams` (5,000) protected `GET /events` streams (price 1, one subscriber)
    opened through the gateway, at most 100 connecting at a time. The upstream sends event 0 at once
    and holds every stream until all are open (or opening made no progress for `--stall` seconds,
    or `--open-deadline` passed); then the gateway's memory is read (VmRSS, and PSS, of the
    gateway process and all its workers, from /proc), the upstream is released and sends
    `--stream-events`-1 more events per stream `--stream-interval` apart. Memory per open stream =
    (RSS with the streams open - RSS before) / streams open. Every event of every stream must
    arrive, in order. Target: under 400 MB in total, every event delivered.
"""

from __future__ import annotations

import argparse
import asyncio
import datetime as dt
import json
import os
import resource
import statistics
import sys
import tempfile
import threading
import time
from contextlib import ExitStack
from pathlib import Path
from typing import Any

REPO = Path(__file__).resolve().parents[1]
if str(REPO) not in sys.path:
    sys.path.insert(0, str(REPO))

import aiohttp  # noqa: E402

from bench.latency import Child, machine  # noqa: E402
from bench.suite import (  # noqa: E402
    BENCH, CREDITS, HOST, PAID_PATH, BenchFailed, Gateway, Target, code_fingerprint, fingerprint_note, gateway_config,
    issue_tokens, machine_line, mint_many, output_tail, subscriber_addresses, write_results,
)
from gateway.dev.chain import Anvil, DevChain, free_port  # noqa: E402
from gateway.auth.issuer import generate_signing_key  # noqa: E402
from tests.support.rpc_proxy import RpcProxy  # noqa: E402

SSE_PATH = "/events"
PLAN_TTL = "60s"
PLAN_TTL_S = 60.0
OPENING_AT_ONCE = 100  # SSE streams connecting at a time (each then stays open)
MB = 1024 * 1024


def add_options(p: argparse.ArgumentParser) -> None:
    g = p.add_argument_group("scale checks (bench/scale.py)")
    g.add_argument("--streams", type=int, default=None, help="concurrent SSE streams (default 5000, --quick 500)")
    g.add_argument("--stream-events", type=int, default=5, help="events per stream (default 5)")
    g.add_argument("--stream-interval", type=float, default=0.5, help="seconds between events after the release")
    g.add_argument("--open-deadline", type=float, default=180.0, help="at most this long to open the streams")
    g.add_argument("--stall", type=float, default=15.0,
                   help="stop waiting for streams to open after this long without a new one")
    g.add_argument("--calls", type=int, default=None, help="protected calls for the eth_call count (default 10000)")
    g.add_argument("--call-subscribers", type=int, default=100)
    g.add_argument("--first-calls", type=int, default=500, help="concurrent first calls from one subscriber")
    g.add_argument("--startup-runs", type=int, default=3)
    g.add_argument("--history-runs", type=int, default=None,
                   help="back-to-back wrk runs from ONE subscriber, ledger history growing (default 4, --quick 2)")
    g.add_argument("--history-seconds", type=float, default=None, help="seconds per history run (default 10, --quick 3)")


def finish_options(args: argparse.Namespace) -> None:
    args.streams = args.streams or (500 if args.quick else 5000)
    args.calls = args.calls or (2000 if args.quick else 10_000)
    args.history_runs = args.history_runs or (2 if args.quick else 4)
    args.history_seconds = args.history_seconds or (3.0 if args.quick else 10.0)


def raise_nofile() -> tuple[int, int]:
    soft, hard = resource.getrlimit(resource.RLIMIT_NOFILE)
    if hard == resource.RLIM_INFINITY or soft < hard:
        target = hard if hard != resource.RLIM_INFINITY else 1 << 20
        resource.setrlimit(resource.RLIMIT_NOFILE, (target, hard))
    return resource.getrlimit(resource.RLIMIT_NOFILE)


class ThreadedRpcProxy:
    """`RpcProxy` (the tests' counting JSON-RPC proxy) on its own thread and event loop, so that the
    synchronous parts of this script (starting processes) never stall the gateway's RPC."""

    def __init__(self, target: str) -> None:
        self.loop = asyncio.new_event_loop()
        self.thread = threading.Thread(target=self.loop.run_forever, name="rpc-proxy", daemon=True)
        self.thread.start()
        self.proxy: RpcProxy = self._run(self._open(target))
        self.url = self.proxy.url

    def _run(self, coro, timeout: float = 30.0):
        return asyncio.run_coroutine_threadsafe(coro, self.loop).result(timeout)

    @staticmethod
    async def _open(target: str) -> RpcProxy:
        proxy = RpcProxy(target)
        await proxy.__aenter__()
        return proxy

    def counts(self) -> dict[str, int]:
        async def copy() -> dict[str, int]:
            return dict(self.proxy.counts)
        return self._run(copy())

    def close(self) -> None:
        """Stop the proxy and its thread (idempotent)."""
        if not self.thread.is_alive():
            return
        try:
            self._run(self.proxy.__aexit__(None, None, None))
        finally:
            self.loop.call_soon_threadsafe(self.loop.stop)
            self.thread.join(10)
            if not self.thread.is_alive():
                self.loop.close()


def delta(after: dict[str, int], before: dict[str, int]) -> dict[str, int]:
    return {k: after.get(k, 0) - before.get(k, 0) for k in set(after) | set(before) if after.get(k, 0) - before.get(k, 0)}


# --- (b), (c): eth_calls ---------------------------------------------------------------------------

async def protected_calls(url: str, tokens: list[str], calls: int, concurrency: int) -> dict[str, Any]:
    """`calls` GET /paid round-robin over the tokens, `concurrency` in flight; all must be charged 1."""
    next_call, statuses = 0, {}

    async def worker(session: aiohttp.ClientSession) -> None:
        nonlocal next_call
        while next_call < calls:
            i = next_call
            next_call += 1
            headers = {"Host": HOST, "Authorization": f"Bearer {tokens[i % len(tokens)]}"}
            async with session.get(url + PAID_PATH, headers=headers) as resp:
                body = await resp.read()
            statuses[resp.status] = statuses.get(resp.status, 0) + 1
            if resp.status != 200 or resp.headers.get("X-Credits-Charged") != "1":
                raise BenchFailed(f"call {i}: GET {PAID_PATH} -> {resp.status} {dict(resp.headers)}\n{body[:500]!r}")

    t0 = time.perf_counter()
    async with aiohttp.ClientSession(connector=aiohttp.TCPConnector(limit=concurrency)) as session:
        await asyncio.gather(*(worker(session) for _ in range(min(concurrency, calls))))
    return {"seconds": time.perf_counter() - t0, "statuses": statuses}


async def first_calls(url: str, token: str, n: int) -> dict[str, Any]:
    """`n` calls at once from one subscriber, each on its own new connection."""
    headers = {"Host": HOST, "Authorization": f"Bearer {token}"}
    statuses: dict[int, int] = {}
    connector = aiohttp.TCPConnector(limit=0, force_close=True)
    async with aiohttp.ClientSession(connector=connector, timeout=aiohttp.ClientTimeout(total=120)) as session:
        async def one() -> None:
            async with session.get(url + PAID_PATH, headers=headers) as resp:
                await resp.read()
                statuses[resp.status] = statuses.get(resp.status, 0) + 1

        t0 = time.perf_counter()
        await asyncio.gather(*(one() for _ in range(n)))
    return {"seconds": time.perf_counter() - t0, "statuses": statuses}


def eth_call_checks(stack: ExitStack, work: Path, chain: DevChain, anvil: Anvil, plan: str, upstream: str,
                    key_file: Path, workers: int, args: argparse.Namespace, log) -> dict[str, Any]:
    rpc = ThreadedRpcProxy(anvil.rpc_url)
    stack.callback(rpc.close)
    gw = Gateway(stack, work, f"gateway-ethcalls-w{workers}", gateway_config(
        workers=workers, rpc_url=rpc.url, plan=plan, upstream=upstream, key_file=key_file,
        ledger=work / f"ledger-ethcalls-w{workers}.db", plan_cache={"ttl": PLAN_TTL}))
    tag = f"calls-w{workers}"
    subs = subscriber_addresses(args.call_subscribers, tag)
    first = subscriber_addresses(1, f"first-w{workers}")
    mint_many(chain, plan, subs + first, CREDITS)
    tokens = issue_tokens(gw.path, subs + first)
    try:
        c0 = rpc.counts()
        many = asyncio.run(protected_calls(gw.url, tokens[:-1], args.calls, 64))
        c1 = rpc.counts()
        burst = asyncio.run(first_calls(gw.url, tokens[-1], args.first_calls))
        c2 = rpc.counts()
    except BaseException:
        print(output_tail(gw), file=sys.stderr)
        raise
    if burst["statuses"] != {200: args.first_calls}:
        raise BenchFailed(f"first calls: {burst['statuses']}\n{output_tail(gw)}")
    many_rpc, burst_rpc = delta(c1, c0), delta(c2, c1)
    res = {
        "workers": workers,
        "many": {"calls": args.calls, "subscribers": args.call_subscribers, "seconds": many["seconds"],
                 "within_ttl": many["seconds"] < PLAN_TTL_S, "rpc": many_rpc, "eth_calls": many_rpc.get("eth_call", 0)},
        "first": {"calls": args.first_calls, "seconds": burst["seconds"], "rpc": burst_rpc,
                  "eth_calls": burst_rpc.get("eth_call", 0)},
        "ledger": gw.ledger_counts(),
    }
    log(f"  workers={workers}: {args.calls} calls / {args.call_subscribers} subscribers in {many['seconds']:.1f}s -> "
        f"{res['many']['eth_calls']} eth_calls (all RPC: {many_rpc}); {args.first_calls} concurrent first calls "
        f"-> {res['first']['eth_calls']} eth_calls ({burst_rpc})")
    gw.stop()
    rpc.close()
    return res


# --- (a): SSE streams ------------------------------------------------------------------------------

async def sse_streams(gw: Gateway, upstream: str, token: str, args: argparse.Namespace, log) -> dict[str, Any]:
    n, events = args.streams, args.stream_events
    headers = {"Host": HOST, "Authorization": f"Bearer {token}", "Accept": "text/event-stream"}
    got = [0] * n           # events received per stream, in order
    problems: list[str] = []
    opened = 0
    all_open = asyncio.Event()
    gate = asyncio.Semaphore(OPENING_AT_ONCE)
    connector = aiohttp.TCPConnector(limit=0, force_close=True)
    timeout = aiohttp.ClientTimeout(total=None, sock_connect=60, sock_read=None)

    async with aiohttp.ClientSession(connector=connector, timeout=timeout) as session:
        async def stats() -> dict:
            async with session.get(upstream + "/stats") as resp:
                return await resp.json()

        async def one(i: int) -> None:
            nonlocal opened
            await gate.acquire()
            holding = True
            try:
                async with session.get(f"{gw.url}{SSE_PATH}?stream={i}", headers=headers) as resp:
                    if resp.status != 200:
                        problems.append(f"stream {i}: {resp.status} {(await resp.read())[:200]!r}")
                        return
                    async for line in resp.content:
                        if not line.startswith(b"data: "):
                            continue
                        sid, seq = line[6:].split()
                        if int(sid) != i or int(seq) != got[i]:
                            problems.append(f"stream {i}: got {line!r} expecting event {got[i]}")
                            return
                        got[i] += 1
                        if got[i] == 1:
                            opened += 1
                            gate.release()
                            holding = False
                            if opened == n:
                                all_open.set()
            except Exception as exc:  # noqa: BLE001 - reported, counted as not delivered
                problems.append(f"stream {i}: {type(exc).__name__}: {exc}")
            finally:
                if holding:
                    gate.release()

        t0 = time.perf_counter()
        tasks = [asyncio.create_task(one(i)) for i in range(n)]
        # Wait until every stream is open, or until opening stalls or its deadline passes (polled).
        last, last_change, why = -1, time.perf_counter(), "all open"
        while not all_open.is_set():
            done, _ = await asyncio.wait({asyncio.ensure_future(all_open.wait())}, timeout=1.0)
            now = time.perf_counter()
            if opened != last:
                last, last_change = opened, now
            if all(t.done() for t in tasks):
                why = "every stream ended before all were open"
                break
            if now - last_change > args.stall:
                why = f"no new stream opened for {args.stall:g}s"
                break
            if now - t0 > args.open_deadline:
                why = f"open deadline {args.open_deadline:g}s"
                break
        open_s = time.perf_counter() - t0
        opened_at_measure = opened
        up = await stats()
        memory = gw.memory()
        held = up["open"]
        log(f"  {opened}/{n} streams open through the gateway after {open_s:.1f}s ({why}); upstream holds {held}; "
            f"gateway RSS {memory['rss_mb']:.0f} MB (PSS {memory['pss_mb']:.0f} MB)")
        async with session.post(upstream + "/release") as resp:
            await resp.read()
        t1 = time.perf_counter()
        deadline = args.open_deadline + (events + 10) * args.stream_interval * max(1, n // 100) + 60
        _, pending = await asyncio.wait(tasks, timeout=deadline)
        for t in pending:
            t.cancel()
        await asyncio.gather(*pending, return_exceptions=True)
        finish_s = time.perf_counter() - t1
        up_end = await stats()
    delivered = sum(got)
    complete = sum(1 for g in got if g == events)
    return {"streams": n, "events_per_stream": events, "open_at_measure": opened_at_measure,
            "upstream_open_at_measure": held,
            "open_seconds": open_s, "open_stopped_because": why, "memory_open": memory,
            "finish_seconds_after_release": finish_s, "events_delivered": delivered, "events_expected": n * events,
            "streams_complete": complete, "not_finished_by_deadline": len(pending), "problems": problems[:20],
            "problem_count": len(problems), "upstream_stats": up_end}


def sse_check(stack: ExitStack, work: Path, chain: DevChain, anvil: Anvil, plan: str, sse: str, key_file: Path,
              workers: int, args: argparse.Namespace, log) -> dict[str, Any]:
    gw = Gateway(stack, work, "gateway-sse", gateway_config(
        workers=workers, rpc_url=anvil.rpc_url, plan=plan, upstream=sse, key_file=key_file,
        ledger=work / "ledger-sse.db", protected_endpoints=[f"GET {SSE_PATH}", f"GET {PAID_PATH}"], timeout="600s"))
    sub = subscriber_addresses(1, "sse")
    mint_many(chain, plan, sub, CREDITS)
    token = issue_tokens(gw.path, sub)[0]
    try:
        # Warm every worker's pools and caches with plain protected calls, then the baseline.
        asyncio.run(protected_calls(gw.url, [token], 400, 32))
        before = gw.memory()
        res = asyncio.run(sse_streams(gw, sse, token, args, log))
    except BaseException:
        print(output_tail(gw), file=sys.stderr)
        raise
    res["memory_before"] = before
    held = res["open_at_measure"]
    res["rss_mb_open"] = res["memory_open"]["rss_mb"]
    res["pss_mb_open"] = res["memory_open"]["pss_mb"]
    res["kb_per_stream_rss"] = (res["memory_open"]["rss_mb"] - before["rss_mb"]) * 1024 / held if held else None
    res["kb_per_stream_pss"] = (res["memory_open"]["pss_mb"] - before["pss_mb"]) * 1024 / held if held else None
    # What all `--streams` would take at that rate, when fewer were held open at once.
    res["rss_mb_projected"] = (before["rss_mb"] + res["kb_per_stream_rss"] * args.streams / 1024
                               if res["kb_per_stream_rss"] is not None else None)
    res["all_delivered"] = res["events_delivered"] == res["events_expected"] and not res["problem_count"]
    res["ledger"] = gw.ledger_counts()
    res["gateway_lines"] = gw.child.tail(20)
    log(f"  memory per open stream: {res['kb_per_stream_rss']:.1f} kB RSS; events delivered "
        f"{res['events_delivered']}/{res['events_expected']}, streams complete {res['streams_complete']}/{args.streams}, "
        f"{res['problem_count']} problems")
    gw.stop()
    return res


# --- (e): one subscriber, ledger history growing ---------------------------------------------------

def history_check(stack: ExitStack, work: Path, chain: DevChain, anvil: Anvil, plan: str, upstream: str,
                  key_file: Path, workers: int, args: argparse.Namespace, log) -> dict[str, Any]:
    """Back-to-back `wrk -c64` runs of protected calls from ONE subscriber (settle_every 1h): the
    req/s of each run next to the charges already on that account. Then one POST /settle and one
    more run: does settling give the speed back?"""
    gw = Gateway(stack, work, "gateway-history", gateway_config(
        workers=workers, rpc_url=anvil.rpc_url, plan=plan, upstream=upstream, key_file=key_file,
        ledger=work / "ledger-history.db"))
    sub = subscriber_addresses(1, "history")
    mint_many(chain, plan, sub, CREDITS)
    tokens_file = work / "history-token.txt"
    tokens_file.write_text(issue_tokens(gw.path, sub)[0] + "\n")
    target = Target("history", "one subscriber", gw.url + PAID_PATH, tokens_file=tokens_file, gateway=gw,
                    protected=True)
    runs = []
    for i in range(args.history_runs + 1):
        settled = None
        if i == args.history_runs:
            report = gw.settle()
            settled = {"confirmed": len(report.get("confirmed", [])), "failed": len(report.get("failed", []))}
        charges = gw.ledger_counts()["charges"]
        r = target.wrk(64, args.history_seconds)
        runs.append({"charges_on_account_at_start": charges, "after_settle": settled is not None, "settle": settled,
                     **{k: r[k] for k in ("rps", "p50_ms", "p99_ms", "requests")}})
        log(f"  run {i + 1}: {charges:>6} charges on the account{' (all settled just before)' if settled else ''}: "
            f"{r['rps']:.0f} req/s, p50 {r['p50_ms']:.1f} ms, p99 {r['p99_ms']:.1f} ms")
    gw.stop()
    return {"workers": workers, "runs": runs}


# --- all of it -------------------------------------------------------------------------------------

def run_all(args: argparse.Namespace, log=print) -> dict[str, Any]:
    nofile = raise_nofile()
    log(f"scale checks: open files limit {nofile[0]}")
    out: dict[str, Any] = {"nofile": nofile}
    with ExitStack() as stack:
        work = Path(stack.enter_context(tempfile.TemporaryDirectory(prefix="gateway-scale-")))
        anvil = stack.enter_context(Anvil())
        chain = DevChain(anvil.rpc_url)
        plan = chain.deploy_credits_plan()
        key_file = work / "signing-key.pem"
        generate_signing_key(key_file, "ES256")
        sse_port = free_port()
        sse = Child([sys.executable, str(BENCH / "sse_upstream.py"), "--port", str(sse_port), "--events",
                     str(args.stream_events), "--interval", str(args.stream_interval)], ready=r"listening on")
        stack.callback(sse.stop)
        sse_url = f"http://127.0.0.1:{sse_port}"

        log(f"(d) start-up to ready, {args.startup_runs} runs, {args.workers} workers")
        runs = []
        data = gateway_config(workers=args.workers, rpc_url=anvil.rpc_url, plan=plan, upstream=sse_url,
                              key_file=key_file, ledger=work / "ledger-startup.db")
        for i in range(args.startup_runs):
            with ExitStack() as one:
                gw = Gateway(one, work, "gateway-startup", data)
                runs.append(dict(gw.startup))
            log(f"  run {i + 1}: /healthz 200 after {runs[-1]['healthz_s']:.3f}s, public socket "
                f"listening after {runs[-1]['public_listening_s']:.3f}s")
        out["startup"] = {"runs": runs, "median_ready_s": statistics.median(r["ready_s"] for r in runs),
                          "median_healthz_s": statistics.median(r["healthz_s"] for r in runs)}

        log(f"(b, c) eth_calls: {args.calls} calls from {args.call_subscribers} subscribers, then "
            f"{args.first_calls} concurrent first calls from one")
        out["eth_calls"] = [eth_call_checks(stack, work, chain, anvil, plan, sse_url, key_file, w, args, log)
                            for w in dict.fromkeys([args.workers, 1])]

        log(f"(e) one subscriber, {args.history_runs} x wrk -c64 -d{args.history_seconds:g}s back to back, "
            f"then POST /settle and one more ({args.workers} workers)")
        out["history"] = history_check(stack, work, chain, anvil, plan, sse_url, key_file, args.workers, args, log)

        log(f"(a) {args.streams} SSE streams through the gateway ({args.workers} workers)")
        out["sse"] = sse_check(stack, work, chain, anvil, plan, sse_url, key_file, args.workers, args, log)
    out["markdown"], out["target_rows"] = markdown(out, args)
    return out


def markdown(r: dict, args: argparse.Namespace) -> tuple[list[str], list[str]]:
    main_ec = r["eth_calls"][0]
    sse = r["sse"]
    st = r["startup"]
    rows = []

    def row(what: str, goal: str, figure: str, met: bool | None) -> None:
        rows.append(f"| {what} | {goal} | {figure} | {'n/a' if met is None else ('met' if met else '**not met**')} |")

    many, first = main_ec["many"], main_ec["first"]
    row(f"eth_calls, {many['calls']:,} protected calls from {many['subscribers']} subscribers in one plan-cache TTL "
        f"({main_ec['workers']} workers)", "<= 100",
        f"{many['eth_calls']} ({many['seconds']:.1f} s{'' if many['within_ttl'] else ', LONGER than the TTL'})",
        many["eth_calls"] <= 100 and many["within_ttl"])
    row(f"eth_calls, {first['calls']} concurrent first calls from one subscriber ({main_ec['workers']} workers)",
        "exactly 1", str(first["eth_calls"]), first["eth_calls"] == 1)
    held = sse["upstream_open_at_measure"]
    per = sse["kb_per_stream_rss"]
    short = held < sse["streams"]
    row(f"{sse['streams']:,} open SSE streams: gateway memory (RSS, all processes)", "< 400 MB",
        f"{sse['rss_mb_open']:.0f} MB with {held:,} streams held open"
        + (f" ({per:.1f} kB per stream)" if per is not None else "")
        + (f"; only {held:,} of {sse['streams']:,} could be open at once, {sse['rss_mb_projected']:.0f} MB projected "
           f"for {sse['streams']:,}" if short and sse["rss_mb_projected"] is not None else ""),
        sse["rss_mb_open"] < 400 and not short)
    row(f"{sse['streams']:,} SSE streams: every event delivered", "all",
        f"{sse['events_delivered']:,} / {sse['events_expected']:,} events, {sse['streams_complete']:,} streams complete",
        sse["all_delivered"])
    row(f"start-up to ready ({args.workers} workers)", "(reported)",
        f"{st['median_ready_s']:.2f} s (median of {len(st['runs'])}; /healthz first 200 at {st['median_healthz_s']:.2f} s)",
        None)

    lines = ["Scale checks (bench/scale.py):", ""]
    lines += ["| check | workers | figure |", "|---|---:|---|"]
    for ec in r["eth_calls"]:
        m, f = ec["many"], ec["first"]
        lines.append(f"| {m['calls']:,} protected calls, {m['subscribers']} subscribers, 64 in flight, plan ttl {PLAN_TTL} "
                     f"| {ec['workers']} | {m['eth_calls']} eth_calls in {m['seconds']:.1f} s ({m['calls'] / m['seconds']:,.0f} req/s); "
                     f"all RPC methods: {json.dumps(m['rpc'], sort_keys=True)} |")
        lines.append(f"| {f['calls']} concurrent first calls, one new subscriber, one connection each | {ec['workers']} | "
                     f"{f['eth_calls']} eth_calls ({f['seconds']:.2f} s); all RPC methods: {json.dumps(f['rpc'], sort_keys=True)} |")
    mb, mo = sse["memory_before"], sse["memory_open"]
    lines.append(
        f"| {sse['streams']:,} SSE streams (protected, {sse['events_per_stream']} events each) | {args.workers} | "
        f"{sse['open_at_measure']:,} open after {sse['open_seconds']:.1f} s ({sse['open_stopped_because']}), upstream "
        f"holding {sse['upstream_open_at_measure']:,}; gateway RSS {mb['rss_mb']:.0f} -> {mo['rss_mb']:.0f} MB "
        f"(PSS {mb['pss_mb']:.0f} -> {mo['pss_mb']:.0f} MB, {len(mo['pids'])} processes)"
        + (f", {sse['kb_per_stream_rss']:.1f} kB RSS / {sse['kb_per_stream_pss']:.1f} kB PSS per stream"
           if sse["kb_per_stream_rss"] is not None else "")
        + f"; {sse['events_delivered']:,}/{sse['events_expected']:,} events delivered, "
        f"{sse['streams_complete']:,} streams complete {sse['finish_seconds_after_release']:.1f} s after the release"
        + (f"; {sse['problem_count']} problems, first: {sse['problems'][0]}" if sse["problem_count"] else "") + " |")
    runs = "; ".join(f"{x['healthz_s']:.2f} / {x['public_listening_s']:.2f}" for x in st["runs"])
    lines.append(f"| start-up: /healthz 200 / public socket listening, seconds, per run | {args.workers} | {runs} |")
    hist = r.get("history")
    if hist:
        cells = "; ".join(f"{x['charges_on_account_at_start']:,} charges{' (settled)' if x['after_settle'] else ''}: "
                          f"{x['rps']:,.0f} req/s, p50 {x['p50_ms']:.0f} ms" for x in hist["runs"])
        lines.append(f"| one subscriber, wrk -c64 -d{args.history_seconds:g}s runs back to back (upstream: the SSE "
                     f"upstream's plain GET), then POST /settle and one more run | {hist['workers']} | {cells} |")
    return lines, rows


def main(argv: list[str] | None = None) -> int:
    p = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    p.add_argument("--workers", type=int, default=os.cpu_count() or 1)
    p.add_argument("--quick", action="store_true")
    p.add_argument("--no-results", action="store_true", help="do not write bench/RESULTS.md")
    p.add_argument("--json", type=Path, default=None)
    add_options(p)
    args = p.parse_args(argv)
    finish_options(args)
    info = machine()
    fingerprint = code_fingerprint()
    started = dt.datetime.now(dt.timezone.utc)
    command = ".venv/bin/python bench/scale.py " + " ".join(argv if argv is not None else sys.argv[1:])
    try:
        r = run_all(args, log=lambda s: print(s, flush=True))
    except BenchFailed as exc:
        print(f"\nSTOPPED: {exc}", file=sys.stderr)
        return 1
    info["loadavg_after"] = Path("/proc/loadavg").read_text().split()[:3]
    lines, rows = r.pop("markdown"), r.pop("target_rows")
    section = [f"## {started.strftime('%Y-%m-%d %H:%M UTC')}: `{command.strip()}` (scale checks only)", "",
               f"Machine: {machine_line(info, started)}. {fingerprint_note(fingerprint, code_fingerprint())}", "",
               "| issue-7 target | goal | measured | |", "|---|---|---|---|", *rows, "", *lines]
    text = "\n".join(section)
    print("\n" + text)
    json_path = args.json or BENCH / "results" / f"scale-{started.strftime('%Y%m%dT%H%M%SZ')}.json"
    json_path.parent.mkdir(parents=True, exist_ok=True)
    json_path.write_text(json.dumps({"benchmark": "bench/scale.py", "command": command, "machine": info,
                                     "params": vars(args), "scale": r}, indent=2, default=str) + "\n")
    if not args.no_results:
        write_results(text)
    return 0


if __name__ == "__main__":
    sys.exit(main())
