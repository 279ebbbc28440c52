"""Latency the gateway adds to a call, over calling the example plugin directly.

Starts the same stack as `gateway demo` (anvil, the credits plan, the example plugin and
`gateway serve` as real processes on loopback), mints plenty of credits to a subscriber, issues
its token, then measures with one keep-alive aiohttp ClientSession per target:

1. sequential calls, interleaved (every round sends one call of each series, in a rotating order,
   so machine noise hits all series alike):
     - POST /query direct (plugin URL, the owner's bearer secret)
     - POST /query through the gateway (Host: elvis.proxy.localhost, the subscriber's JWT;
       protected: token check + cached plan check + proxying)
     - GET /health direct, and through the gateway (open endpoint: proxying only)
   -> median/p90/p99 of each, the added median latency and the ratio for both endpoints;
2. a concurrency run: a fixed number of POST /query with `--concurrency` calls in flight, direct
   and through the gateway in ABBA blocks -> req/s of each and the ratio.

    .venv/bin/python bench/latency.py [--quick] [--requests N] [--concurrency C] [--json PATH]

A non-200 answer stops the run and prints the response body (exit code 1).
"""

from __future__ import annotations

import argparse
import asyncio
import datetime as dt
import json
import os
import platform
import re
import secrets
import socket
import statistics
import subprocess
import sys
import tempfile
import time
import urllib.request
from contextlib import ExitStack
from pathlib import Path

REPO = Path(__file__).resolve().parents[1]
if str(REPO) not in sys.path:  # `python bench/latency.py` puts bench/, not the repo, on the path
    sys.path.insert(0, str(REPO))

import aiohttp  # noqa: E402

from gateway.dev.demo import HOST, SUBSCRIBER  # noqa: E402
from gateway.dev.chain import Anvil, DevChain, free_port  # noqa: E402
from gateway.dev.process import ChildProcess  # noqa: E402
from gateway.auth.issuer import generate_signing_key  # noqa: E402

QUERY_BODY = json.dumps({"queries": [{"query": "blue suede"}]}).encode()
CREDITS = 10**9
TOKEN_ID = 1  # config/gateway.yaml: services.elvis.plan.token_id
PORT_READY = "<accepts TCP connections>"


class GatewayFailed(Exception):
    """A call answered something other than 200: the benchmark stops and reports it."""


class Child(ChildProcess):
    """A ChildProcess that never outlives a failed start, and can be ready by port.

    With `port`, ready means "the port accepts TCP connections": with GATEWAY_LOG_LEVEL=warning
    the gateway prints nothing once it listens (its "listening" line is info). That wait is a
    bounded loop (deadline `timeout`) that fails at once, with the child's output, if the child
    exits first. If the start fails either way, the child is stopped before the error propagates
    (the constructor raised, so nobody else holds it to stop it).
    """

    def __init__(self, cmd: list[str], ready: str | None = None, env: dict[str, str] | None = None,
                 port: int | None = None, timeout: float = 20.0) -> None:
        self.port = port
        super().__init__(cmd, ready=ready if port is None else PORT_READY, env=env, timeout=timeout)

    def wait_for(self, pattern: str, timeout: float = 20.0, start: int = 0):
        try:
            if pattern != PORT_READY:
                return super().wait_for(pattern, timeout, start)
            return self._wait_port(timeout)
        except BaseException:
            self.stop()
            raise

    def _wait_port(self, timeout: float) -> None:
        deadline = time.monotonic() + timeout
        while True:
            try:
                with socket.create_connection(("127.0.0.1", self.port), timeout=1):
                    return None
            except OSError:
                pass
            if time.monotonic() > deadline:
                raise TimeoutError(f"{' '.join(self.cmd)} not accepting on port {self.port} in {timeout}s:\n"
                                   + "\n".join(self.lines[-30:]))
            try:  # returns at once if the child dies; else a short pause before the next attempt
                self.proc.wait(timeout=0.02)
            except subprocess.TimeoutExpired:
                continue
            raise RuntimeError(f"{self.cmd[0]} exited ({self.proc.returncode}) before listening:\n"
                               + "\n".join(self.lines[-30:]))


