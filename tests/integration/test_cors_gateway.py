"""CORS: per-service allowed origins; preflights answered by the gateway with no token; the credit
headers exposed to browsers. HTTP-level checks, then a real headless Chromium calling the
gateway from a page on another origin."""

from __future__ import annotations

import shutil

import pytest
from aiohttp import web

from tests.support.stack import BROKE, HOST, SUBSCRIBER, base_config

APP = "https://app.example.com"
QUERY = {"queries": [{"query": "river"}]}
PREFLIGHT = {"Origin": APP, "Access-Control-Request-Method": "POST",
             "Access-Control-Request-Headers": "authorization, content-type"}
CHROMIUM = shutil.which("chromium") or "/usr/bin/chromium"
needs_chromium = pytest.mark.skipif(shutil.which("chromium") is None,
                                    reason="Debian's chromium is not installed (scripts/setup installs it)")


def with_cors(chain, plugin, signing_key, **cors):
    return base_config(chain, plugin, signing_key, cors={"origins": [APP]} | cors)


async def plugin_saw(gw, plugin, method: str) -> list[dict]:
    auth = {"Authorization": f"Bearer {plugin.secret}"}
    async with gw.session.get(f"{plugin.url}/debug/requests", headers=auth) as r:
        return [entry for entry in await r.json() if entry["method"] == method]


@pytest.mark.asyncio
async def test_preflight_is_answered_without_a_token_and_never_forwarded(make_gateway, chain, plugin, signing_key):
    gw = await make_gateway(with_cors(chain, plugin, signing_key, allow_headers=["X-Trace"], max_age="1h"))
    async with gw.request("OPTIONS", "/query", headers=PREFLIGHT) as resp:
        assert resp.status == 204
        headers = resp.headers
    assert headers["Access-Control-Allow-Origin"] == APP
    assert headers["Access-Control-Allow-Methods"] == "POST"
    allowed = [h.strip().lower() for h in headers["Access-Control-Allow-Headers"].split(",")]
    assert {"authorization", "content-type", "mcp-session-id", "x-trace"} <= set(allowed)
    assert headers["Access-Control-Max-Age"] == "3600"
    assert headers["Vary"] == "Origin, Access-Control-Request-Method, Access-Control-Request-Headers"
    assert await plugin_saw(gw, plugin, "OPTIONS") == []


@pytest.mark.asyncio
async def test_preflight_refusals(make_gateway, chain, plugin, signing_key):
    gw = await make_gateway(with_cors(chain, plugin, signing_key))
    async with gw.request("OPTIONS", "/query", headers=PREFLIGHT | {"Origin": "https://evil.example.com"}) as resp:
        assert resp.status == 403 and (await resp.json())["code"] == "origin_not_allowed"
        assert "Access-Control-Allow-Origin" not in resp.headers
    async with gw.request("OPTIONS", "/secret", headers=PREFLIGHT) as resp:  # not exposed: as for the call
        assert resp.status == 404 and (await resp.json())["code"] == "endpoint_not_exposed"
    async with gw.request("OPTIONS", "/query", headers=PREFLIGHT | {"Access-Control-Request-Method": "DELETE"}) as resp:
        assert resp.status == 404
    async with gw.request("OPTIONS", "/health", headers=PREFLIGHT | {"Access-Control-Request-Method": "GET"}) as resp:
        assert resp.status == 204  # open endpoints too


@pytest.mark.asyncio
async def test_cross_origin_calls_expose_the_credit_headers(make_gateway, chain, plugin, signing_key):
    gw = await make_gateway(with_cors(chain, plugin, signing_key))
    async with gw.request("POST", "/query", json=QUERY, token=gw.token(SUBSCRIBER), headers={"Origin": APP}) as resp:
        assert resp.status == 200
        assert resp.headers["Access-Control-Allow-Origin"] == APP and resp.headers["Vary"].endswith("Origin")
        exposed = {h.strip() for h in resp.headers["Access-Control-Expose-Headers"].split(",")}
        assert {"X-Credits-Charged", "X-Credits-Remaining", "X-Request-Id", "Payment-Required"} <= exposed
        assert resp.headers["X-Credits-Charged"] == "1"
    # Refusals carry them too, so a web app can read the 402's terms.
    async with gw.request("POST", "/query", json=QUERY, token=gw.token(BROKE), headers={"Origin": APP}) as resp:
        assert resp.status == 402 and resp.headers["Access-Control-Allow-Origin"] == APP
        assert "Payment-Required" in resp.headers
    async with gw.request("POST", "/query", json=QUERY, headers={"Origin": APP}) as resp:
        assert resp.status == 401 and resp.headers["Access-Control-Allow-Origin"] == APP
    # Another origin is not refused (CORS is not access control), it just gets no CORS headers.
    async with gw.request("POST", "/query", json=QUERY, token=gw.token(SUBSCRIBER),
                          headers={"Origin": "https://evil.example.com"}) as resp:
        assert resp.status == 200 and "Access-Control-Allow-Origin" not in resp.headers
    async with gw.request("GET", "/.gateway/plan", headers={"Origin": APP}) as resp:
        assert resp.headers["Access-Control-Allow-Origin"] == APP


