"""The official MCP SDKs' OAuth clients connect by themselves to a paid MCP service through a real
`gateway serve`, from a bare 401. Python (`mcp.client.auth.OAuthClientProvider`): protected-resource
and authorization-server discovery, registration (RFC 7591, or a Client ID Metadata Document served
over HTTPS), the consent in a real headless Chromium whose wallet (a `window.ethereum` stand-in)
signs with a dev key, the code exchange, a `tools/call` charged the tool's price, and the refresh
flow once the client holds its access token for expired. TypeScript (`@modelcontextprotocol/sdk`
on Node, tests/node/mcp_oauth_client.mjs): the same with registration, and its refresh on a 401."""

from __future__ import annotations

import asyncio
import json
import re
import shutil
import ssl
import time

import pytest
from aiohttp import web
from mcp import Client
from mcp.client.auth import OAuthClientProvider
from mcp.client.streamable_http import streamable_http_client
from mcp.shared._httpx_utils import create_mcp_http_client
from mcp.shared.auth import AuthorizationCodeResult, OAuthClientMetadata

from gateway.dev.chain import DEV_ACCOUNTS
from gateway.dev.process import REPO, ChildProcess
from tests.support.mcp import OPERATOR_KEY, TOOLS
from tests.support.oauth import self_signed_cert
from tests.support.served import Served
from tests.support.signin import sign
from tests.support.stack import SUBSCRIBER

pytestmark = [pytest.mark.asyncio, pytest.mark.skipif(shutil.which("chromium") is None,
                                                      reason="Debian's chromium is not installed (scripts/setup)")]
CHROMIUM_ARGS = ["--no-sandbox", "--headless", "--disable-gpu", "--disable-background-networking"]
FAKE_WALLET = """
window.ethereum = {
  async request({method, params}) {
    if (method === "eth_requestAccounts") return [ACCOUNT];
    if (method === "personal_sign") return await window.pythonPersonalSign(params[0], params[1]);
    throw new Error("the fake wallet does not do " + method);
  },
};
"""


class Storage:
    """The SDK's TokenStorage, in memory."""

    def __init__(self) -> None:
        self.tokens, self.client = None, None

    async def get_tokens(self):
        return self.tokens

    async def set_tokens(self, tokens) -> None:
        self.tokens = tokens

    async def get_client_info(self):
        return self.client

    async def set_client_info(self, info) -> None:
        self.client = info


async def start_site(app: web.Application, ssl_context=None) -> tuple[web.AppRunner, int]:
    runner = web.AppRunner(app)
    await runner.setup()
    site = web.TCPSite(runner, "127.0.0.1", 0, ssl_context=ssl_context)
    await site.start()
    return runner, runner.addresses[0][1]


def served_mcp(chain, mcp_upstream, signing_key, tmp_path) -> Served:
    served = Served(chain, mcp_upstream, signing_key, tmp_path)

    def mcp_service(data: dict) -> None:
        service = data["services"]["elvis"]
        # `localhost` as a name of the service: the SDK client and Chromium resolve it (elvis.proxy.localhost
        # is not in this machine's resolver), and it is the URL the client connects to.
        service.update(open_endpoints=[], protected_endpoints=[], hosts=["localhost"],
                       mcp={"path": "/mcp", "tools": TOOLS, "default_tool_credits": 1})
        data["metering"] |= {"operator_key": OPERATOR_KEY}
        data["oauth"] = {"metadata_private_addresses": True}  # the test's metadata document is on loopback

    served.configure(mcp_service)
    return served