# --- the stack -------------------------------------------------------------------------------------

class Stack:
    """anvil + plan + plugin + gateway + token; every child registered on `stack` for stopping."""

    def __init__(self, stack: ExitStack, log_level: str) -> None:
        anvil = stack.enter_context(Anvil())
        chain = DevChain(anvil.rpc_url)
        self.plan = chain.deploy_credits_plan()
        chain.mint_credits(self.plan, SUBSCRIBER, TOKEN_ID, CREDITS)
        self.credits_before = chain.credits_of(self.plan, SUBSCRIBER, TOKEN_ID)

        self.secret = secrets.token_urlsafe(24)
        plugin_port = free_port()
        self.plugin = self._start(stack, Child(
            [sys.executable, "-m", "examples.song_plugin", "--port", str(plugin_port)],
            ready=r"listening on", env={"SONG_PLUGIN_TOKEN": self.secret}))
        self.direct = f"http://127.0.0.1:{plugin_port}"

        work = Path(stack.enter_context(tempfile.TemporaryDirectory(prefix="gateway-bench-")))
        key_file = work / "signing-key.pem"
        generate_signing_key(key_file, "ES256")
        port, self.admin_port = free_port(), free_port()
        env = {
            "GATEWAY_LISTEN": f"127.0.0.1:{port}", "GATEWAY_ADMIN_LISTEN": f"127.0.0.1:{self.admin_port}",
            "GATEWAY_SIGNING_KEY_FILE": str(key_file), "CHAIN_RPC_URL": anvil.rpc_url, "PLAN_CONTRACT": self.plan,
            "ELVIS_UPSTREAM": self.direct, "ELVIS_UPSTREAM_TOKEN": self.secret,
            "GATEWAY_WORKERS": "1", "GATEWAY_LOG_LEVEL": log_level,
        }
        config = str(REPO / "config" / "gateway.yaml")
        self.gateway = self._start(stack, Child(
            [sys.executable, "-m", "gateway", "serve", "--config", config], port=port, env=env))
        self.through = f"http://127.0.0.1:{port}"
        issue = self._start(stack, Child(
            [sys.executable, "-m", "gateway", "token", "issue", "--config", config, "--service", "elvis",
             "--subscriber", SUBSCRIBER], ready=r"^ey", env=env))
        self.token = issue.ready_match.string.strip()
        self.chain = chain

    @staticmethod
    def _start(stack: ExitStack, child: Child) -> Child:
        stack.callback(child.stop)
        return child

    def metrics(self) -> dict[str, float]:
        """The gateway's request and plan-cache counters from its admin /metrics."""
        return admin_counters(f"http://127.0.0.1:{self.admin_port}", r"gateway_(plan_cache|requests)_total\{")


# --- measuring -------------------------------------------------------------------------------------

class Target:
    """One endpoint as one client sees it: the session (per target), URL, method, headers."""

    def __init__(self, name: str, session: aiohttp.ClientSession, method: str, url: str,
                 headers: dict[str, str], body: bytes | None = None) -> None:
        self.name, self.session, self.method, self.url = name, session, method, url
        self.headers, self.body = headers, body

    async def call(self) -> tuple[int, int]:
        """One call, body read; returns (nanoseconds, body size). Raises GatewayFailed if not 200."""
        t0 = time.perf_counter_ns()
        async with self.session.request(self.method, self.url, headers=self.headers, data=self.body) as resp:
            body = await resp.read()
        elapsed = time.perf_counter_ns() - t0
        if resp.status != 200:
            raise GatewayFailed(f"{self.name}: {self.method} {self.url} -> {resp.status}\n"
                                f"headers: {dict(resp.headers)}\nbody: {body.decode(errors='replace')}")
        return elapsed, len(body)


