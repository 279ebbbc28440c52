"""The chain: raw JSON-RPC with per-attempt timeouts and failover over the configured URLs (`rpc`),
and `ChainReader`, the small interface every reader of a chain uses (`reader`: tests fake it).

May import: config. (The Solidity sources and artifacts live in the repository's top-level `chain/`.)
"""
