"""ChatGPT plugins behind the gateway without a redeploy: the manifest and its OpenAPI document,
answered by the gateway with every upstream URL rewritten to the service's public URL.

For `GET /.well-known/ai-plugin.json` the gateway fetches the upstream's manifest (over the
shared pooled client, with the owner's `upstream_auth`), rewrites every URL on the upstream's
origin to the public base URL the client used, and sets `auth` to user_http bearer: each
subscriber pastes their own token. The OpenAPI document the manifest names (`api.url`, YAML or
JSON) is answered the same way, `servers` included (YAML keeps its comments). Everything else
under `/.well-known/` passes through untouched.

"The upstream's origin" is the origin of `upstream` in the config plus the origin the manifest's
`api.url` declares (a plugin that writes its own public URL, e.g. https://songs.example.com).
Upstream answers are cached for `ttl` seconds (a 404 too: a service that is not a plugin is asked
once per `ttl`; other failures for less); concurrent misses share one fetch (`gateway.inflight`).
Upstream failures are problems (`gateway.http.upstream.upstream_problem`): 502
`upstream_unavailable` / `bad_upstream_document`, 504 `upstream_timeout`, and 404 when the
upstream has no such document.
"""

from __future__ import annotations

import io
import json
import time
from dataclasses import dataclass
from typing import Any, Callable
from urllib.parse import urljoin, urlsplit, urlunsplit

import aiohttp
from aiohttp import web
from cachetools import TTLCache
from ruamel.yaml import YAML
from ruamel.yaml.error import YAMLError

from gateway.config.model import ServiceConfig
from gateway.http.problems import Problem
from gateway.http.public_url import DEFAULT_PORTS
from gateway.http.routing import normalize_path
from gateway.http.upstream import UPSTREAM_ERRORS, bad_upstream_document, upstream_problem
from gateway.inflight import InFlight

MANIFEST_PATH = "/.well-known/ai-plugin.json"
USER_HTTP_BEARER = {"type": "user_http", "authorization_type": "bearer"}
DOCUMENT_SUFFIXES = (".json", ".yaml", ".yml")
MAX_DOCUMENT = 4 * 1024 * 1024


@dataclass(frozen=True)
class _Fetched:
    """An upstream document as received, or the problem fetching it caused."""

    text: str = ""
    content_type: str = ""
    problem: Problem | None = None


class PluginDocuments:
    """Answers the plugin manifest and its OpenAPI document for every service."""

    def __init__(self, session: aiohttp.ClientSession, ttl: float = 30.0, error_ttl: float = 5.0,
                 clock: Callable[[], float] = time.monotonic) -> None:
        self.session, self.ttl, self.error_ttl, self.clock = session, ttl, error_ttl, clock
        self._cache: TTLCache[tuple[str, str], tuple[float, _Fetched]] = TTLCache(maxsize=1024, ttl=ttl, timer=clock)
        self._inflight: InFlight[tuple[str, str], _Fetched] = InFlight()

    async def answer(self, request: web.Request, service: ServiceConfig, path: str, base: str) -> web.Response | None:
        """The rewritten document for `path`, or None when `path` is not one of them (forward it)."""
        if request.method not in ("GET", "HEAD"):
            return None
        if path == MANIFEST_PATH:
            manifest = _manifest(await self._fetch(service, MANIFEST_PATH), MANIFEST_PATH)
            origins = _origins(service, manifest)
            rewritten = rewrite_urls(manifest, origins, base)
            rewritten["auth"] = dict(USER_HTTP_BEARER)
            return web.json_response(rewritten)
        if path.endswith(DOCUMENT_SUFFIXES):
            # Only a path the manifest names is the OpenAPI document; a service without a
            # manifest (or with a broken one) has none, and its .json paths are forwarded.
            try:
                manifest = _manifest(await self._fetch(service, MANIFEST_PATH), MANIFEST_PATH)
            except Problem:
                return None
            if openapi_path(manifest) != path:
                return None
            document = await self._fetch(service, path)
            if document.problem is not None:
                raise document.problem
            text, content_type = rewrite_openapi(document, _origins(service, manifest), base, path)
            return web.Response(text=text, content_type=content_type, charset="utf-8")
        return None

    async def _fetch(self, service: ServiceConfig, path: str) -> _Fetched:
        key = (service.id, path)
        cached = self._cache.get(key)
        if cached is not None and self.clock() < cached[0]:
            return cached[1]
        # Concurrent misses share one fetch; a client that leaves does not cancel it for the others.
        return await self._inflight.run(key, lambda: self._fetch_and_store(key, service, path))

    async def _fetch_and_store(self, key: tuple[str, str], service: ServiceConfig, path: str) -> _Fetched:
        fetched = await self._get(service, path)
        # A missing document (404) is as stable an answer as a document; other failures may pass soon.
        failed = fetched.problem is not None and fetched.problem.status != 404
        self._cache[key] = (self.clock() + (self.error_ttl if failed else self.ttl), fetched)
        return fetched

    async def _get(self, service: ServiceConfig, path: str) -> _Fetched:
        """GET the document from the upstream with the owner's credential (and nothing of the client's)."""
        headers = {"Accept": "application/json, application/yaml;q=0.9, */*;q=0.5"}
        if service.upstream_auth.header_name and service.upstream_auth.header_value:
            headers[service.upstream_auth.header_name] = service.upstream_auth.header_value
        timeout = aiohttp.ClientTimeout(total=service.timeout)
        try:
            async with self.session.get(service.upstream + path, headers=headers, allow_redirects=False,
                                        timeout=timeout, auto_decompress=True) as resp:
                if resp.status in (404, 410):
                    return _Fetched(problem=Problem(404, "endpoint_not_exposed", f"the upstream has no {path}"))
                if resp.status != 200:
                    return _Fetched(problem=bad_upstream_document(f"the upstream answered {resp.status} for {path}"))
                body = await resp.content.read(MAX_DOCUMENT + 1)
                if len(body) > MAX_DOCUMENT:
                    return _Fetched(problem=bad_upstream_document(
                        f"the upstream's {path} is larger than {MAX_DOCUMENT} bytes"))
                return _Fetched(body.decode("utf-8", errors="replace"), resp.headers.get("Content-Type", ""))
        except UPSTREAM_ERRORS as exc:
            return _Fetched(problem=upstream_problem(exc, service.timeout))