def summary(ns: list[int]) -> dict[str, float]:
    ms = sorted(x / 1e6 for x in ns)
    q = statistics.quantiles(ms, n=100, method="inclusive")
    return {"n": len(ms), "median_ms": statistics.median(ms), "p90_ms": q[89], "p99_ms": q[98],
            "min_ms": ms[0], "max_ms": ms[-1], "mean_ms": statistics.fmean(ms)}


async def sequential(targets: list[Target], rounds: int) -> dict[str, list[int]]:
    """`rounds` rounds, each one call per target, the order rotating every round."""
    samples: dict[str, list[int]] = {t.name: [] for t in targets}
    k = len(targets)
    for i in range(rounds):
        for j in range(k):
            t = targets[(i + j) % k]
            elapsed, _ = await t.call()
            samples[t.name].append(elapsed)
    return samples


async def concurrent_block(target: Target, total: int, concurrency: int) -> tuple[float, list[int]]:
    """`total` calls, `concurrency` in flight; returns (wall seconds, per-call nanoseconds)."""
    remaining = total
    lat: list[int] = []

    async def worker() -> None:
        nonlocal remaining
        while remaining > 0:
            remaining -= 1
            elapsed, _ = await target.call()
            lat.append(elapsed)

    t0 = time.perf_counter()
    await asyncio.gather(*(worker() for _ in range(min(concurrency, total))))
    return time.perf_counter() - t0, lat


async def measure(stack: Stack, args: argparse.Namespace) -> dict:
    json_ct = {"Content-Type": "application/json"}
    limit = max(args.concurrency, 1)
    async with aiohttp.ClientSession(connector=aiohttp.TCPConnector(limit=limit)) as direct_s, \
            aiohttp.ClientSession(connector=aiohttp.TCPConnector(limit=limit)) as gw_s:
        q_direct = Target("query_direct", direct_s, "POST", stack.direct + "/query",
                          {**json_ct, "Authorization": f"Bearer {stack.secret}"}, QUERY_BODY)
        q_gw = Target("query_gateway", gw_s, "POST", stack.through + "/query",
                      {**json_ct, "Host": HOST, "Authorization": f"Bearer {stack.token}"}, QUERY_BODY)
        h_direct = Target("health_direct", direct_s, "GET", stack.direct + "/health", {})
        h_gw = Target("health_gateway", gw_s, "GET", stack.through + "/health", {"Host": HOST})
        seq_targets = [q_direct, q_gw, h_direct, h_gw]

        # Same answer both ways (the gateway relays the plugin's body), then warm every cache.
        sizes = {t.name: (await t.call())[1] for t in seq_targets}
        await sequential(seq_targets, args.warmup)

        t0 = time.perf_counter()
        samples = await sequential(seq_targets, args.requests)
        seq_seconds = time.perf_counter() - t0

        # Concurrency: warm `concurrency` connections per target, then ABBA blocks.
        for t in (q_direct, q_gw):
            await concurrent_block(t, args.concurrency * 4, args.concurrency)
        per_block = args.concurrency_requests // 2
        blocks = []
        for t in (q_direct, q_gw, q_gw, q_direct):
            seconds, lat = await concurrent_block(t, per_block, args.concurrency)
            blocks.append({"target": t.name, "requests": per_block, "seconds": seconds, "lat": lat})

    result = {"sequential": {name: summary(ns) for name, ns in samples.items()},
              "sequential_seconds": seq_seconds, "response_bytes": sizes, "concurrency": {}}
    for name in ("query_direct", "query_gateway"):
        mine = [b for b in blocks if b["target"] == name]
        n, secs = sum(b["requests"] for b in mine), sum(b["seconds"] for b in mine)
        result["concurrency"][name] = {
            "requests": n, "seconds": secs, "req_per_s": n / secs,
            "blocks_req_per_s": [b["requests"] / b["seconds"] for b in mine],
            **summary([x for b in mine for x in b["lat"]]),
        }
    seq, conc = result["sequential"], result["concurrency"]
    for ep in ("query", "health"):
        d, g = seq[f"{ep}_direct"]["median_ms"], seq[f"{ep}_gateway"]["median_ms"]
        result[f"{ep}_added_median_ms"] = g - d
        result[f"{ep}_median_ratio"] = g / d
    result["auth_and_plan_added_median_ms"] = result["query_added_median_ms"] - result["health_added_median_ms"]
    result["concurrency_ratio"] = conc["query_gateway"]["req_per_s"] / conc["query_direct"]["req_per_s"]
    return result


