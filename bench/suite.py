"""The gateway's throughput and latency next to nginx, measured in one run with wrk (issue 7).

One command (`bench/run`, which installs nginx, wrk, the venv and anvil when missing) starts, on
127.0.0.1 only:

- anvil with a `CreditsPlan` (token id 1); `--subscribers` subscribers (default 64) are minted
  10^12 credits each, far more than any run charges;
- **upstream**: nginx answering every request by itself with a fixed small JSON body
  (`bench/nginx/upstream.conf`, `worker_processes 1`: see that file for why);
- **nginx proxy**: nginx as a plain keep-alive reverse proxy to it (`bench/nginx/proxy.conf`),
  `worker_processes` = the gateway's workers;
- **gateway**: the real `gateway serve` (`--workers`, default: the machine's cores) in front of the
  upstream, one service with an open endpoint `GET /open` and a protected one `GET /paid` (price 1,
  metering on with the operator key, so every call is reserved and charged in the SQLite ledger;
  `settle_every: 1h`, so nothing settles during the run), plan cache at the config defaults;
- **gateway (cold plan cache)**: a second `gateway serve`, identical but for
  `plan_cache: {ttl: 1ms, negative_ttl: 1ms}`, with its own ledger;
- **bare aiohttp proxy** (`bench/bare_proxy.py`, issue 16): the floor of the gateway's open path,
  one pooled ClientSession, uvloop, as many processes as the gateway's workers on one shared socket,
  the whole answer read and returned; no rules, no header hygiene, no log, no metrics.

The gateways log at the config's default level (`info`: one access-log line per request, as in
production; `--gateway-log-level warning` measures them without it). Their output goes to a file in
the run's temporary directory (`output_tail` reads its end when something fails), not to a pipe this
process reads: a Python reader keeping millions of lines would compete for the 2 cores.

Both protected targets use the same wrk script (`bench/wrk/tokens.lua`), which rotates over the
subscribers' tokens (issued with `OwnIssuer`), so with 64 subscribers and 64 connections every call
in flight is a different subscriber: on the cold instance every call misses the plan cache and
pays one `eth_call` (no coalescing), which the run checks from the gateway's counters. Each round
(and the warm-up, and the c1 rounds) uses its own 64 subscribers, so every measured round starts
on ledger accounts without charge history: the ledger's per-call cost grows with that history
(measured on its own by bench/scale.py (e)), and the rounds must not depend on their order.

Measured with `wrk -t1 -c64 -d<N>s --latency`, the targets ALTERNATING in rounds (each round
rotates the order), the median round reported per target: req/s, p50, p99, and the ratios to the
nginx proxy, to the bare aiohttp proxy and to the gateway's open path. Then the latency at
concurrency 1 (`wrk -c1`), also in alternating rounds: the added median of a protected call (and of
the bare proxy and the open path) over the upstream direct. After the run,
the ledgers are checked (every protected call wrk counted is a charge; none is left reserved).

Unless `--no-scale`, `bench/scale.py`'s checks follow in the same run (SSE streams, eth_calls,
start-up). The Markdown section (machine line, command, tables, every issue-7 target with its
figure) is prepended to `bench/RESULTS.md` (newest on top); the raw figures go to
`bench/results/suite-<UTC time>.json`.

    bench/run [--duration 10] [--rounds 3] [--workers N] [--quick] [--no-scale] [--no-results]
              [--gateway-log-level LEVEL]
"""

from __future__ import annotations

import argparse
import datetime as dt
import hashlib
import json
import os
import platform
import re
import shutil
import signal
import sqlite3
import statistics
import subprocess
import sys
import tempfile
import time
import urllib.error
import urllib.request
from contextlib import ExitStack
from pathlib import Path
from typing import Any

REPO = Path(__file__).resolve().parents[1]
if str(REPO) not in sys.path:  # `python bench/suite.py` puts bench/, not the repo, on the path
    sys.path.insert(0, str(REPO))

import yaml  # noqa: E402
from eth_account import Account  # noqa: E402
from web3 import Web3  # noqa: E402

from bench.latency import Child, admin_counters, machine  # noqa: E402
from gateway.config.load import load_config  # noqa: E402
from gateway.dev.chain import DEV_ACCOUNTS, Anvil, DevChain, free_port, load_artifact  # noqa: E402
from gateway.auth.issuer import OwnIssuer, generate_signing_key  # noqa: E402

BENCH = REPO / "bench"
RESULTS_MD = BENCH / "RESULTS.md"
HOST = "bench.proxy.localhost"          # the gateway routes `<service id>.<base_domain>` to the service
SERVICE = "bench"
OPEN_PATH, PAID_PATH = "/open", "/paid"
OWNER = DEV_ACCOUNTS[1][0]              # the service owner (never charged)
OPERATOR, OPERATOR_KEY = DEV_ACCOUNTS[0]  # deployed the plan: minter and burner
TOKEN_ID = 1
CREDITS = 10**12
UPSTREAM_BODY = '{"ok":true,"from":"nginx upstream","note":"a fixed small JSON body"}'
UPSTREAM_SECRET = "bench-upstream-secret"


class BenchFailed(Exception):
    """Something answered wrongly or a check failed: the run stops and says what."""


# --- processes -----------------------------------------------------------------------------------

def descendants(pid: int) -> list[int]:
    """Every live descendant of `pid` (via /proc/<pid>/task/*/children)."""
    out, todo = [], [pid]
    while todo and len(out) < 10_000:
        p = todo.pop()
        for task in Path(f"/proc/{p}/task").glob("*"):
            try:
                kids = [int(x) for x in (task / "children").read_text().split()]
            except OSError:
                continue
            out.extend(kids)
            todo.extend(kids)
    return out


def stop_tree(child: Child, timeout: float = 60.0) -> int | None:
    """SIGTERM the child (it stops its own workers), then SIGKILL any descendant still alive."""
    pids = descendants(child.proc.pid) if child.proc.poll() is None else []
    rc = child.stop(timeout=timeout)
    for pid in pids:
        try:
            os.kill(pid, signal.SIGKILL)
        except ProcessLookupError:
            pass
    return rc


