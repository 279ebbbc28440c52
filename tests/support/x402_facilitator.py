"""The official SDK's facilitator (`x402Facilitator` + `register_exact_evm_facilitator` on a
`FacilitatorWeb3Signer`) served over HTTP in a process of its own: the standard `POST /verify`,
`POST /settle`, `GET /supported` API, for the gateway's remote-facilitator mode in tests.

    X402_FACILITATOR_KEY=0x.. python -m tests.support.x402_facilitator --rpc-url URL --network eip155:31337

Prints `x402 facilitator listening on http://127.0.0.1:PORT` once it listens (port 0: a free one).
The SDK's facilitator is synchronous on the inside: each request runs on a thread."""

from __future__ import annotations

import argparse
import asyncio
import os

from aiohttp import web
from x402 import x402FacilitatorSync
from x402.mechanisms.evm.exact import register_exact_evm_facilitator
from x402.mechanisms.evm.signers import FacilitatorWeb3Signer
from x402.schemas import SettleRequest, VerifyRequest


def create_app(rpc_url: str, key: str, network: str) -> web.Application:
    facilitator = register_exact_evm_facilitator(x402FacilitatorSync(), FacilitatorWeb3Signer(key, rpc_url), network)

    async def verify(request: web.Request) -> web.Response:
        body = VerifyRequest.model_validate(await request.json())
        result = await asyncio.to_thread(facilitator.verify, body.payment_payload, body.payment_requirements)
        return web.json_response(result.model_dump(by_alias=True, exclude_none=True))

    async def settle(request: web.Request) -> web.Response:
        body = SettleRequest.model_validate(await request.json())
        result = await asyncio.to_thread(facilitator.settle, body.payment_payload, body.payment_requirements)
        return web.json_response(result.model_dump(by_alias=True, exclude_none=True))

    async def supported(_request: web.Request) -> web.Response:
        return web.json_response(facilitator.get_supported().model_dump(by_alias=True, exclude_none=True))

    app = web.Application()
    app.add_routes([web.post("/verify", verify), web.post("/settle", settle), web.get("/supported", supported)])
    return app


async def serve(args: argparse.Namespace) -> None:
    runner = web.AppRunner(create_app(args.rpc_url, os.environ["X402_FACILITATOR_KEY"], args.network))
    await runner.setup()
    site = web.TCPSite(runner, "127.0.0.1", args.port)
    await site.start()
    port = site._server.sockets[0].getsockname()[1]
    print(f"x402 facilitator listening on http://127.0.0.1:{port}", flush=True)
    await asyncio.Event().wait()


def main() -> None:
    parser = argparse.ArgumentParser()
    parser.add_argument("--rpc-url", required=True)
    parser.add_argument("--network", default="eip155:31337")
    parser.add_argument("--port", type=int, default=0)
    asyncio.run(serve(parser.parse_args()))


if __name__ == "__main__":
    main()