# --- reporting -------------------------------------------------------------------------------------

def table(r: dict, args: argparse.Namespace) -> str:
    seq, conc = r["sequential"], r["concurrency"]
    lines = [
        f"sequential, {args.requests} rounds interleaved (one keep-alive connection per target), ms:",
        f"{'':34}{'median':>8}{'p90':>8}{'p99':>8}   {'added median':>12}{'ratio':>7}",
    ]
    for ep, label in (("query", "POST /query (protected)"), ("health", "GET /health (open)")):
        d, g = seq[f"{ep}_direct"], seq[f"{ep}_gateway"]
        lines.append(f"{label + ' direct':34}{d['median_ms']:8.3f}{d['p90_ms']:8.3f}{d['p99_ms']:8.3f}")
        lines.append(f"{label + ' gateway':34}{g['median_ms']:8.3f}{g['p90_ms']:8.3f}{g['p99_ms']:8.3f}   "
                     f"{r[f'{ep}_added_median_ms']:+12.3f}{r[f'{ep}_median_ratio']:6.2f}x")
    lines.append(f"auth + plan check alone (query added - health added): {r['auth_and_plan_added_median_ms']:+.3f} ms")
    lines.append("")
    lines.append(f"concurrency {args.concurrency}, POST /query, {args.concurrency_requests} requests per target "
                 "(ABBA blocks):")
    lines.append(f"{'':34}{'req/s':>8}{'median':>8}{'p99':>8}   blocks req/s")
    for name, label in (("query_direct", "direct"), ("query_gateway", "gateway")):
        c = conc[name]
        blocks = ", ".join(f"{x:.0f}" for x in c["blocks_req_per_s"])
        lines.append(f"{label:34}{c['req_per_s']:8.0f}{c['median_ms']:8.2f}{c['p99_ms']:8.2f}   {blocks}")
    lines.append(f"gateway / direct throughput: {r['concurrency_ratio']:.2f}x")
    return "\n".join(lines)


def machine() -> dict:
    def git(*cmd: str) -> str:
        try:
            return subprocess.run(["git", *cmd], cwd=REPO, capture_output=True, text=True, timeout=10).stdout.strip()
        except OSError:
            return ""
    import uvloop  # noqa: F401  (reported: the gateway runs on it when installed)
    return {
        "nproc": os.cpu_count(), "python": platform.python_version(), "platform": platform.platform(),
        "cpu": next((ln.split(":", 1)[1].strip() for ln in Path("/proc/cpuinfo").read_text().splitlines()
                     if ln.startswith("model name")), platform.processor()),
        "aiohttp": aiohttp.__version__, "uvloop": uvloop.__version__,
        "loadavg_before": Path("/proc/loadavg").read_text().split()[:3],
        "git_head": git("rev-parse", "--short", "HEAD"), "git_dirty_files": git("status", "--short").splitlines(),
    }


