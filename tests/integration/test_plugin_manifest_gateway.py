"""ChatGPT plugins behind the gateway: the manifest and the OpenAPI document it names are answered
by the gateway with every upstream URL rewritten to the public proxy URL, and auth set to
user_http bearer. Upstreams: the real example plugin, and small aiohttp apps per test."""

from __future__ import annotations

import json
from dataclasses import dataclass, field

import pytest
import yaml
from aiohttp import web
from openapi_spec_validator import validate

from tests.support.upstreams import serve_app
from examples.song_plugin import create_app as create_plugin_app
from tests.support.stack import HOST, base_config

DID_HOST = "zparolnv3lqwtjk26xfkgustpbbk9gz9so4x30zfe5v8x8wqs.proxy.localhost"
USER_HTTP = {"type": "user_http", "authorization_type": "bearer"}


async def upstream_requests(gw, plugin, path: str) -> list[dict]:
    auth = {"Authorization": f"Bearer {plugin.secret}"}
    async with gw.session.get(f"{plugin.url}/debug/requests", headers=auth) as r:
        return [entry for entry in await r.json() if entry["path"] == path]


@pytest.mark.asyncio
async def test_manifest_names_only_the_proxy_url(gateway, plugin):
    async with gateway.request("GET", "/.well-known/ai-plugin.json") as resp:
        assert resp.status == 200 and resp.content_type == "application/json"
        text = await resp.text()
    manifest = json.loads(text)
    base = f"http://{HOST}"
    assert manifest["api"] == {"type": "openapi", "url": f"{base}/.well-known/openapi.yaml"}
    assert (manifest["logo_url"], manifest["legal_info_url"]) == (f"{base}/logo.png", f"{base}/legal")
    assert manifest["auth"] == USER_HTTP  # each subscriber pastes their own token
    assert manifest["name_for_model"] == "song_summarizer" and manifest["contact_email"].endswith(".example")
    assert plugin.url not in text and "127.0.0.1" not in text
    # Fetched with the owner's credential, nothing of the client's.
    [fetch] = await upstream_requests(gateway, plugin, "/.well-known/ai-plugin.json")
    assert fetch["headers"]["Authorization"] == f"Bearer {plugin.secret}"


@pytest.mark.asyncio
async def test_openapi_document_names_only_the_proxy_url_and_is_valid(gateway, plugin):
    async with gateway.request("GET", "/.well-known/ai-plugin.json") as resp:
        openapi_url = (await resp.json())["api"]["url"]
    async with gateway.request("GET", openapi_url.removeprefix(f"http://{HOST}")) as resp:
        assert resp.status == 200 and resp.content_type == "application/yaml"
        text = await resp.text()
    document = yaml.safe_load(text)
    assert document["servers"] == [{"url": f"http://{HOST}"}]
    assert plugin.url not in text and "127.0.0.1" not in text
    validate(document)  # openapi-spec-validator: still a valid OpenAPI 3.0 document
    assert document["paths"]["/summarize/{song_id}"]["post"]["operationId"] == "summarizeSong"


@pytest.mark.asyncio
async def test_urls_follow_the_host_and_scheme_the_client_used(make_gateway, chain, plugin, signing_key):
    data = base_config(chain, plugin, signing_key,
                       did="did:nv:27ca72cfc79dccf35e4e54a54f0ed3e3b04873ce682fd5bf351fe9aa377d68c4")
    gw = await make_gateway(data)
    https = {"X-Forwarded-Proto": "https"}
    async with gw.request("GET", "/.well-known/ai-plugin.json", host=f"{DID_HOST}:8443", headers=https) as resp:
        manifest = await resp.json()
    # X-Forwarded-Proto from a peer that is not a trusted proxy is ignored: public_scheme (http).
    assert manifest["api"]["url"] == f"http://{DID_HOST}:8443/.well-known/openapi.yaml"
    gw = await make_gateway(data | {"trusted_proxies": ["127.0.0.0/8"]})
    async with gw.request("GET", "/.well-known/ai-plugin.json", host=f"{DID_HOST}:8443", headers=https) as resp:
        assert (await resp.json())["logo_url"] == f"https://{DID_HOST}:8443/logo.png"
    async with gw.request("GET", "/.well-known/openapi.yaml", headers=https) as resp:
        assert yaml.safe_load(await resp.text())["servers"] == [{"url": f"https://{HOST}"}]


