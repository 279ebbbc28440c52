"""The gateway's own endpoints under `/.gateway/` on every service host (SPEC §6).

They are answered by the gateway and never forwarded upstream.
"""

from __future__ import annotations

from aiohttp import web

from gateway.config import GatewayConfig, ServiceConfig
from gateway.own_issuer import OwnIssuer
from gateway.payment import plan_document, price_of
from gateway.problems import Problem


class GatewayEndpoints:
    def __init__(self, config: GatewayConfig, own_issuer: OwnIssuer | None) -> None:
        self.config = config
        self.own_issuer = own_issuer

    async def handle(self, request: web.Request, service: ServiceConfig, path: str) -> web.StreamResponse:
        if request.method not in ("GET", "HEAD"):
            raise Problem(405, "method_not_allowed", f"{request.method} is not allowed on {path}",
                          headers={"Allow": "GET, HEAD"})
        if path == "/.gateway/plan":
            return web.json_response(self.plan(service))
        if path == "/.gateway/jwks.json" and self.own_issuer is not None:
            return web.json_response(self.own_issuer.jwks(), headers={"Cache-Control": "public, max-age=300"})
        raise Problem(404, "endpoint_not_exposed", f"{path} is not a gateway endpoint")

    def plan(self, service: ServiceConfig) -> dict:
        if service.plan is None:
            return {"service": service.id, "plan": None}
        doc = plan_document(service, self.config.chains[service.plan.chain].chain_id)
        doc["endpoints"] = [
            {"endpoint": rule.source, "credits": _price_json(price_of(service, rule))}
            for rule in service.protected_endpoints
        ]
        return {"service": service.id, "plan": doc}


def _price_json(price) -> int | dict:
    if price.is_dynamic:
        return {"header": price.header, "min": price.min, "max": price.max}
    return price.fixed or 0
