"""Where a gateway worker's time goes under wrk load: py-spy on every worker, summarized.

py-spy is not a project dependency: install it in a throwaway venv first, e.g.

    python3 -m venv /tmp/pyspy-venv && /tmp/pyspy-venv/bin/pip install py-spy
    .venv/bin/python bench/profile.py --py-spy /tmp/pyspy-venv/bin/py-spy [--workers 1] [--target protected]
        [--connections 64] [--seconds 10] [--subscribers 64] [--out DIR]

Starts what bench/suite.py starts for one gateway (anvil + plan, the nginx fast upstream, `gateway
serve` with metering on, logging at the config's default level `info`: one access-log line per
request, as in production; the protected target rotates over `--subscribers` fresh subscribers), warms
it for 2 s, then runs `wrk -t1 -c<connections> -d<seconds>s` while `py-spy record --idle --threads
--format raw` samples each worker process. Prints, per worker and thread: the share of samples not
parked in the event loop's poll or the executor's queue (uvloop's C-level socket work shows as the
poll, so for the main thread this is a floor), the functions with the most inclusive
time, and the gateway source lines where the samples end (deepest gateway frame: for the SQLite
thread this separates BEGIN IMMEDIATE, COMMIT and each query). The raw py-spy files stay in `--out`.
"""

from __future__ import annotations

import argparse
import collections
import os
import re
import subprocess
import sys
import tempfile
import time
from contextlib import ExitStack
from pathlib import Path

REPO = Path(__file__).resolve().parents[1]
if str(REPO) not in sys.path:
    sys.path.insert(0, str(REPO))

from bench.suite import (  # noqa: E402
    CREDITS, HOST, OPEN_PATH, PAID_PATH, UPSTREAM_BODY, Gateway, Nginx, Target, descendants, gateway_config,
    issue_tokens, mint_many, subscriber_addresses,
)
from gateway.dev.chain import Anvil, DevChain  # noqa: E402
from gateway.auth.issuer import generate_signing_key  # noqa: E402

# A sample whose innermost frame is one of these is a thread waiting for work, not working.
IDLE_LEAVES = ("Runner.run (asyncio/runners.py", "run (uvloop/", "_worker (concurrent/futures/thread.py",
               "Thread.wait", "Condition.wait", "select (selectors.py", "Event.wait")


def summarize(path: Path, top: int = 25) -> str:
    threads: dict[str, collections.Counter] = collections.defaultdict(collections.Counter)
    totals: collections.Counter = collections.Counter()
    idle: collections.Counter = collections.Counter()
    lines: dict[str, collections.Counter] = collections.defaultdict(collections.Counter)
    for raw in path.read_text().splitlines():
        stack, _, count = raw.rpartition(" ")
        if not stack or not count.isdigit():
            continue
        n = int(count)
        frames = stack.split(";")
        thread = re.sub(r"\s*\(\d+\)", "", frames[0]).replace("thread", "").strip(" :") or "?"
        frames = frames[1:]
        totals[thread] += n
        if not frames or frames[-1].startswith(IDLE_LEAVES):
            idle[thread] += n
            continue
        seen = set()
        for f in frames:
            name = re.sub(r":\d+\)$", ")", f)
            if name not in seen:
                threads[thread][name] += n
                seen.add(name)
        ours = [f for f in frames if "gateway/" in f]
        lines[thread][ours[-1] if ours else frames[-1]] += n
    out = []
    for thread, total in totals.most_common():
        busy = total - idle[thread]
        # "outside the waits": not parked in the loop's poll or the executor's queue. uvloop's own C work
        # (socket reads and writes) also shows as the loop's frame, so the main thread's figure is a floor.
        out.append(f"  thread {thread}: {total} samples, {100 * busy / total:.0f}% outside the waits")
        if not busy:
            continue
        out.append("    inclusive (% of all samples):")
        for name, n in threads[thread].most_common(top):
            if "gateway/" in name or "aiohttp/" in name or "sqlite" in name or "ledger" in name:
                out.append(f"      {100 * n / total:5.1f}%  {name}")
        out.append("    where the busy samples end (deepest gateway frame, % of all samples):")
        for name, n in lines[thread].most_common(12):
            out.append(f"      {100 * n / total:5.1f}%  {name}")
    return "\n".join(out)


