"""`gateway usage` and `gateway shortfall resolve`: the ledger, for the operator."""

from __future__ import annotations

import asyncio
from typing import Any

from gateway.config.model import GatewayConfig
from gateway.ledger.database import SqliteDatabase, sqlite_path
from gateway.ledger import Account
from gateway.ledger.sqlite import SqliteLedger

COLUMNS = ("service", "subscriber", "calls", "charged", "settled", "pending", "shortfall")


async def _with_ledger(ledger_url: str, fn) -> Any:
    db = SqliteDatabase(sqlite_path(ledger_url))
    ledger = SqliteLedger(db)
    try:
        await ledger.open()
        return await fn(ledger)
    finally:
        await db.close()


def usage_report(ledger_url: str, service: str | None, subscriber: str | None) -> str:
    """The ledger's rows as a table; takes the ledger URL alone (`load_metering`), no whole config."""
    rows = asyncio.run(_with_ledger(ledger_url, lambda ledger: ledger.usage(service, subscriber)))
    if not rows:
        return "no charges recorded"
    widths = {c: max(len(c), *(len(str(r[c])) for r in rows)) for c in COLUMNS}
    lines = ["  ".join(c.ljust(widths[c]) for c in COLUMNS)]
    for r in rows:
        lines.append("  ".join(str(r[c]).ljust(widths[c]) for c in COLUMNS))
        lines.extend(f"    burn {tx}" for tx in r["burn_txs"])
    total = {c: sum(r[c] for r in rows) for c in ("calls", "charged", "settled", "pending", "shortfall")}
    lines.append("total: " + ", ".join(f"{k} {v}" for k, v in total.items()))
    return "\n".join(lines)


def resolve_shortfall(config: GatewayConfig, service_id: str, subscriber: str, note: str) -> int:
    """Mark a subscriber's open shortfalls on a service's plan as settled off-chain; returns how many."""
    plan = config.services[service_id].plan
    if plan is None or plan.standard != "erc1155":
        raise ValueError(f"service {service_id!r} has no credits plan")
    account = Account(config.chains[plan.chain].chain_id, plan.contract, int(plan.token_id or 0), subscriber)
    return asyncio.run(_with_ledger(config.metering.ledger, lambda ledger: ledger.resolve_shortfalls(account, note)))
