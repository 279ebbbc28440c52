"""The chain: raw JSON-RPC with per-attempt timeouts and failover over the configured URLs (`rpc`).

May import: config. (The Solidity sources and artifacts live in the repository's top-level `chain/`.)
"""
