"""What a durable charge costs on this disk, piece by piece (issue 16: the floor of a paid call at c=1).

    .venv/bin/python bench/commit_cost.py [--rounds 400] [--dir DIR]

On an idle event loop, in a fresh ledger under `--dir` (default: bench/ itself, the disk the
gateway's ledger would use; a tmpfs /tmp would hide the flush): p50 and p90 of
- `SqliteLedger.charge_part` (durable: what a paid call waits for before its first byte);
- an empty non-durable transaction and a bare hop to the database thread (no SQL);
- a raw SQLite commit of one small insert in WAL mode, `synchronous=FULL` and `NORMAL`;
- `fdatasync` of a 4 KiB write appended to a growing file, and overwriting in place.
"""

from __future__ import annotations

import argparse
import asyncio
import os
import sqlite3
import sys
import tempfile
import time
from pathlib import Path
from typing import Callable

REPO = Path(__file__).resolve().parents[1]
if str(REPO) not in sys.path:
    sys.path.insert(0, str(REPO))

from gateway.ledger import Account  # noqa: E402
from gateway.ledger.database import SqliteDatabase  # noqa: E402
from gateway.ledger.sqlite import SqliteLedger  # noqa: E402


def summary(name: str, seconds: list[float]) -> str:
    seconds = sorted(seconds)
    n = len(seconds)
    return f"{name:<48} p50 {seconds[n // 2] * 1e3:7.3f} ms   p90 {seconds[n * 9 // 10] * 1e3:7.3f} ms"


async def timed(rounds: int, call: Callable) -> list[float]:
    out = []
    for i in range(rounds):
        started = time.perf_counter()
        await call(i)
        out.append(time.perf_counter() - started)
    return out


async def ledger_costs(work: Path, rounds: int) -> list[str]:
    db = SqliteDatabase(work / "ledger.db")
    ledger = SqliteLedger(db)
    await ledger.open()
    account = Account(31337, "0x" + "11" * 20, 1, "0x" + "22" * 20)
    lease = await ledger.reserve(account, "bench", rounds, 10**9, time.time(), "bench", 600.0)
    lines = [
        summary("charge_part (durable)", await timed(rounds, lambda i: ledger.charge_part(
            lease, 1, f"r{i}", "bench", 10**9, time.time()))),
        summary("empty transaction (not durable)", await timed(rounds, lambda i: db.transaction(
            lambda conn: None, durable=False))),
        summary("hop to the database thread and back", await timed(rounds, lambda i: db.run(lambda conn: None))),
    ]
    await db.close()
    return lines


def sqlite_commits(work: Path, rounds: int, sync: str) -> str:
    conn = sqlite3.connect(str(work / f"raw-{sync}.db"), isolation_level=None)
    conn.execute("PRAGMA journal_mode=WAL")
    conn.execute(f"PRAGMA synchronous={sync}")
    conn.execute("CREATE TABLE t (a INTEGER PRIMARY KEY, b TEXT)")
    out = []
    for _ in range(rounds):
        started = time.perf_counter()
        conn.execute("BEGIN IMMEDIATE")
        conn.execute("INSERT INTO t (b) VALUES (?)", ("x" * 80,))
        conn.execute("COMMIT")
        out.append(time.perf_counter() - started)
    conn.close()
    return summary(f"raw SQLite commit, WAL, synchronous={sync}", out)


def flushes(work: Path, rounds: int) -> list[str]:
    fd = os.open(work / "flush", os.O_RDWR | os.O_CREAT | os.O_TRUNC, 0o600)
    lines = []
    try:
        for name, offset in (("fdatasync, 4 KiB appended", lambda i: i * 4096),
                             ("fdatasync, 4 KiB overwritten in place", lambda i: (i % 64) * 4096)):
            out = []
            for i in range(rounds):
                os.pwrite(fd, b"x" * 4096, offset(i))
                started = time.perf_counter()
                os.fdatasync(fd)
                out.append(time.perf_counter() - started)
            lines.append(summary(name, out))
    finally:
        os.close(fd)
    return lines


def main(argv: list[str] | None = None) -> int:
    p = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    p.add_argument("--rounds", type=int, default=400)
    p.add_argument("--dir", type=Path, default=REPO / "bench")
    args = p.parse_args(argv)
    with tempfile.TemporaryDirectory(prefix="commit-cost-", dir=args.dir) as tmp:
        work = Path(tmp)
        lines = asyncio.run(ledger_costs(work, args.rounds))
        lines += [sqlite_commits(work, args.rounds, "FULL"), sqlite_commits(work, args.rounds, "NORMAL")]
        lines += flushes(work, args.rounds)
    print(f"{args.rounds} rounds each, files under {args.dir}")
    print("\n".join(lines))
    return 0


if __name__ == "__main__":
    sys.exit(main())
