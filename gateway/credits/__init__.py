"""What a call costs and who pays: plan checks on chain (`plans`, cached and coalesced;
`shared_balances` across workers), prices (`prices`), reservations and charges (`meter`), the 402
offer (`offer`), and batched burns on chain (`settlement`).

May import: config, chain, ledger.
"""
