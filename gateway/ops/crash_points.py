"""TEST HOOK, not a feature: kill the process at a named step, to prove crash safety.

`crash_point(name)` does nothing unless the environment variable `GATEWAY_CRASH_AT` equals
`name`; then it SIGKILLs its own process on the spot: no cleanup, no flush, no `finally` blocks,
exactly like a power cut or the OOM killer at that step. tests/integration/test_crash_safety.py starts
`gateway serve` with the variable set, kills it this way, restarts it on the same ledger, and
checks on chain that no charge a client saw is lost and nothing is burned twice.

The named steps (where production code calls this hook):
- `settlement_recorded`: a burn is written to the ledger, its transaction not yet sent
  (`gateway.credits.settlement`);
- `settlement_sent`: the transaction is sent, its receipt not yet awaited.
- `x402_owed`: an x402 payment's call answered 2xx and the payment is recorded as owed, its
  `transferWithAuthorization` not yet submitted (`gateway.x402.payments`);
- `x402_sent`: that transfer is mined, the record not yet marked settled.

Operators never set the variable. It lives in this module of its own so that production modules
only name their steps, and the kill switch is one place to audit. Imports nothing of the gateway.
"""

from __future__ import annotations

import os
import signal

ENVIRONMENT_VARIABLE = "GATEWAY_CRASH_AT"


def crash_point(name: str) -> None:
    """SIGKILL this process here when `GATEWAY_CRASH_AT` is `name`; otherwise do nothing."""
    if os.environ.get(ENVIRONMENT_VARIABLE) == name:
        os.kill(os.getpid(), signal.SIGKILL)
