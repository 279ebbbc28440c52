"""Development and demo tooling, never used by `gateway serve`: `demo` (the walk-through), `chain`
(anvil and the plan contracts), `process` (child processes that die with their parent).

May import: everything.
"""