def main(argv: list[str] | None = None) -> int:
    p = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    p.add_argument("--py-spy", required=True, help="path of a py-spy binary (not a project dependency)")
    p.add_argument("--workers", type=int, default=1)
    p.add_argument("--target", choices=("protected", "open"), default="protected")
    p.add_argument("--connections", type=int, default=64)
    p.add_argument("--seconds", type=int, default=10)
    p.add_argument("--subscribers", type=int, default=64)
    p.add_argument("--rate", type=int, default=250, help="py-spy samples per second")
    p.add_argument("--out", type=Path, default=None, help="where the raw py-spy files go (default: a new /tmp dir)")
    args = p.parse_args(argv)
    out = args.out or Path(tempfile.mkdtemp(prefix="gateway-profile-"))
    out.mkdir(parents=True, exist_ok=True)
    with ExitStack() as stack:
        work = Path(stack.enter_context(tempfile.TemporaryDirectory(prefix="gateway-profile-run-")))
        os.chmod(work, 0o755)
        anvil = stack.enter_context(Anvil())
        chain = DevChain(anvil.rpc_url)
        plan = chain.deploy_credits_plan()
        subs = subscriber_addresses(args.subscribers, f"profile-{time.time_ns()}")
        mint_many(chain, plan, subs, CREDITS)
        upstream = Nginx(stack, work, "upstream", BODY=UPSTREAM_BODY)
        key = work / "signing-key.pem"
        generate_signing_key(key, "ES256")
        gw = Gateway(stack, work, "gateway", gateway_config(workers=args.workers, rpc_url=anvil.rpc_url, plan=plan,
                                                           upstream=upstream.url, key_file=key, ledger=work / "ledger.db"))
        if args.target == "open":
            target = Target("open", "", gw.url + OPEN_PATH, {"Host": HOST}, gateway=gw)
        else:
            tokens = work / "tokens.txt"
            tokens.write_text("\n".join(issue_tokens(gw.path, subs)) + "\n")
            target = Target("protected", "", gw.url + PAID_PATH, tokens_file=tokens, gateway=gw, protected=True)
        target.wrk(args.connections, 2)
        parent = gw.child.proc.pid
        pids = descendants(parent) if args.workers > 1 else [parent]
        spies = []
        for i, pid in enumerate(pids):
            spies.append(subprocess.Popen(
                [args.py_spy, "record", "--pid", str(pid), "--rate", str(args.rate), "--duration", str(args.seconds),
                 "--idle", "--threads", "--format", "raw", "-o", str(out / f"worker{i}-{pid}.txt")],
                stdout=subprocess.DEVNULL, stderr=subprocess.DEVNULL))
        stack.callback(lambda: [s.kill() for s in spies if s.poll() is None])
        result = target.wrk(args.connections, args.seconds)
        for s in spies:
            s.wait(timeout=args.seconds + 60)
        ledger = gw.ledger_counts() if args.target == "protected" else None
    print(f"{args.target}, {args.workers} worker(s), wrk -t1 -c{args.connections} -d{args.seconds}s: "
          f"{result['rps']:.0f} req/s, p50 {result['p50_ms']:.2f} ms, p99 {result['p99_ms']:.2f} ms"
          + (f"; ledger {ledger}" if ledger else ""))
    for f in sorted(out.glob("worker*.txt")):
        print(f"\n{f.name}:")
        print(summarize(f))
    print(f"\nraw py-spy files: {out}")
    return 0


if __name__ == "__main__":
    sys.exit(main())
