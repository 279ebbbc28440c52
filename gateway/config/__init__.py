"""The config file: its typed, frozen model (`model`), loading with ${VAR} substitution (`load`,
`nodes`, `values`), per-service checks (`services`) and endpoint rules (`rules`).

Owns every check of a config: `gateway check-config` and `gateway serve` run the same ones.
May import: nothing of the gateway but itself (every other folder imports the model from here).
"""
