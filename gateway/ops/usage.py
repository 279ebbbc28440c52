"""`gateway usage` and `gateway shortfall resolve`: the ledger, for the operator (x402 per-call
payments listed after the credits, `gateway.x402.usage`)."""

from __future__ import annotations

import asyncio
from typing import Any

from gateway.config.model import MeteringConfig, PlanConfig
from gateway.ledger import Account
from gateway.ledger.backends import command_database, ledger_on
from gateway.x402.usage import x402_usage_lines

COLUMNS = ("service", "subscriber", "calls", "charged", "settled", "pending", "shortfall")


async def _with_ledger(metering: MeteringConfig, fn, with_db=None) -> Any:
    async with command_database(metering.ledger, metering.ledger_password) as db:
        ledger = ledger_on(db)
        await ledger.open()
        return (await fn(ledger), await with_db(db)) if with_db else await fn(ledger)


def usage_report(metering: MeteringConfig, service: str | None, subscriber: str | None) -> str:
    """The ledger's rows as a table; takes the `metering` section alone (`load_metering`), no whole config."""
    rows, x402 = asyncio.run(_with_ledger(metering, lambda ledger: ledger.usage(service, subscriber),
                                          lambda db: x402_usage_lines(db, service, subscriber)))
    if not rows:
        return "\n".join(["no charges recorded", *x402])
    widths = {c: max(len(c), *(len(str(r[c])) for r in rows)) for c in COLUMNS}
    lines = ["  ".join(c.ljust(widths[c]) for c in COLUMNS)]
    for r in rows:
        lines.append("  ".join(str(r[c]).ljust(widths[c]) for c in COLUMNS))
        lines.extend(f"    burn {tx}" for tx in r["burn_txs"])
    total = {c: sum(r[c] for r in rows) for c in ("calls", "charged", "settled", "pending", "shortfall")}
    lines.append("total: " + ", ".join(f"{k} {v}" for k, v in total.items()))
    return "\n".join(lines + x402)


def resolve_shortfall(metering: MeteringConfig, plan: PlanConfig, chain_id: int, subscriber: str, note: str) -> int:
    """Mark a subscriber's open shortfalls on a plan as settled off-chain; returns how many.

    Takes what `gateway.config.sections.load_service_plan` reads: no whole config."""
    if plan.standard != "erc1155":
        raise ValueError("the service's plan is not a credits plan")
    account = Account(chain_id, plan.contract, int(plan.token_id or 0), subscriber)
    return asyncio.run(_with_ledger(metering, lambda ledger: ledger.resolve_shortfalls(account, note)))