_TICKS = os.sysconf("SC_CLK_TCK")


def cpu_seconds(pids: list[int]) -> float:
    """User + system CPU time of `pids` (those alive), from /proc/<pid>/stat."""
    total = 0
    for pid in pids:
        try:
            fields = Path(f"/proc/{pid}/stat").read_text().rsplit(")", 1)[1].split()
        except OSError:
            continue
        total += int(fields[11]) + int(fields[12])
    return total / _TICKS


def vm_kb(pid: int, field: str = "VmRSS") -> int:
    """A /proc/<pid>/status field in kB (0 when the process is gone)."""
    try:
        for line in Path(f"/proc/{pid}/status").read_text().splitlines():
            if line.startswith(field + ":"):
                return int(line.split()[1])
    except OSError:
        pass
    return 0


def pss_kb(pid: int) -> int:
    try:
        for line in Path(f"/proc/{pid}/smaps_rollup").read_text().splitlines():
            if line.startswith("Pss:"):
                return int(line.split()[1])
    except OSError:
        pass
    return 0


def tree_memory(pid: int) -> dict[str, Any]:
    """RSS (and PSS, which splits pages shared after fork) of `pid` and all its descendants, in MB."""
    pids = [pid, *descendants(pid)]
    rss = {p: vm_kb(p) for p in pids}
    return {"pids": pids, "rss_mb": sum(rss.values()) / 1024, "rss_mb_each": {p: v / 1024 for p, v in rss.items()},
            "pss_mb": sum(pss_kb(p) for p in pids) / 1024}


def listening_sockets(port: int) -> int:
    """How many sockets LISTEN on `port` (the gateway's workers share one)."""
    n = 0
    for table in ("/proc/net/tcp", "/proc/net/tcp6"):
        try:
            lines = Path(table).read_text().splitlines()[1:]
        except OSError:
            continue
        for line in lines:
            parts = line.split()
            if len(parts) > 3 and parts[3] == "0A" and int(parts[1].rsplit(":", 1)[1], 16) == port:
                n += 1
    return n


class BareProxy:
    """bench/bare_proxy.py: the bare aiohttp reverse proxy (the open path's floor), `workers` processes."""

    def __init__(self, stack: ExitStack, workers: int, upstream: str) -> None:
        self.port = free_port()
        self.child = Child([sys.executable, str(BENCH / "bare_proxy.py"), "--port", str(self.port),
                            "--upstream", upstream, "--workers", str(workers)], ready=r"listening on")
        stack.callback(lambda: stop_tree(self.child, timeout=10))
        self.url = f"http://127.0.0.1:{self.port}"


class Nginx:
    """nginx from a template in bench/nginx/, in its own prefix dir, `daemon off`, stopped by PID."""

    def __init__(self, stack: ExitStack, workdir: Path, template: str, **values: Any) -> None:
        binary = shutil.which("nginx") or "/usr/sbin/nginx"
        self.port = free_port()
        self.dir = workdir / f"nginx-{template}"
        for sub in ("body", "proxy", "fastcgi", "uwsgi", "scgi"):
            (self.dir / "tmp" / sub).mkdir(parents=True, exist_ok=True)
        text = (BENCH / "nginx" / f"{template}.conf").read_text()
        for key, value in {"DIR": self.dir, "PORT": self.port, **values}.items():
            text = text.replace(f"@{key}@", str(value))
        if "@" in re.sub(r"#.*", "", text):
            raise BenchFailed(f"unfilled placeholder in bench/nginx/{template}.conf")
        self.conf = self.dir / f"{template}.conf"
        self.conf.write_text(text)
        self.child = Child([binary, "-p", str(self.dir), "-c", str(self.conf), "-e", str(self.dir / "error.log")],
                           port=self.port)
        stack.callback(lambda: stop_tree(self.child, timeout=10))
        self.url = f"http://127.0.0.1:{self.port}"


class GatewayChild(Child):
    """`gateway serve`, ready when admin /healthz answers 200 AND the public port listens.

    Records `startup`: seconds from just before the process was started to the first /healthz 200,
    and to the public socket listening (bound once by the parent and shared by the workers, which
    take connections from it as each gets ready; slot 0 answers /healthz). Polled with a deadline, pausing
    5 ms between attempts on the child itself (returns at once if it exits)."""

    def __init__(self, cmd: list[str], admin_port: int, port: int, workers: int, env: dict[str, str] | None = None,
                 timeout: float = 60.0, log_file: Path | None = None) -> None:
        self.admin_port, self.public_port, self.workers = admin_port, port, workers
        self.log_file = log_file
        self.t0 = time.perf_counter()
        self.startup: dict[str, float] = {}
        super().__init__(cmd, env=env, port=admin_port, timeout=timeout)

    def _wait_port(self, timeout: float) -> None:
        deadline = time.monotonic() + timeout
        url = f"http://127.0.0.1:{self.admin_port}/healthz"
        while True:
            now = time.perf_counter() - self.t0
            if "healthz_s" not in self.startup:
                try:
                    with urllib.request.urlopen(url, timeout=1) as resp:
                        if resp.status == 200:
                            self.startup["healthz_s"] = now
                except (OSError, urllib.error.URLError):
                    pass
            if "public_listening_s" not in self.startup and listening_sockets(self.public_port) >= 1:
                self.startup["public_listening_s"] = now
            if len(self.startup) == 2:
                self.startup["ready_s"] = max(self.startup.values())
                return None
            if time.monotonic() > deadline:
                raise TimeoutError(f"gateway not ready in {timeout}s ({self.startup}):\n" + "\n".join(self.tail(30)))
            try:
                self.proc.wait(timeout=0.005)
            except subprocess.TimeoutExpired:
                continue
            raise RuntimeError(f"gateway exited ({self.proc.returncode}) before ready:\n" + "\n".join(self.tail(30)))

    def tail(self, lines: int = 20) -> list[str]:
        """The last output lines (from the log file when the output goes there)."""
        return file_tail(self.log_file, lines) if self.log_file is not None else self.lines[-lines:]