@pytest.mark.asyncio
async def test_answers_are_cached_briefly_and_other_well_known_paths_pass_through(gateway, plugin):
    for _ in range(3):
        async with gateway.request("GET", "/.well-known/ai-plugin.json") as resp:
            assert resp.status == 200
        async with gateway.request("GET", "/.well-known/openapi.yaml") as resp:
            assert resp.status == 200
    assert len(await upstream_requests(gateway, plugin, "/.well-known/ai-plugin.json")) == 1
    assert len(await upstream_requests(gateway, plugin, "/.well-known/openapi.yaml")) == 1
    async with gateway.request("GET", "/.well-known/missing.json") as resp:  # the plugin's own 404
        assert resp.status == 404 and await resp.json() == {"error": "not found"}
    async with gateway.request("HEAD", "/.well-known/ai-plugin.json") as resp:
        assert resp.status == 200 and await resp.read() == b""
    async with gateway.request("POST", "/.well-known/ai-plugin.json") as resp:
        assert resp.status == 404 and (await resp.json())["code"] == "endpoint_not_exposed"


# --- other plugins: a tiny upstream per test ------------------------------------------------------

@dataclass
class Docs:
    """An upstream that serves whatever documents the test gives it, and counts the fetches."""

    routes: dict[str, tuple[int, str, str]]  # path -> (status, content type, body)
    hits: list[str] = field(default_factory=list)
    url: str = ""

    async def __aenter__(self) -> "Docs":
        async def serve(request: web.Request) -> web.Response:
            self.hits.append(request.path)
            status, content_type, body = self.routes.get(request.path, (404, "text/plain", "no"))
            return web.Response(status=status, text=body, content_type=content_type)

        app = web.Application()
        app.router.add_route("*", "/{tail:.*}", serve)
        self._runner, self.url = await serve_app(app)
        return self

    async def __aexit__(self, *exc) -> None:
        await self._runner.cleanup()


def manifest_of(api_url: str, **extra) -> str:
    return json.dumps({"schema_version": "v1", "name_for_model": "x", "api": {"type": "openapi", "url": api_url},
                       "auth": {"type": "none"}, **extra})


COMMENTED_OPENAPI = """\
# The owner's comment stays.
openapi: 3.1.0
info: {title: Songs, version: "1"}   # so does this one
servers:
  - url: /v1
paths:
  /songs:
    get:
      operationId: listSongs
      responses: {"200": {description: ok}}
      externalDocs: {url: "https://songs.example.com/docs#list"}
"""


@pytest.mark.asyncio
async def test_a_plugin_that_writes_its_own_public_url(make_gateway, chain, signing_key):
    """URLs on the origin the manifest declares (not the upstream's address) are rewritten too;
    comments survive; a relative server URL becomes absolute on the proxy."""
    routes = {"/.well-known/ai-plugin.json": (200, "application/json", manifest_of(
                  "https://songs.example.com/openapi.yaml", logo_url="https://songs.example.com/logo.png",
                  legal_info_url="https://elsewhere.example.org/legal")),
              "/openapi.yaml": (200, "text/yaml", COMMENTED_OPENAPI)}
    async with Docs(routes) as docs:
        gw = await make_gateway(base_config(chain, None, signing_key, upstream=docs.url))
        async with gw.request("GET", "/.well-known/ai-plugin.json") as resp:
            manifest = await resp.json()
        assert manifest["api"]["url"] == f"http://{HOST}/openapi.yaml"
        assert manifest["logo_url"] == f"http://{HOST}/logo.png"
        assert manifest["legal_info_url"] == "https://elsewhere.example.org/legal"  # another origin: untouched
        # /openapi.yaml is not under .well-known and no rule lists it: the manifest names it, so it is served.
        async with gw.request("GET", "/openapi.yaml") as resp:
            assert resp.status == 200 and resp.content_type == "text/yaml"
            text = await resp.text()
    assert "# The owner's comment stays." in text and "# so does this one" in text
    document = yaml.safe_load(text)
    assert document["servers"] == [{"url": f"http://{HOST}/v1"}]
    assert document["paths"]["/songs"]["get"]["externalDocs"]["url"] == f"http://{HOST}/docs#list"
    validate(document)