@pytest.mark.asyncio
async def test_the_gateways_cors_headers_replace_the_upstreams(make_gateway, chain, signing_key):
    async def handler(request: web.Request) -> web.Response:
        return web.json_response({"ok": True}, headers={"Access-Control-Allow-Origin": "*", "Vary": "Accept-Encoding",
                                                        "Access-Control-Allow-Credentials": "true"})

    app = web.Application()
    app.router.add_get("/open", handler)
    runner = web.AppRunner(app)
    await runner.setup()
    await web.TCPSite(runner, "127.0.0.1", 0).start()
    try:
        data = base_config(chain, None, signing_key, upstream=f"http://127.0.0.1:{runner.addresses[0][1]}",
                           open_endpoints=["GET /open"], cors={"origins": [APP]})
        gw = await make_gateway(data)
        async with gw.request("GET", "/open", headers={"Origin": APP}) as resp:
            assert resp.status == 200
            assert resp.headers.getall("Access-Control-Allow-Origin") == [APP]
            assert "Access-Control-Allow-Credentials" not in resp.headers
            assert resp.headers["Vary"] == "Accept-Encoding, Origin"
    finally:
        await runner.cleanup()


@pytest.mark.asyncio
async def test_any_origin(make_gateway, chain, plugin, signing_key):
    gw = await make_gateway(with_cors(chain, plugin, signing_key, origins=["*"]))
    async with gw.request("OPTIONS", "/query", headers=PREFLIGHT | {"Origin": "https://anyone.example"}) as resp:
        assert resp.status == 204 and resp.headers["Access-Control-Allow-Origin"] == "*" and "Vary" not in resp.headers


@pytest.mark.asyncio
async def test_without_cors_config_nothing_changes(gateway):
    async with gateway.request("OPTIONS", "/query", headers=PREFLIGHT) as resp:
        assert resp.status == 404  # classified like any request: "POST /query" does not expose OPTIONS
    async with gateway.request("POST", "/query", json=QUERY, headers={"Origin": APP}) as resp:
        assert "Access-Control-Allow-Origin" not in resp.headers and "Vary" not in resp.headers


# --- a real browser -------------------------------------------------------------------------------

FETCH = """async ([url, token]) => {
  try {
    const resp = await fetch(url, {method: "POST", headers: {"Authorization": "Bearer " + token,
                                  "Content-Type": "application/json"}, body: JSON.stringify(%s)});
    return {status: resp.status, charged: resp.headers.get("X-Credits-Charged"),
            remaining: resp.headers.get("X-Credits-Remaining"), request_id: resp.headers.get("X-Request-Id"),
            terms: resp.headers.get("Payment-Required"), body: await resp.json()};
  } catch (e) { return {error: String(e)}; }
}""" % str(QUERY).replace("'", '"')


@needs_chromium
@pytest.mark.asyncio
async def test_a_web_app_on_another_origin_calls_the_gateway_from_chromium(make_gateway, chain, plugin, signing_key):
    from playwright.async_api import async_playwright

    app = web.Application()  # the web app's own origin: serves an empty page
    async def page(request: web.Request) -> web.Response:
        return web.Response(text="<!doctype html><title>app</title>", content_type="text/html")

    app.router.add_get("/", page)
    runner = web.AppRunner(app)
    await runner.setup()
    await web.TCPSite(runner, "127.0.0.1", 0).start()
    app_port = runner.addresses[0][1]
    try:
        cors = {"origins": [f"http://app.localhost:{app_port}"]}
        gw = await make_gateway(base_config(chain, plugin, signing_key, cors=cors))
        port = gw.url.rsplit(":", 1)[1]
        url = f"http://{HOST}:{port}/query"
        async with async_playwright() as pw:
            browser = await pw.chromium.launch(executable_path=CHROMIUM, args=["--no-sandbox", "--headless"])
            try:
                page = await browser.new_page()
                # Chromium resolves *.localhost to the loopback address itself.
                await page.goto(f"http://app.localhost:{app_port}/")
                paid = await page.evaluate(FETCH, [url, gw.token(SUBSCRIBER)])
                broke = await page.evaluate(FETCH, [url, gw.token(BROKE)])
                await page.goto(f"http://other.localhost:{app_port}/")
                blocked = await page.evaluate(FETCH, [url, gw.token(SUBSCRIBER)])
            finally:
                await browser.close()
    finally:
        await runner.cleanup()
    assert paid["status"] == 200 and (paid["charged"], paid["remaining"]) == ("1", "4"), paid
    assert paid["request_id"] and paid["body"]["subscriber"] == SUBSCRIBER
    assert broke["status"] == 402 and broke["terms"] and broke["body"]["code"] == "payment_required"
    assert "Failed to fetch" in blocked["error"]  # the browser keeps the answer from another origin's page
    assert await plugin_saw(gw, plugin, "OPTIONS") == []  # the preflights never reached the plugin