def _manifest(fetched: _Fetched, path: str) -> dict[str, Any]:
    if fetched.problem is not None:
        raise fetched.problem
    try:
        manifest = json.loads(fetched.text)
    except (ValueError, RecursionError):  # the owner's upstream, but bad nesting is a 502, not a crash
        raise bad_upstream_document(f"the upstream's {path} is not JSON") from None
    if not isinstance(manifest, dict):
        raise bad_upstream_document(f"the upstream's {path} is not a JSON object")
    return manifest


def openapi_path(manifest: dict[str, Any]) -> str | None:
    """The normalized path of the OpenAPI document the manifest names (`api.url`), if any."""
    api = manifest.get("api")
    url = api.get("url") if isinstance(api, dict) else None
    if not isinstance(url, str) or not url:
        return None
    path = urlsplit(urljoin("http://upstream" + MANIFEST_PATH, url)).path
    try:
        return normalize_path(path)
    except Problem:
        return None


def _origin(url: str) -> tuple[str, str, int] | None:
    try:
        parts = urlsplit(url)
        port = parts.port
    except ValueError:
        return None
    if parts.scheme not in DEFAULT_PORTS or not parts.hostname:
        return None
    return parts.scheme, parts.hostname.lower(), port or DEFAULT_PORTS[parts.scheme]


def _origins(service: ServiceConfig, manifest: dict[str, Any]) -> set[tuple[str, str, int]]:
    origins = {_origin(service.upstream)}
    api = manifest.get("api")
    if isinstance(api, dict) and isinstance(api.get("url"), str):
        origins.add(_origin(api["url"]))  # the plugin's own idea of its public origin
    origins.discard(None)
    return origins  # type: ignore[return-value]


def rewrite_url(value: str, origins: set[tuple[str, str, int]], base: str) -> str:
    """`value` on one of `origins` -> the same path, query and fragment under `base`."""
    if "://" not in value or _origin(value) not in origins:
        return value
    parts = urlsplit(value)
    return base + urlunsplit(("", "", parts.path, parts.query, parts.fragment))


def rewrite_urls(node: Any, origins: set[tuple[str, str, int]], base: str) -> Any:
    """Every string in a JSON/YAML tree that is a URL on `origins`, rewritten in place."""
    if isinstance(node, dict):
        for key, value in node.items():
            node[key] = rewrite_urls(value, origins, base)
    elif isinstance(node, list):
        for i, value in enumerate(node):
            node[i] = rewrite_urls(value, origins, base)
    elif isinstance(node, str):
        return rewrite_url(node, origins, base)
    return node


def rewrite_openapi(document: _Fetched, origins: set[tuple[str, str, int]], base: str, path: str) -> tuple[str, str]:
    """The OpenAPI document with its URLs (and `servers`) on the public base; (text, content type)."""
    is_json = "json" in document.content_type.lower() or document.text.lstrip().startswith("{")
    yaml = YAML()  # round-trip: the owner's comments and layout survive
    yaml.width = 4096
    try:
        tree = json.loads(document.text) if is_json else yaml.load(document.text)
    except (ValueError, YAMLError, RecursionError):
        raise bad_upstream_document(f"the upstream's {path} is not {'JSON' if is_json else 'YAML'}") from None
    if not isinstance(tree, dict):
        raise bad_upstream_document(f"the upstream's {path} is not an OpenAPI document")
    rewrite_urls(tree, origins, base)
    servers = tree.get("servers")
    if not isinstance(servers, list) or not servers:
        tree["servers"] = [{"url": base}]
    else:
        for server in servers:
            # Why absolute: a relative server URL means "relative to this document", which is now
            # the gateway; some clients (ChatGPT among them) want it spelled out.
            if isinstance(server, dict) and isinstance(server.get("url"), str) and "://" not in server["url"]:
                server["url"] = urljoin(base + path, server["url"]).rstrip("/") or base
    if is_json:
        return json.dumps(tree, indent=2), "application/json"
    out = io.StringIO()
    yaml.dump(tree, out)
    content_type = document.content_type.split(";")[0].strip().lower()
    return out.getvalue(), content_type if "yaml" in content_type else "application/yaml"
