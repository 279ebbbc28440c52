"""Running the gateway: `serve` (`server`: sockets bound once, signals, reload, shutdown), the
worker `supervisor` (replaced on death, crash-loop stop), `parent_death` (workers die with the
parent), the one-settler `ledger_lock`, and `connection_limits` (head deadline, connection caps).

May import: everything (it is the composition root with `gateway.app`).
"""