def gateway_config(*, workers: int, rpc_url: str, plan: str, upstream: str, key_file: Path, ledger: Path,
                   plan_cache: dict | None = None, open_endpoints: list | None = None,
                   protected_endpoints: list | None = None, timeout: str = "60s", log_level: str | None = None) -> dict:
    """The config dict of one benchmark gateway (one service, metering on, settle_every 1h).

    `log_level` None: the config's default (`info`: one access-log line per request, as in production)."""
    data: dict[str, Any] = {
        "listen": f"127.0.0.1:{free_port()}",
        "admin_listen": f"127.0.0.1:{free_port()}",
        "workers": workers,
        "public_scheme": "http",
        "base_domain": "proxy.localhost",
        "chains": {"local": {"chain_id": 31337, "rpc_urls": [rpc_url], "timeout": "2s"}},
        "tokens": {"own": {"issuer": "http://gateway.proxy.localhost", "signing_key_file": str(key_file)}},
        "services": {SERVICE: {
            "upstream": upstream,
            "upstream_auth": {"type": "bearer", "token": UPSTREAM_SECRET},
            "owner": OWNER,
            "timeout": timeout,
            "open_endpoints": open_endpoints or [f"GET {OPEN_PATH}"],
            "protected_endpoints": protected_endpoints or [f"GET {PAID_PATH}"],
            "plan": {"chain": "local", "standard": "erc1155", "contract": plan, "token_id": TOKEN_ID, "credits": 1,
                     "checkout_url": "https://example.com/buy/bench"},
        }},
        "metering": {"ledger": f"sqlite:///{ledger}", "operator_key": OPERATOR_KEY, "settle_every": "1h"},
    }
    if plan_cache:
        data["plan_cache"] = plan_cache
    if log_level:
        data["log"] = {"level": log_level}
    return data


class Gateway:
    """A `gateway serve` process from a config dict; stopped (with its workers) on `stack` exit."""

    def __init__(self, stack: ExitStack, workdir: Path, name: str, data: dict) -> None:
        self.name, self.data = name, data
        self.path = workdir / f"{name}.yaml"
        self.path.write_text(yaml.safe_dump(data, sort_keys=False))
        self.config = load_config(self.path)
        self.port, self.admin_port = self.config.listen.port, self.config.admin_listen.port
        self.workers = self.config.workers
        self.ledger = Path(data["metering"]["ledger"][len("sqlite:///"):])
        # Why a file and not the pipe ChildProcess reads: at the default log level every request writes
        # a line, and a Python thread in this process reading (and keeping) millions of lines would
        # compete with what is measured for the 2 cores. A file is what a log collector's pipe costs the
        # gateway at most; `output_tail` reads its end. `exec`: the pid is the gateway's own.
        self.log_file = workdir / f"{name}.log"
        cmd = ["sh", "-c", 'exec "$@" >>"$0" 2>&1', str(self.log_file),
               sys.executable, "-m", "gateway", "serve", "--config", str(self.path)]
        self.child = GatewayChild(cmd, admin_port=self.admin_port, port=self.port, workers=self.workers,
                                  log_file=self.log_file)
        stack.callback(self.stop)
        self.url = f"http://127.0.0.1:{self.port}"
        self.admin = f"http://127.0.0.1:{self.admin_port}"

    @property
    def startup(self) -> dict[str, float]:
        return self.child.startup

    def stop(self) -> int | None:
        return stop_tree(self.child, timeout=90)

    def memory(self) -> dict[str, Any]:
        return tree_memory(self.child.proc.pid)

    def metrics(self) -> dict[str, float]:
        """Counters from admin /metrics (worker 0 only: the admin listener lives there)."""
        return admin_counters(self.admin, r"gateway_(plan_cache|plan_checks|plan_rpc|requests_total|rpc)")

    def settle(self) -> dict:
        req = urllib.request.Request(self.admin + "/settle", data=b"", method="POST")
        with urllib.request.urlopen(req, timeout=300) as resp:
            return json.loads(resp.read())

    def ledger_counts(self) -> dict[str, int]:
        with sqlite3.connect(f"file:{self.ledger}?mode=ro", uri=True, timeout=30) as conn:
            charges, credits = conn.execute("SELECT COUNT(*), COALESCE(SUM(amount), 0) FROM charges").fetchone()
            (reserved,) = conn.execute("SELECT COUNT(*) FROM reservations").fetchone()
        return {"charges": charges, "charged_credits": credits, "open_reservations": reserved}


def file_tail(path: Path, lines: int = 20) -> list[str]:
    try:
        with path.open("rb") as f:
            f.seek(max(0, f.seek(0, os.SEEK_END) - 64 * 1024))
            return f.read().decode(errors="replace").splitlines()[-lines:]
    except OSError:
        return []


def output_tail(*gateways: Gateway) -> str:
    return "\n".join(f"--- {g.name} (last 20 lines of {g.log_file})\n" + "\n".join(g.child.tail(20))
                     for g in gateways)


# --- chain -----------------------------------------------------------------------------------------

def subscriber_addresses(n: int, tag: str = "bench") -> list[str]:
    """Deterministic addresses that only hold credits (they never sign)."""
    return [Web3.to_checksum_address("0x" + hashlib.sha256(f"{tag}-{i}".encode()).hexdigest()[:40])
            for i in range(n)]