def parse_args(argv: list[str] | None = None) -> argparse.Namespace:
    p = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    p.add_argument("--requests", type=int, default=None, help="sequential rounds (default 2000, --quick 300)")
    p.add_argument("--warmup", type=int, default=None, help="warm-up rounds (default 200, --quick 50)")
    p.add_argument("--concurrency", type=int, default=32)
    p.add_argument("--concurrency-requests", type=int, default=None,
                   help="requests per target in the concurrency run (default 4000, --quick 1000)")
    p.add_argument("--quick", action="store_true", help="smoke run: 300 rounds, 1000 concurrent requests")
    p.add_argument("--gateway-log-level", default="warning",
                   help="GATEWAY_LOG_LEVEL (default warning: no access-log line per request)")
    p.add_argument("--client-loop", choices=("uvloop", "asyncio"), default="uvloop")
    p.add_argument("--json", type=Path, default=None, help="write the results here")
    args = p.parse_args(argv)
    args.requests = args.requests or (300 if args.quick else 2000)
    args.warmup = args.warmup if args.warmup is not None else (50 if args.quick else 200)
    args.concurrency_requests = args.concurrency_requests or (1000 if args.quick else 4000)
    if args.requests < 2 or args.concurrency < 1 or args.concurrency_requests < 2:
        p.error("--requests and --concurrency-requests must be >= 2, --concurrency >= 1")
    return args


def main(argv: list[str] | None = None) -> int:
    args = parse_args(argv)
    info = machine()
    started = dt.datetime.now(dt.timezone.utc)
    with ExitStack() as stack:
        t0 = time.perf_counter()
        st = Stack(stack, args.gateway_log_level)
        setup_s = time.perf_counter() - t0
        print(f"stack up in {setup_s:.1f}s: plugin {st.direct}, gateway {st.through} (Host: {HOST}), "
              f"plan {st.plan}, {SUBSCRIBER} holds {st.credits_before} credits", flush=True)
        try:
            if args.client_loop == "uvloop":
                import uvloop
                result = uvloop.run(measure(st, args))
            else:
                result = asyncio.run(measure(st, args))
        except GatewayFailed as exc:
            print(f"\nSTOPPED: a call did not answer 200\n{exc}", file=sys.stderr)
            print("gateway output (last 30 lines):\n" + "\n".join(st.gateway.lines[-30:]), file=sys.stderr)
            return 1
        result["gateway_metrics"] = st.metrics()
        result["credits_after"] = st.chain.credits_of(st.plan, SUBSCRIBER, TOKEN_ID)
        result["gateway_output_lines"] = st.gateway.lines[-20:]
    info["loadavg_after"] = Path("/proc/loadavg").read_text().split()[:3]
    report = {
        "benchmark": "gateway added latency (bench/latency.py)",
        "started_utc": started.isoformat(timespec="seconds"),
        "command": " ".join([Path(sys.executable).name, *sys.argv]),
        "params": {k: (str(v) if isinstance(v, Path) else v) for k, v in vars(args).items()},
        "machine": info, **result,
    }
    return publish(report, table(result, args), info, args.json)


def admin_counters(admin_url: str, pattern: str) -> dict[str, float]:
    """Samples of the gateway's admin /metrics whose line matches `pattern` (shared by the benches)."""
    with urllib.request.urlopen(admin_url + "/metrics", timeout=10) as resp:
        text = resp.read().decode()
    out = {}
    for line in text.splitlines():
        if re.match(pattern, line):
            name, value = line.rsplit(" ", 1)
            out[name] = float(value)
    return out


def publish(report: dict, table_text: str, info: dict, json_path: Path | None) -> int:
    """Print the table and the machine line; write the JSON report if asked (shared by the benches)."""
    print()
    print(table_text)
    print(f"\nmachine: nproc={info['nproc']}, python {info['python']}, {info['cpu']}, "
          f"load {' '.join(info['loadavg_before'])} -> {' '.join(info['loadavg_after'])}")
    if json_path:
        json_path.parent.mkdir(parents=True, exist_ok=True)
        json_path.write_text(json.dumps(report, indent=2) + "\n")
        print(f"results written to {json_path}")
    return 0


if __name__ == "__main__":
    sys.exit(main())