@pytest.mark.parametrize("registration", ["dynamic", "metadata_document"])
async def test_the_sdk_oauth_client_reaches_a_paid_tool_from_a_bare_401(chain, mcp_upstream, signing_key, tmp_path,
                                                                      monkeypatch, registration):
    from playwright.async_api import async_playwright

    cert, key = self_signed_cert(tmp_path)
    monkeypatch.setenv("SSL_CERT_FILE", cert)  # the gateway trusts the test's HTTPS metadata document
    served = served_mcp(chain, mcp_upstream, signing_key, tmp_path / "gw")
    callbacks: asyncio.Queue = asyncio.Queue()

    async def callback(request: web.Request) -> web.Response:
        await callbacks.put(dict(request.query))
        return web.Response(text="You can close this window.")

    callback_app = web.Application()
    callback_app.router.add_get("/callback", callback)
    callback_runner, callback_port = await start_site(callback_app)
    redirect = f"http://127.0.0.1:{callback_port}/callback"
    document_url, document_runner, fetched = None, None, []
    if registration == "metadata_document":  # the client's own HTTPS page describing it
        document = {"client_name": "SDK test client", "redirect_uris": [redirect], "response_types": ["code"],
                    "grant_types": ["authorization_code", "refresh_token"], "token_endpoint_auth_method": "none"}

        async def serve_document(request: web.Request) -> web.Response:
            fetched.append(request.path)
            return web.json_response(document)

        document_app = web.Application()
        document_app.router.add_get("/oauth/client.json", serve_document)
        tls = ssl.create_default_context(ssl.Purpose.CLIENT_AUTH)
        tls.load_cert_chain(cert, key)
        document_runner, document_port = await start_site(document_app, tls)
        document_url = f"https://localhost:{document_port}/oauth/client.json"
        document["client_id"] = document_url
    signed: list[str] = []
    problems: list[str] = []  # CSP violations and script errors on the consent page
    try:
        served.start()
        async with async_playwright() as pw:
            browser = await pw.chromium.launch(executable_path="/usr/bin/chromium", args=CHROMIUM_ARGS)
            try:
                async def open_in_browser(url: str) -> None:
                    page = await browser.new_page()
                    page.set_default_timeout(15_000)
                    # Errors of the consent page (the callback page's favicon 404 is the client's business).
                    page.on("console", lambda m: problems.append(m.text) if m.type == "error"
                            and f":{served.port}/" in m.location.get("url", "") else None)
                    page.on("pageerror", lambda e: problems.append(str(e)))

                    def personal_sign(message_hex: str, account: str) -> str:
                        text = bytes.fromhex(message_hex[2:]).decode()
                        signed.append(text)
                        return sign(text, next(a for a, _ in DEV_ACCOUNTS if a.lower() == account.lower()))

                    await page.expose_function("pythonPersonalSign", personal_sign)
                    await page.add_init_script(FAKE_WALLET.replace("ACCOUNT", repr(SUBSCRIBER)))
                    await page.goto(url)
                    assert await page.text_content("#client-name") == "SDK test client"
                    await page.click("#authorize")

                async def wait_for_callback() -> AuthorizationCodeResult:
                    query = await callbacks.get()
                    return AuthorizationCodeResult(code=query["code"], state=query.get("state"), iss=query.get("iss"))

                storage = Storage()
                provider = OAuthClientProvider(
                    f"http://localhost:{served.port}/mcp",
                    OAuthClientMetadata(client_name="SDK test client", redirect_uris=[redirect],
                                        grant_types=["authorization_code", "refresh_token"], response_types=["code"],
                                        token_endpoint_auth_method="none"),
                    storage, redirect_handler=open_in_browser, callback_handler=wait_for_callback,
                    client_metadata_url=document_url)
                http = create_mcp_http_client(auth=provider)
                async with http, Client(streamable_http_client(f"http://localhost:{served.port}/mcp",
                                                               http_client=http)) as mcp:
                    tools = await mcp.list_tools()
                    assert sorted(t.name for t in tools.tools) == ["count_songs", "search", "summarize"]
                    found = await mcp.call_tool("search", {"query": "blue highway"})
                    assert found.structured_content["result"]
                    first = storage.tokens
                    # The client now holds its access token for expired: its next call refreshes first.
                    provider.context.token_expiry_time = time.time() - 1
                    count = await mcp.call_tool("count_songs", {})
                    assert count.structured_content == {"result": 3}
                    assert storage.tokens.access_token != first.access_token
                    assert storage.tokens.refresh_token != first.refresh_token  # rotated
            finally:
                await browser.close()
        if registration == "metadata_document":
            assert storage.client.client_id == document_url and fetched  # no registration: the URL is the id
        else:
            assert storage.client.client_id.startswith("dcr_")
        assert "Request ID: " in signed[0] and "SDK test client" in signed[0] and problems == []
        charges = served.ledger("SELECT service, subscriber, amount FROM charges ORDER BY id")
        assert charges == [("elvis", SUBSCRIBER, 2), ("elvis", SUBSCRIBER, 1)]
        log = "\n".join(served.child.lines)
        assert first.access_token not in log and first.refresh_token not in log  # never logged
    finally:
        served.stop()
        await callback_runner.cleanup()
        if document_runner is not None:
            await document_runner.cleanup()


NODE_CLIENT = REPO / "tests" / "node" / "mcp_oauth_client.mjs"


@pytest.mark.skipif(not (REPO / "tests/node/node_modules/@modelcontextprotocol/sdk").is_dir() or not shutil.which("node"),
                    reason="the TypeScript SDK is not installed: scripts/setup runs `npm ci` in tests/node")
async def test_the_typescript_sdk_oauth_client_reaches_a_paid_tool(chain, mcp_upstream, signing_key, tmp_path):
    from playwright.async_api import async_playwright

    served = served_mcp(chain, mcp_upstream, signing_key, tmp_path)
    node = None
    try:
        served.start()
        node = ChildProcess(["node", str(NODE_CLIENT), f"http://localhost:{served.port}/mcp"],
                            ready=r"AUTHORIZE (\S+)|FAILED", timeout=60)
        assert node.ready_match.group(1), "\n".join(node.lines)
        async with async_playwright() as pw:
            browser = await pw.chromium.launch(executable_path="/usr/bin/chromium", args=CHROMIUM_ARGS)
            try:
                page = await browser.new_page()
                page.set_default_timeout(15_000)
                await page.expose_function("pythonPersonalSign",
                                           lambda message_hex, account: sign(bytes.fromhex(message_hex[2:]).decode()))
                await page.add_init_script(FAKE_WALLET.replace("ACCOUNT", repr(SUBSCRIBER)))
                await page.goto(node.ready_match.group(1))
                assert await page.text_content("#client-name") == "TypeScript SDK client"
                await page.click("#authorize")
                await page.wait_for_url(re.compile(r"http://127\.0\.0\.1:\d+/callback\?.*code=.*"))
            finally:
                await browser.close()
        line = await asyncio.to_thread(node.wait_for, r"^(RESULT|FAILED) (.*)", 60)
        assert line.group(1) == "RESULT", "\n".join(node.lines)
        result = json.loads(line.group(2))
        assert result["tools"] == ["count_songs", "search", "summarize"] and result["found"] > 0
        assert result["count"] == {"result": 3} and result["client_id"].startswith("dcr_")
        assert result["rotated"] and result["iss"] == f"http://localhost:{served.port}/"
        assert served.ledger("SELECT amount FROM charges ORDER BY id") == [(2,), (1,)]
    finally:
        if node is not None:
            node.stop()
        served.stop()
