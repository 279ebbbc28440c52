"""Parts of `gateway.yaml` for commands that use only them (`gateway shortfall resolve`).

Why parts: an operator resolving a shortfall should not need the secrets serving needs (a signing
key file, upstream tokens, RPC URLs in the environment). `${VAR}` is substituted in the parts read
only, and they are checked as `load_config` checks them; `serve` and `check-config` still check the
whole file. (`load_metering`, the `metering` section alone, lives in `gateway.config.load`.)
"""

from __future__ import annotations

import os
from pathlib import Path
from typing import Any, Mapping

from gateway.config import values as v
from gateway.config.load import ConfigError, _metering, _read, _substitute
from gateway.config.model import ChainConfig, MeteringConfig, PlanConfig
from gateway.config.nodes import Node
from gateway.config.services import _plan


def load_service_plan(path: str | Path, service_id: str,
                      environ: Mapping[str, str] | None = None) -> tuple[MeteringConfig, PlanConfig, int]:
    """`metering`, service `service_id`'s plan, and its chain's id; `ConfigError` with every problem."""
    path = Path(path)
    env = environ if environ is not None else os.environ
    data = _read(path)
    problems: list[str] = []
    if not isinstance(data, Mapping):
        raise ConfigError(["(top level): must be a mapping"])
    metering_raw = _substitute(data.get("metering"), "metering", env, problems)
    metering = _metering(Node(metering_raw, "metering", problems) if metering_raw is not None else None, path.parent)
    service: Any = (data.get("services") or {}).get(service_id) if isinstance(data.get("services"), Mapping) else None
    plan_raw = service.get("plan") if isinstance(service, Mapping) else None
    if plan_raw is None:
        raise ConfigError(problems + [f"services.{service_id}.plan: no such service, or it has no plan"])
    at = f"services.{service_id}.plan"
    plan_raw = _substitute(plan_raw, at, env, problems)
    chain_name = plan_raw.get("chain") if isinstance(plan_raw, Mapping) else None
    chain_raw = (data.get("chains") or {}).get(chain_name) if isinstance(data.get("chains"), Mapping) else None
    chains: dict[str, ChainConfig] = {}
    if isinstance(chain_raw, Mapping):  # the chain's id alone: its RPC URLs are not needed here
        node = Node(_substitute({"chain_id": chain_raw.get("chain_id")}, f"chains.{chain_name}", env, problems),
                    f"chains.{chain_name}", problems)
        chains[str(chain_name)] = ChainConfig(str(chain_name), node.get("chain_id", v.integer(1)), (), 0.0)
    plan = _plan(Node(plan_raw, at, problems), chains)
    if problems:
        raise ConfigError(problems)
    return metering, plan, chains[plan.chain].chain_id
