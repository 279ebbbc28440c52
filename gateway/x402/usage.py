"""`gateway usage`'s x402 part: per-call payments per service, payer and status, beside credits."""

from __future__ import annotations

from gateway.x402.store import x402_store

COLUMNS = ("service", "payer", "status", "payments", "amount", "asset")


async def x402_usage_lines(db, service: str | None, payer: str | None) -> list[str]:
    """The table's lines ([] when no payment was ever recorded)."""
    store = x402_store(db)
    await store.open()
    rows = await store.usage(service, payer)
    if not rows:
        return []
    widths = {c: max(len(c), *(len(str(r[c])) for r in rows)) for c in COLUMNS}
    lines = ["x402 payments (amount in the asset's smallest units; settled: transferred to pay_to):",
             "  ".join(c.ljust(widths[c]) for c in COLUMNS)]
    lines += ["  ".join(str(r[c]).ljust(widths[c]) for c in COLUMNS) for r in rows]
    return lines
