"""What a call costs and who pays: plan checks on chain (`plans`, cached and coalesced;
`shared_balances` across workers, `shared_balances_postgres` across replicas), prices (`prices`),
reservations and charges (`meter`, lending each call its credits from this worker's lease of the
account: `leases`), and batched burns on chain (`settlement`). Refusals are domain errors carrying
data (`NotCovered`, `HoldExpired`, `PlanUnreadable`), answered by `gateway.http.refusals` (the 402
is built there).

May import: config, chain, ledger, `gateway.inflight`, ops.observability (metrics) and
ops.crash_points (the test hook). Never http: refusals are domain errors that http maps.
"""
