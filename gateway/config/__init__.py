"""The config file: its typed, frozen model (`model`), loading with ${VAR} substitution (`load`,
`nodes`, `values`; secrets from `*_file` keys and the operator's keystore in `secret_files`),
per-service checks (`services`), rules across sections (`checks`), endpoint rules (`rules`), the
file's JSON Schema for editors (`schema`, `gateway config-schema`) and the default `workers`: the
CPUs this process may use (`cpus`).

Owns every check of a config: `gateway check-config` and `gateway serve` run the same ones, and
nothing built at start-up refuses a config the loader accepted (runtime raises are guards only).
May import: nothing of the gateway but itself, with one exception: key files are checked with the
loaders of `gateway.auth.issuer` (imported lazily in `values`), so a key that passes here loads there.
"""
