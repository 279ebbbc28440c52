"""Payment-plan gateway: sell access to any HTTP service through an on-chain plan."""

__version__ = "0.1.0"