@pytest.mark.asyncio
async def test_a_json_openapi_document_with_no_servers(make_gateway, chain, signing_key):
    openapi = {"openapi": "3.0.3", "info": {"title": "t", "version": "1"}, "paths": {}}
    routes = {"/.well-known/ai-plugin.json": (200, "application/json", manifest_of("/api/openapi.json")),
              "/api/openapi.json": (200, "application/json", json.dumps(openapi))}
    async with Docs(routes) as docs:
        gw = await make_gateway(base_config(chain, None, signing_key, upstream=docs.url))
        async with gw.request("GET", "/.well-known/ai-plugin.json") as resp:
            assert (await resp.json())["api"]["url"] == "/api/openapi.json"  # relative: already on the proxy
        async with gw.request("GET", "/api/openapi.json") as resp:
            assert resp.content_type == "application/json"
            assert (await resp.json())["servers"] == [{"url": f"http://{HOST}"}]
        async with gw.request("GET", "/api/other.json") as resp:  # not named by the manifest: not exposed
            assert resp.status == 404 and (await resp.json())["code"] == "endpoint_not_exposed"


@pytest.mark.asyncio
@pytest.mark.parametrize("route, status, code", [
    ((500, "application/json", "{}"), 502, "bad_upstream_document"),
    ((200, "application/json", "<html>"), 502, "bad_upstream_document"),
    ((200, "application/json", "[1, 2]"), 502, "bad_upstream_document"),
    (None, 404, "endpoint_not_exposed"),
])
async def test_upstream_failures_are_problems(make_gateway, chain, signing_key, route, status, code):
    routes = {"/.well-known/ai-plugin.json": route} if route else {}
    async with Docs(routes) as docs:
        gw = await make_gateway(base_config(chain, None, signing_key, upstream=docs.url))
        async with gw.request("GET", "/.well-known/ai-plugin.json") as resp:
            problem = await resp.json(content_type=None)
            assert resp.status == status and resp.content_type == "application/problem+json"
            assert problem["code"] == code
        # A JSON API without a (valid) manifest still serves its own .json paths.
        async with gw.request("GET", "/.well-known/data.json") as resp:
            assert resp.status == 404 and resp.content_type == "text/plain"


@pytest.mark.asyncio
async def test_an_unreachable_upstream_is_502(make_gateway, chain, signing_key):
    gw = await make_gateway(base_config(chain, None, signing_key, upstream="http://127.0.0.1:9"))
    async with gw.request("GET", "/.well-known/ai-plugin.json") as resp:
        assert resp.status == 502 and (await resp.json())["code"] == "upstream_unavailable"


@pytest.mark.asyncio
async def test_a_plugin_declaring_its_public_url_through_the_real_example(make_gateway, chain, signing_key):
    runner = web.AppRunner(create_plugin_app("s3cret", public_url="https://songs.example.com"))
    await runner.setup()
    await web.TCPSite(runner, "127.0.0.1", 0).start()
    try:
        url = f"http://127.0.0.1:{runner.addresses[0][1]}"
        gw = await make_gateway(base_config(chain, None, signing_key, upstream=url,
                                            upstream_auth={"type": "bearer", "token": "s3cret"}))
        async with gw.request("GET", "/.well-known/ai-plugin.json") as resp:
            text = await resp.text()
        async with gw.request("GET", "/.well-known/openapi.yaml") as resp:
            text += await resp.text()
    finally:
        await runner.cleanup()
    assert "songs.example.com" not in text and f"http://{HOST}/.well-known/openapi.yaml" in text