def mint_many(chain: DevChain, plan: str, holders: list[str], amount: int) -> None:
    """Mint `amount` to every holder: all transactions sent first (explicit nonces), then the
    receipts collected; much faster than one DevChain.mint_credits round trip per holder."""
    w3 = chain.w3
    sender = Account.from_key(OPERATOR_KEY)
    contract = w3.eth.contract(address=plan, abi=load_artifact("CreditsPlan")["abi"])
    nonce = w3.eth.get_transaction_count(sender.address, "pending")
    common = {"from": sender.address, "chainId": w3.eth.chain_id, "gasPrice": 2 * w3.eth.gas_price}
    gas = 2 * contract.functions.mint(holders[0], TOKEN_ID, amount).estimate_gas({"from": sender.address})
    hashes = []
    for k, holder in enumerate(holders):
        tx = contract.functions.mint(holder, TOKEN_ID, amount).build_transaction({**common, "nonce": nonce + k, "gas": gas})
        hashes.append(w3.eth.send_raw_transaction(sender.sign_transaction(tx).raw_transaction))
    for h in hashes:
        if w3.eth.wait_for_transaction_receipt(h, timeout=60, poll_latency=0.01)["status"] != 1:
            raise BenchFailed(f"mint {h.hex()} reverted")
    for holder in (holders[0], holders[-1]):
        if chain.credits_of(plan, holder, TOKEN_ID) < amount:
            raise BenchFailed(f"{holder} was not minted {amount} credits")


def issue_tokens(config_path: Path, subscribers: list[str]) -> list[str]:
    issuer = OwnIssuer(load_config(config_path).tokens.own)
    return [issuer.issue(s, [SERVICE]) for s in subscribers]


# --- wrk -------------------------------------------------------------------------------------------

_UNITS = {"us": 1e-3, "ms": 1.0, "s": 1e3, "m": 60e3}


def _ms(value: str, unit: str) -> float:
    return float(value) * _UNITS[unit]


def parse_wrk(text: str) -> dict[str, Any]:
    out: dict[str, Any] = {}
    m = re.search(r"Requests/sec:\s+([\d.]+)", text)
    out["rps"] = float(m.group(1)) if m else 0.0
    m = re.search(r"(\d+) requests in ([\d.]+)(us|ms|s|m)", text)
    out["requests"] = int(m.group(1)) if m else 0
    out["seconds"] = _ms(m.group(2), m.group(3)) / 1000 if m else 0.0
    for pct in ("50", "75", "90", "99"):
        m = re.search(rf"^\s+{pct}%\s+([\d.]+)(us|ms|s|m)\s*$", text, re.M)
        out[f"p{pct}_ms"] = _ms(m.group(1), m.group(2)) if m else None
    m = re.search(r"Non-2xx or 3xx responses:\s+(\d+)", text)
    out["non_2xx"] = int(m.group(1)) if m else 0
    m = re.search(r"Socket errors: connect (\d+), read (\d+), write (\d+), timeout (\d+)", text)
    out["socket_errors"] = dict(zip(("connect", "read", "write", "timeout"), map(int, m.groups()))) if m else {}
    return out


class Target:
    """One thing wrk hits: a URL, its headers or token script, and which gateway (if any) answers."""

    def __init__(self, name: str, label: str, url: str, headers: dict[str, str] | None = None,
                 tokens_file: Path | None = None, gateway: Gateway | None = None, protected: bool = False,
                 root_pid: int | None = None) -> None:
        self.name, self.label, self.url, self.headers = name, label, url, headers or {}
        self.tokens_file, self.gateway, self.protected = tokens_file, gateway, protected
        self.counted = 0  # requests wrk counted as answered (protected targets: each one is a charge)
        # The process tree whose CPU time a run costs (the target's own, not its upstream's).
        self.root_pid = root_pid if root_pid is not None else (gateway.child.proc.pid if gateway else None)

    def wrk(self, connections: int, seconds: float) -> dict[str, Any]:
        cmd = ["wrk", "-t1", f"-c{connections}", f"-d{seconds:g}s", "--latency", "--timeout", "10s"]
        for k, v in self.headers.items():
            cmd += ["-H", f"{k}: {v}"]
        if self.tokens_file is not None:
            cmd += ["-s", str(BENCH / "wrk" / "tokens.lua"), self.url, "--", str(self.tokens_file), HOST]
        else:
            cmd.append(self.url)
        pids = [self.root_pid, *descendants(self.root_pid)] if self.root_pid is not None else []
        cpu_before = cpu_seconds(pids)
        proc = subprocess.run(cmd, capture_output=True, text=True, timeout=seconds + 60)
        cpu = cpu_seconds(pids) - cpu_before
        result = parse_wrk(proc.stdout)
        result["connections"] = connections
        # CPU per answered request: a figure the other jobs on a shared machine disturb far less than req/s.
        result["cpu_us_per_request"] = 1e6 * cpu / result["requests"] if pids and result["requests"] else None
        if proc.returncode != 0 or not result["requests"]:
            raise BenchFailed(f"{self.name}: wrk failed ({proc.returncode}):\n{proc.stdout}\n{proc.stderr}"
                              + (f"\n{output_tail(self.gateway)}" if self.gateway else ""))
        if result["non_2xx"]:
            raise BenchFailed(f"{self.name}: {result['non_2xx']} non-2xx answers:\n{proc.stdout}"
                              + (f"\n{output_tail(self.gateway)}" if self.gateway else ""))
        self.counted += result["requests"]
        return result


def check_once(target: Target) -> None:
    """One request by hand: 200, the upstream's body, and a charge of 1 on the protected targets."""
    headers = dict(target.headers)
    if target.tokens_file is not None:
        headers = {"Host": HOST, "Authorization": "Bearer " + target.tokens_file.read_text().split()[0]}
    req = urllib.request.Request(target.url, headers=headers)
    try:
        with urllib.request.urlopen(req, timeout=10) as resp:
            status, body, got = resp.status, resp.read().decode(), dict(resp.headers)
    except urllib.error.HTTPError as err:
        status, body, got = err.code, err.read().decode(errors="replace"), dict(err.headers)
    ok = status == 200 and body == UPSTREAM_BODY
    if target.protected:
        ok = ok and got.get("X-Credits-Charged") == "1"
    if not ok:
        raise BenchFailed(f"{target.name}: GET {target.url} -> {status} {got}\n{body[:2000]}"
                          + (f"\n{output_tail(target.gateway)}" if target.gateway else ""))
    target.counted += 1


# --- the run ---------------------------------------------------------------------------------------

