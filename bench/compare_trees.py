"""Before/after in ONE run: the gateway of another source tree next to this one, and the bare proxy.

    .venv/bin/python bench/compare_trees.py --before /tmp/baseline [--workers 2] [--seconds 5] [--rounds 4]
        [--target open|protected|both] [--connections 64] [--subscribers 64]

On a shared machine two runs minutes apart see different loads; this puts both versions in the same
rounds. `--before` is a copy of the repository as it was (e.g. `git worktree add`, or a tar of the
tree): its `gateway` package is what `python -m gateway serve` imports when started there. The stack
is bench/suite.py's (anvil with a plan and 64 minted subscribers, the nginx upstream, the bare
aiohttp proxy); both gateways get the same config, each its own ledger, logging at the default level.
wrk runs every target once per round, the order rotated each round; the table gives per target the
req/s of every round, the medians, and the CPU time the target's own processes spent per request
(`/proc`, steadier than req/s when other jobs share the cores).
"""

from __future__ import annotations

import argparse
import os
import statistics
import sys
import tempfile
from contextlib import ExitStack
from pathlib import Path

import yaml

REPO = Path(__file__).resolve().parents[1]
if str(REPO) not in sys.path:
    sys.path.insert(0, str(REPO))

from bench.suite import (  # noqa: E402
    CREDITS, HOST, OPEN_PATH, PAID_PATH, UPSTREAM_BODY, BareProxy, Gateway, GatewayChild, Nginx, Target,
    gateway_config, issue_tokens, mint_many, subscriber_addresses,
)
from gateway.auth.issuer import generate_signing_key  # noqa: E402
from gateway.config.load import load_config  # noqa: E402
from gateway.dev.chain import Anvil, DevChain  # noqa: E402


class GatewayOf(Gateway):
    """`gateway serve` started in `tree` (so that tree's `gateway` package is the one imported)."""

    def __init__(self, stack: ExitStack, workdir: Path, name: str, data: dict, tree: Path) -> None:
        self.name, self.data = name, data
        self.path = workdir / f"{name}.yaml"
        self.path.write_text(yaml.safe_dump(data, sort_keys=False))
        self.config = load_config(self.path)
        self.port, self.admin_port = self.config.listen.port, self.config.admin_listen.port
        self.workers = self.config.workers
        self.ledger = Path(data["metering"]["ledger"][len("sqlite:///"):])
        self.log_file = workdir / f"{name}.log"
        cmd = ["sh", "-c", 'cd "$1" && shift && exec "$@" >>"$0" 2>&1', str(self.log_file), str(tree),
               sys.executable, "-m", "gateway", "serve", "--config", str(self.path)]
        self.child = GatewayChild(cmd, admin_port=self.admin_port, port=self.port, workers=self.workers,
                                  log_file=self.log_file)
        stack.callback(self.stop)
        self.url = f"http://127.0.0.1:{self.port}"
        self.admin = f"http://127.0.0.1:{self.admin_port}"


def main(argv: list[str] | None = None) -> int:
    p = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    p.add_argument("--before", type=Path, required=True, help="the other source tree (the 'before')")
    p.add_argument("--workers", type=int, default=2)
    p.add_argument("--seconds", type=float, default=5.0)
    p.add_argument("--rounds", type=int, default=4)
    p.add_argument("--connections", type=int, default=64)
    p.add_argument("--target", choices=("open", "protected", "both"), default="open")
    p.add_argument("--subscribers", type=int, default=64,
                   help="subscribers the protected target rotates over (many at -c1: each calls less than once a second)")
    args = p.parse_args(argv)
    if not (args.before / "gateway" / "__init__.py").exists():
        p.error(f"{args.before} has no gateway package")
    with ExitStack() as stack:
        work = Path(stack.enter_context(tempfile.TemporaryDirectory(prefix="gateway-compare-")))
        os.chmod(work, 0o755)  # nginx workers (user nobody) read their prefix dir
        anvil = stack.enter_context(Anvil())
        chain = DevChain(anvil.rpc_url)
        plan = chain.deploy_credits_plan()
        subs = subscriber_addresses(args.subscribers, f"compare-{os.getpid()}")
        mint_many(chain, plan, subs, CREDITS)
        upstream = Nginx(stack, work, "upstream", BODY=UPSTREAM_BODY)
        key = work / "signing-key.pem"
        generate_signing_key(key, "ES256")
        bare = BareProxy(stack, args.workers, upstream.url)
        common = dict(workers=args.workers, rpc_url=anvil.rpc_url, plan=plan, upstream=upstream.url, key_file=key)
        gateways = [GatewayOf(stack, work, "before", gateway_config(ledger=work / "before.db", **common), args.before),
                    GatewayOf(stack, work, "after", gateway_config(ledger=work / "after.db", **common), REPO)]
        tokens = work / "tokens.txt"
        tokens.write_text("\n".join(issue_tokens(gateways[1].path, subs)) + "\n")
        targets = [Target("bare aiohttp proxy", "", bare.url + OPEN_PATH, {"Host": HOST}, root_pid=bare.child.proc.pid)]
        for g in gateways:
            if args.target in ("open", "both"):
                targets.append(Target(f"{g.name}, open", "", g.url + OPEN_PATH, {"Host": HOST}, gateway=g))
            if args.target in ("protected", "both"):
                targets.append(Target(f"{g.name}, protected", "", g.url + PAID_PATH, tokens_file=tokens, gateway=g,
                                      protected=True))
        for t in targets:
            t.wrk(args.connections, 1)  # warm-up
        runs: dict[str, list[dict]] = {t.name: [] for t in targets}
        for r in range(args.rounds):
            for j in range(len(targets)):
                t = targets[(r + j) % len(targets)]
                runs[t.name].append(t.wrk(args.connections, args.seconds))
    print(f"wrk -t1 -c{args.connections} -d{args.seconds:g}s, {args.rounds} rounds, {args.workers} workers, "
          f"{args.subscribers} subscribers; "
          f"before = {args.before}, after = {REPO}; load average now {' '.join(Path('/proc/loadavg').read_text().split()[:3])}")
    print("| target | req/s of each round | median req/s | CPU µs / request (median) | p50 ms (median) | p99 ms (median) |")
    print("|---|---|---:|---:|---:|---:|")
    for name, rows in runs.items():
        each = ", ".join(format(o["rps"], ",.0f") for o in rows)
        rps = statistics.median(o["rps"] for o in rows)
        cpu = statistics.median(o["cpu_us_per_request"] for o in rows)
        p50 = statistics.median(o["p50_ms"] for o in rows)
        p99 = statistics.median(o["p99_ms"] for o in rows)
        print(f"| {name} | {each} | {rps:,.0f} | {cpu:.0f} | {p50:.2f} | {p99:.2f} |")
    return 0


if __name__ == "__main__":
    sys.exit(main())