def rounds(targets: list[Target], n_rounds: int, connections: int, seconds: float,
           log=print, token_files: list[Path] | None = None) -> dict[str, list[dict]]:
    """`n_rounds` rounds; each runs every target once, the order rotated by one each round.
    With `token_files`, the token-rotating targets use `token_files[r]` in round r."""
    runs: dict[str, list[dict]] = {t.name: [] for t in targets}
    k = len(targets)
    for r in range(n_rounds):
        for j in range(k):
            t = targets[(r + j) % k]
            if token_files is not None and t.tokens_file is not None:
                t.tokens_file = token_files[r]
            res = t.wrk(connections, seconds)
            res["round"] = r
            runs[t.name].append(res)
            log(f"  round {r + 1}/{n_rounds} c={connections} {t.name:<16} {res['rps']:>10.0f} req/s  "
                f"p50 {res['p50_ms']:.3f} ms  p99 {res['p99_ms']:.3f} ms")
    return runs


def median_round(runs: list[dict]) -> dict[str, Any]:
    """The round with the median req/s (the lower middle for an even count), plus the spread."""
    ordered = sorted(runs, key=lambda r: r["rps"])
    mid = ordered[(len(ordered) - 1) // 2]
    rps = [r["rps"] for r in runs]
    cpu = [r["cpu_us_per_request"] for r in runs if r.get("cpu_us_per_request") is not None]
    return {**mid, "rounds_rps": rps, "rps_min": min(rps), "rps_max": max(rps),
            "p50_ms_median": statistics.median(r["p50_ms"] for r in runs),
            "p99_ms_median": statistics.median(r["p99_ms"] for r in runs),
            "cpu_us_median": statistics.median(cpu) if cpu else None}


def throughput(args: argparse.Namespace, log=print) -> dict[str, Any]:
    with ExitStack() as stack:
        t_setup = time.perf_counter()
        work = Path(stack.enter_context(tempfile.TemporaryDirectory(prefix="gateway-suite-")))
        os.chmod(work, 0o755)  # nginx workers (user nobody) read their prefix dir
        anvil = stack.enter_context(Anvil())
        chain = DevChain(anvil.rpc_url)
        plan = chain.deploy_credits_plan()
        # One set of subscribers per use (warm-up, each c64 round, the c1 rounds): every measured round
        # starts on ledger accounts with no charge history, because the ledger's per-call sums grow
        # with an account's history (bench/scale.py (e)); otherwise the figure would depend on the order.
        sets = ["warmup", *(f"round{r}" for r in range(args.rounds)), "c1"]
        subs = {name: subscriber_addresses(args.subscribers, name) for name in sets}
        mint_many(chain, plan, [a for name in sets for a in subs[name]], CREDITS)

        upstream = Nginx(stack, work, "upstream", BODY=UPSTREAM_BODY)
        proxy = Nginx(stack, work, "proxy", WORKERS=args.workers, UPSTREAM_PORT=upstream.port)
        key_file = work / "signing-key.pem"
        generate_signing_key(key_file, "ES256")
        bare = BareProxy(stack, args.workers, upstream.url)
        common = dict(workers=args.workers, rpc_url=anvil.rpc_url, plan=plan, upstream=upstream.url, key_file=key_file,
                      log_level=args.gateway_log_level)
        warm = Gateway(stack, work, "gateway", gateway_config(ledger=work / "ledger.db", **common))
        cold = Gateway(stack, work, "gateway-cold", gateway_config(
            ledger=work / "ledger-cold.db", plan_cache={"ttl": "1ms", "negative_ttl": "1ms"}, **common))
        token_files = {}
        for name in sets:
            token_files[name] = work / f"tokens-{name}.txt"
            token_files[name].write_text("\n".join(issue_tokens(warm.path, subs[name])) + "\n")
        tokens_file = token_files["warmup"]
        host = {"Host": HOST}
        targets = [
            Target("upstream", "upstream direct (nginx, 1 worker)", upstream.url + OPEN_PATH,
                   root_pid=upstream.child.proc.pid),
            Target("nginx_proxy", f"nginx plain proxy ({args.workers} workers)", proxy.url + OPEN_PATH,
                   root_pid=proxy.child.proc.pid),
            Target("aiohttp_proxy", f"bare aiohttp proxy ({args.workers} workers, uvloop)", bare.url + OPEN_PATH, host,
                   root_pid=bare.child.proc.pid),
            Target("gateway_open", "gateway, open endpoint", warm.url + OPEN_PATH, host, gateway=warm),
            Target("gateway_protected", "gateway, protected (plan cached)", warm.url + PAID_PATH,
                   tokens_file=tokens_file, gateway=warm, protected=True),
            Target("gateway_cold", "gateway, protected, plan cache cold", cold.url + PAID_PATH,
                   tokens_file=tokens_file, gateway=cold, protected=True),
        ]
        by_name = {t.name: t for t in targets}
        setup_s = time.perf_counter() - t_setup
        log(f"stack up in {setup_s:.1f}s: upstream {upstream.url}, nginx proxy {proxy.url}, gateway {warm.url} and "
            f"{cold.url} (cold plan cache), {args.workers} workers, {args.subscribers} subscribers per round; "
            f"gateway ready in {warm.startup['ready_s']:.2f}s")
        for t in targets:
            check_once(t)
        log(f"warm-up: {args.warmup:g}s per target")
        for t in targets:
            t.wrk(args.connections, args.warmup)
        metrics_before = {g.name: g.metrics() for g in (warm, cold)}
        load_before = Path("/proc/loadavg").read_text().split()[:3]

        log(f"throughput: {args.rounds} rounds x {len(targets)} targets, wrk -t1 -c{args.connections} -d{args.duration:g}s")
        tp = rounds(targets, args.rounds, args.connections, args.duration, log,
                    token_files=[token_files[f"round{r}"] for r in range(args.rounds)])
        c1_targets = [by_name["upstream"], by_name["aiohttp_proxy"], by_name["gateway_open"], by_name["gateway_protected"]]
        log(f"latency: {args.rounds} rounds x {len(c1_targets)} targets, wrk -t1 -c1 -d{args.c1_duration:g}s")
        c1 = rounds(c1_targets, args.rounds, 1, args.c1_duration, log, token_files=[token_files["c1"]] * args.rounds)
        load_after = Path("/proc/loadavg").read_text().split()[:3]
        metrics_after = {g.name: g.metrics() for g in (warm, cold)}
        memory = {g.name: g.memory() for g in (warm, cold)}

        ledgers = {}
        for g, t in ((warm, by_name["gateway_protected"]), (cold, by_name["gateway_cold"])):
            counts = g.ledger_counts()
            # wrk stops with up to -c calls in flight: those may be charged without wrk counting them.
            slack = args.connections * (1 + 2 * args.rounds)
            # Calls cut off by wrk's stop may also leave a reservation open until it expires
            # (reported, not failed: see the RESULTS notes).
            counts.update(wrk_counted=t.counted, ok=t.counted <= counts["charges"] <= t.counted + slack
                          and counts["open_reservations"] <= slack)
            ledgers[g.name] = counts
        bad = {k: v for k, v in ledgers.items() if not v["ok"]}
        if bad:
            raise BenchFailed(f"ledger check failed (charges vs calls wrk counted): {bad}")
        startup = {g.name: g.startup for g in (warm, cold)}
        log_bytes = {g.name: g.log_file.stat().st_size if g.log_file.exists() else 0 for g in (warm, cold)}

    summary = {name: median_round(runs) for name, runs in tp.items()}
    base_proxy, base_open = summary["nginx_proxy"]["rps"], summary["gateway_open"]["rps"]
    base_bare = summary["aiohttp_proxy"]["rps"]
    for s in summary.values():
        s["vs_nginx_proxy"] = s["rps"] / base_proxy
        s["vs_aiohttp_proxy"] = s["rps"] / base_bare
        s["vs_gateway_open"] = s["rps"] / base_open
    c1_summary = {name: median_round(runs) for name, runs in c1.items()}
    up = statistics.median(r["p50_ms"] for r in c1["upstream"])
    added = {name: statistics.median(r["p50_ms"] for r in c1[name]) - up
             for name in ("aiohttp_proxy", "gateway_open", "gateway_protected")}
    # the added median per round (same round, back to back), for the spread
    per_round = [c1["gateway_protected"][r]["p50_ms"] - c1["upstream"][r]["p50_ms"] for r in range(args.rounds)]
    plan_cache = {}
    for g in ("gateway", "gateway-cold"):
        diff = {}
        for k, v in metrics_after[g].items():
            # gateway_plan_checks_total{result=...} and gateway_plan_rpc_calls_total (the older
            # gateway_plan_cache_total{outcome=...} of earlier versions is read too)
            if k.startswith(("gateway_plan_cache", "gateway_plan_checks_total", "gateway_plan_rpc_calls_total")):
                outcome = re.search(r'(?:outcome|result)="(\w+)"', k)
                name = outcome.group(1) if outcome else ("rpc_calls" if "rpc_calls" in k else k)
                diff[name] = diff.get(name, 0.0) + v - metrics_before[g].get(k, 0.0)
        plan_cache[g] = diff
    return {
        "targets": {t.name: t.label for t in targets}, "throughput_runs": tp, "throughput": summary,
        "c1_runs": c1, "c1": c1_summary, "c1_added_median_ms": added, "c1_added_per_round_ms": per_round,
        "plan_cache_worker0": plan_cache, "ledgers": ledgers, "gateway_memory_after": memory,
        "gateway_startup": startup, "loadavg": {"before": load_before, "after": load_after}, "setup_s": setup_s,
        "gateway_log_level": args.gateway_log_level or "info (the config default)",
        "gateway_log_bytes": log_bytes,
    }


# --- report ----------------------------------------------------------------------------------------

def code_fingerprint() -> str:
    """A short hash of the gateway's source as it is on disk now (others may edit it during a run:
    each `gateway serve` started imports what is there at that moment)."""
    h = hashlib.sha256()
    for f in sorted((REPO / "gateway").rglob("*.py")):
        h.update(str(f.relative_to(REPO)).encode() + b"\0" + f.read_bytes() + b"\0")
    return h.hexdigest()[:12]


def fingerprint_note(start: str, end: str) -> str:
    if start == end:
        return f"Gateway source fingerprint {start} (unchanged during the run)."
    return (f"**The gateway's source changed during this run** (fingerprint {start} at the start, {end} at the "
            "end): its figures mix two versions of the code.")


def fmt_int(x: float) -> str:
    return f"{x:,.0f}"


def machine_line(info: dict, started: dt.datetime) -> str:
    # `git status --short` lines: count the changes outside bench/ (this suite's own files don't matter)
    dirty = [ln for ln in info.get("git_dirty_files", []) if not ln[3:].startswith("bench/")]
    return (f"nproc {info['nproc']}, {info['cpu']}, Python {info['python']}, kernel {platform.release()}, "
            f"{started.strftime('%Y-%m-%d %H:%M UTC')}, git {info['git_head']}"
            + (f" + {len(dirty)} uncommitted file(s) outside bench/" if dirty else "")
            + f", aiohttp {info['aiohttp']}, uvloop {info['uvloop']}, {wrk_version()}, {nginx_version()}")


def wrk_version() -> str:
    try:
        out = subprocess.run(["wrk", "-v"], capture_output=True, text=True, timeout=10)
        m = re.search(r"wrk (\S+)", out.stdout + out.stderr)
        return f"wrk {m.group(1)}" if m else "wrk"
    except OSError:
        return "wrk ?"


def nginx_version() -> str:
    try:
        out = subprocess.run([shutil.which("nginx") or "/usr/sbin/nginx", "-v"], capture_output=True, text=True, timeout=10)
        return (out.stderr or out.stdout).strip().replace("nginx version: ", "")
    except OSError:
        return "nginx ?"


def throughput_md(r: dict, args: argparse.Namespace) -> list[str]:
    tp = r["throughput"]
    lines = [
        f"Throughput, `wrk -t1 -c{args.connections} -d{args.duration:g}s --latency`, {args.rounds} rounds alternating "
        f"the targets (median round; all rounds in the last column):",
        "",
        "| target | req/s | p50 ms | p99 ms | / nginx proxy | / aiohttp proxy | / gateway open | CPU µs / request "
        "(median round) | req/s of each round |",
        "|---|---:|---:|---:|---:|---:|---:|---:|---|",
    ]
    for name, label in r["targets"].items():
        s = tp[name]
        cpu = "" if s.get("cpu_us_median") is None else f"{s['cpu_us_median']:.0f}"
        lines.append(f"| {label} | {fmt_int(s['rps'])} | {s['p50_ms']:.2f} | {s['p99_ms']:.2f} | "
                     f"{s['vs_nginx_proxy']:.2f}x | {s['vs_aiohttp_proxy']:.2f}x | {s['vs_gateway_open']:.2f}x | {cpu} | "
                     f"{', '.join(fmt_int(x) for x in s['rounds_rps'])} |")
    c1 = r["c1"]
    lines += [
        "",
        f"Latency at concurrency 1, `wrk -t1 -c1 -d{args.c1_duration:g}s --latency`, {args.rounds} rounds alternating "
        "(median of the rounds' p50):",
        "",
        "| target | p50 ms | p99 ms | added p50 over upstream direct | req/s |",
        "|---|---:|---:|---:|---:|",
    ]
    for name in ("upstream", "aiohttp_proxy", "gateway_open", "gateway_protected"):
        s = c1[name]
        added = r["c1_added_median_ms"].get(name)
        lines.append(f"| {r['targets'][name]} | {s['p50_ms_median']:.3f} | {s['p99_ms_median']:.3f} | "
                     f"{'' if added is None else f'+{added:.3f} ms'} | {fmt_int(s['rps'])} |")
    pc = r["plan_cache_worker0"]
    led = r["ledgers"]
    lines += [
        "",
        "Checks: plan cache counters of worker 0 during the measured rounds (admin /metrics is worker 0's): "
        + "; ".join(f"{g}: " + ", ".join(f"{k} {v:,.0f}" for k, v in sorted(d.items()) if v) for g, d in pc.items())
        + ". Ledgers after the run: "
        + "; ".join(f"{g}: {v['charges']:,} charges for {v['wrk_counted']:,} protected calls counted by wrk, "
                    f"{v['open_reservations']} open reservations" for g, v in led.items())
        + f". Load average {' '.join(r['loadavg']['before'])} before the rounds, {' '.join(r['loadavg']['after'])} after."
        + f" Gateway log level: {r['gateway_log_level']}; log written (to a file): "
        + ", ".join(f"{g} {v / 1e6:,.0f} MB" for g, v in r["gateway_log_bytes"].items()) + ".",
    ]
    return lines


def targets_md(r: dict, scale: dict | None) -> list[str]:
    tp = r["throughput"]
    prot = tp["gateway_protected"]
    rows = []

    def row(what: str, goal: str, figure: str, met: bool | None) -> None:
        rows.append(f"| {what} | {goal} | {figure} | {'n/a' if met is None else ('met' if met else '**not met**')} |")

    bare = tp["aiohttp_proxy"]
    row("issue 16: gateway open path / bare aiohttp proxy (same workers, uvloop)", ">= 0.9x",
        f"{tp['gateway_open']['vs_aiohttp_proxy']:.2f}x ({fmt_int(tp['gateway_open']['rps'])} / {fmt_int(bare['rps'])} req/s)",
        tp["gateway_open"]["vs_aiohttp_proxy"] >= 0.9)
    p99_ratio = prot["p99_ms"] / tp["gateway_open"]["p99_ms"]
    if tp["gateway_open"].get("cpu_us_median") and bare.get("cpu_us_median"):
        ratio = bare["cpu_us_median"] / tp["gateway_open"]["cpu_us_median"]
        row("(for reference) the same as CPU per request: bare aiohttp proxy / gateway open path", "(reported)",
            f"{ratio:.2f}x ({bare['cpu_us_median']:.0f} / {tp['gateway_open']['cpu_us_median']:.0f} µs)", None)
    row("issue 16: p99 at c=64, protected / open", "<= 2x",
        f"{p99_ratio:.2f}x ({prot['p99_ms']:.2f} / {tp['gateway_open']['p99_ms']:.2f} ms)", p99_ratio <= 2.0)
    row("protected-call throughput / gateway open path (issues 7 and 16)", ">= 0.9x",
        f"{prot['vs_gateway_open']:.2f}x ({fmt_int(prot['rps'])} / {fmt_int(tp['gateway_open']['rps'])} req/s)",
        prot["vs_gateway_open"] >= 0.9)
    row("protected-call throughput / nginx plain proxy (same workers)", ">= 0.3x",
        f"{prot['vs_nginx_proxy']:.2f}x ({fmt_int(prot['rps'])} / {fmt_int(tp['nginx_proxy']['rps'])} req/s)",
        prot["vs_nginx_proxy"] >= 0.3)
    added = r["c1_added_median_ms"]["gateway_protected"]
    spread = r["c1_added_per_round_ms"]
    row("added median latency, protected call vs upstream direct, concurrency 1", "<= 1 ms",
        f"+{added:.3f} ms (rounds {', '.join(f'{x:+.3f}' for x in spread)})", added <= 1.0)
    row("issue 16: the same added median", "<= 0.5 ms", f"+{added:.3f} ms", added <= 0.5)
    row("(for reference) added median at c=1, open path / bare aiohttp proxy", "(reported)",
        f"+{r['c1_added_median_ms']['gateway_open']:.3f} / +{r['c1_added_median_ms']['aiohttp_proxy']:.3f} ms", None)
    if scale:
        for line in scale.get("target_rows", []):
            rows.append(line)
    else:
        rows.append("| eth_calls, SSE memory, start-up | see bench/scale.py | not run (`--no-scale`) | n/a |")
    return ["| target | goal | measured | |", "|---|---|---|---|", *rows]


def write_results(section: str, path: Path = RESULTS_MD) -> None:
    """Prepend `section` under the file's header (newest on top)."""
    header = ("# Benchmark results\n\nWritten by `bench/run` (bench/suite.py, bench/scale.py), newest on top. "
              "Every figure is from one run on the machine its line names; compare ratios within a run, "
              "not absolute figures across runs (2 shared cores: see bench/README.md).\n")
    old = path.read_text() if path.exists() else header
    head, sep, rest = old.partition("\n## ")
    if not sep:
        head, rest = old.rstrip("\n") + "\n", ""
    path.write_text(head.rstrip("\n") + "\n\n" + section.rstrip("\n") + "\n" + (f"\n## {rest}" if rest else ""))


def parse_args(argv: list[str] | None = None) -> argparse.Namespace:
    p = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    p.add_argument("--duration", type=float, default=None, help="seconds per wrk run at -c64 (default 10, --quick 3)")
    p.add_argument("--c1-duration", type=float, default=None, help="seconds per wrk run at -c1 (default 5, --quick 2)")
    p.add_argument("--rounds", type=int, default=None, help="alternating rounds (default 3)")
    p.add_argument("--warmup", type=float, default=None, help="seconds of wrk per target before the rounds (default 3)")
    p.add_argument("--connections", type=int, default=64)
    p.add_argument("--workers", type=int, default=os.cpu_count() or 1,
                   help="gateway workers, and nginx proxy worker_processes (default: the machine's cores)")
    p.add_argument("--subscribers", type=int, default=64, help="subscribers the protected targets rotate over")
    p.add_argument("--gateway-log-level", default=None,
                   help="the gateways' log level (default: the config's default, info: one access-log line per "
                        "request, as in production; `warning` turns the access log off)")
    p.add_argument("--quick", action="store_true", help="smoke run: short wrk runs, small scale checks")
    p.add_argument("--no-scale", action="store_true", help="skip bench/scale.py's checks")
    p.add_argument("--no-results", action="store_true", help="do not write bench/RESULTS.md (JSON still written)")
    p.add_argument("--json", type=Path, default=None, help="raw results (default bench/results/suite-<UTC>.json)")
    from bench import scale  # noqa: PLC0415  (its options ride along: --streams, --calls, ...)
    scale.add_options(p)
    args = p.parse_args(argv)
    args.duration = args.duration or (3.0 if args.quick else 10.0)
    args.c1_duration = args.c1_duration or (2.0 if args.quick else 5.0)
    args.rounds = args.rounds or (2 if args.quick else 3)
    args.warmup = args.warmup if args.warmup is not None else (1.0 if args.quick else 3.0)
    scale.finish_options(args)
    if args.rounds < 1 or args.connections < 1 or args.workers < 1 or args.subscribers < 1:
        p.error("--rounds, --connections, --workers and --subscribers must be >= 1")
    return args


def main(argv: list[str] | None = None) -> int:
    args = parse_args(argv)
    for tool in ("wrk", "nginx"):
        if not (shutil.which(tool) or Path(f"/usr/sbin/{tool}").exists()):
            print(f"{tool} is not installed: run bench/run (it installs nginx and wrk from Debian)", file=sys.stderr)
            return 2
    info = machine()
    info["gateway_fingerprint_start"] = code_fingerprint()
    started = dt.datetime.now(dt.timezone.utc)
    command = "bench/run " + " ".join(argv if argv is not None else sys.argv[1:])
    print(f"machine: {machine_line(info, started)}", flush=True)
    try:
        result = throughput(args, log=lambda s: print(s, flush=True))
        scale_result = None
        if not args.no_scale:
            from bench import scale  # noqa: PLC0415
            scale_result = scale.run_all(args, log=lambda s: print(s, flush=True))
    except BenchFailed as exc:
        print(f"\nSTOPPED: {exc}", file=sys.stderr)
        return 1
    info["loadavg_after"] = Path("/proc/loadavg").read_text().split()[:3]
    info["gateway_fingerprint_end"] = code_fingerprint()
    note = fingerprint_note(info["gateway_fingerprint_start"], info["gateway_fingerprint_end"])

    section = [f"## {started.strftime('%Y-%m-%d %H:%M UTC')}: `{command.strip()}`", "",
               f"Machine: {machine_line(info, started)}. Load average at the start "
               f"{' '.join(info['loadavg_before'])}, at the end {' '.join(info['loadavg_after'])}. {note}", ""]
    section += targets_md(result, scale_result) + [""]
    section += throughput_md(result, args) + [""]
    if scale_result:
        section += scale_result["markdown"] + [""]
    text = "\n".join(section)
    print("\n" + text)

    stamp = started.strftime("%Y%m%dT%H%M%SZ")
    json_path = args.json or BENCH / "results" / f"suite-{stamp}.json"
    json_path.parent.mkdir(parents=True, exist_ok=True)
    report = {"benchmark": "bench/suite.py", "started_utc": started.isoformat(timespec="seconds"), "command": command,
              "params": {k: (str(v) if isinstance(v, Path) else v) for k, v in vars(args).items()},
              "machine": info, "throughput": result, "scale": {k: v for k, v in (scale_result or {}).items()
                                                               if k not in ("markdown", "target_rows")}}
    json_path.write_text(json.dumps(report, indent=2, default=str) + "\n")
    print(f"raw results: {json_path.relative_to(REPO) if json_path.is_relative_to(REPO) else json_path}")
    if not args.no_results:
        write_results(text)
        print(f"section prepended to {RESULTS_MD.relative_to(REPO)}")
    return 0


if __name__ == "__main__":
    # Run the `bench.suite` module, not this `__main__` copy: bench/scale.py imports bench.suite, and
    # one copy means one BenchFailed class.
    from bench.suite import main as suite_main

    sys.exit(suite_main())
