"""Client ID Metadata Documents: a client whose `client_id` is an HTTPS URL is described by the JSON
at that URL (draft-ietf-oauth-client-id-metadata-document, used by MCP clients since 2025-11-25).

Fetching a URL a stranger chose is a server-side request forgery risk, so the fetch is bounded:
- only `https://host[:port]/path` (a path, no fragment, no user info, no dot segments);
- never a loopback, private, link-local or otherwise non-public address, checked on the
  addresses the connection actually uses (a resolver that drops them: DNS rebinding gets nothing),
  unless `oauth.metadata_private_addresses` allows it (tests, a client on the operator's network);
- no redirects, no proxy from the environment, at most `MAX_BYTES` read, `TIMEOUT` seconds in all;
- the document must name the very URL as its `client_id` and list its redirect URIs.
A document is cached for `CACHE_TTL` (concurrent fetches of one URL share one request); a
failure is not cached, but it costs the asker a rate-limited request (`oauth.server`).
"""

from __future__ import annotations

import asyncio
import ipaddress
import json
import socket
import ssl
import time
from dataclasses import dataclass
from typing import Any, Callable
from urllib.parse import urlsplit

import aiohttp
from aiohttp.abc import AbstractResolver
from aiohttp.resolver import DefaultResolver
from cachetools import TTLCache

from gateway.config.oauth import redirect_uri
from gateway.inflight import InFlight

MAX_BYTES = 8 * 1024  # the draft suggests 5 KB; a little room for long redirect URIs
TIMEOUT = 5.0
CACHE_TTL = 300.0


class DocumentRefused(Exception):
    """The URL or its document cannot identify a client; the message says why (no content echoed)."""


@dataclass(frozen=True)
class ClientDocument:
    client_id: str
    name: str
    redirect_uris: tuple[str, ...]


def check_url(url: str, allow_private: bool) -> None:
    """Refuse a client_id URL that may not be fetched (DocumentRefused)."""
    parts = urlsplit(url)
    if len(url) > 2000 or parts.scheme != "https" or not parts.hostname or "@" in parts.netloc:
        raise DocumentRefused("a client_id URL is https://host/path, without user info")
    if parts.path in ("", "/") or parts.fragment or "#" in url:
        raise DocumentRefused("a client_id URL has a path and no fragment")
    if any(segment in (".", "..") for segment in parts.path.split("/")):
        raise DocumentRefused("a client_id URL has no dot segments")
    try:
        parts.port  # noqa: B018 - raises on a port that is not a number
        literal = ipaddress.ip_address(parts.hostname)
    except ValueError:
        return  # a host name: its addresses are checked when it is resolved
    if not allow_private and not literal.is_global:
        raise DocumentRefused("a client_id URL may not point at a private address")


class PrivateOnly(OSError):
    """A host name whose addresses are all non-public."""


class PublicOnlyResolver(AbstractResolver):
    """Resolves like aiohttp does, then keeps only public addresses (all, when private ones are allowed)."""

    def __init__(self, allow_private: bool) -> None:
        self._inner, self._allow_private = DefaultResolver(), allow_private

    async def resolve(self, host: str, port: int = 0, family: socket.AddressFamily = socket.AF_INET) -> list:
        found = await self._inner.resolve(host, port, family)
        if self._allow_private:
            return found
        # Why filter here: these are the addresses the connection will use, so a name that resolves
        # to a public address when checked and a private one when connecting (rebinding) gets nothing.
        public = [entry for entry in found if ipaddress.ip_address(entry["host"]).is_global]
        if not public:
            raise PrivateOnly(f"{host} resolves to no public address")
        return public

    async def close(self) -> None:
        await self._inner.close()


def parse_document(url: str, body: bytes) -> ClientDocument:
    try:
        document = json.loads(body.decode("utf-8"))
    except (UnicodeDecodeError, ValueError):
        raise DocumentRefused("the client metadata document is not UTF-8 JSON") from None
    if not isinstance(document, dict):
        raise DocumentRefused("the client metadata document is not a JSON object")
    # Why the exact URL: a document that names another client_id describes another client.
    if document.get("client_id") != url:
        raise DocumentRefused("the client metadata document's client_id is not its own URL")
    uris = document.get("redirect_uris")
    if not isinstance(uris, list) or not uris or len(uris) > 20:
        raise DocumentRefused("the client metadata document lists no redirect_uris (or more than 20)")
    try:
        checked = tuple(redirect_uri(uri) for uri in uris)
    except (ValueError, TypeError) as exc:
        raise DocumentRefused(f"the client metadata document has a bad redirect URI: {exc}") from None
    method = document.get("token_endpoint_auth_method", "none")
    if method != "none":
        # Why: a document is public; it cannot hold a shared secret, and private_key_jwt is not supported.
        raise DocumentRefused("a client metadata document's client is public (token_endpoint_auth_method none)")
    name = document.get("client_name")
    name = name if isinstance(name, str) and name.isprintable() and 0 < len(name) <= 200 else urlsplit(url).hostname
    return ClientDocument(url, str(name), checked)


class MetadataDocuments:
    """Fetches, checks and caches client metadata documents (one session of its own)."""

    def __init__(self, allow_private: bool, clock: Callable[[], float] = time.monotonic,
                 tls: ssl.SSLContext | None = None, timeout: float = TIMEOUT) -> None:
        """`tls`: the trust for HTTPS (default: the system's, which honours SSL_CERT_FILE)."""
        self.allow_private, self._tls, self._timeout = allow_private, tls, timeout
        self._cache: TTLCache[str, ClientDocument] = TTLCache(maxsize=1000, ttl=CACHE_TTL, timer=clock)
        self._inflight: InFlight[str, ClientDocument] = InFlight()

    async def get(self, url: str) -> ClientDocument:
        check_url(url, self.allow_private)
        cached = self._cache.get(url)
        if cached is not None:
            return cached
        document = await self._inflight.run(url, lambda: self._fetch(url))
        self._cache[url] = document
        return document

    async def _fetch(self, url: str) -> ClientDocument:
        # Why a session per fetch: fetches are rare (cached), and nothing outlives the request that
        # needed it (no pool to close on reload or shutdown, no connection kept to a stranger's host).
        connector = aiohttp.TCPConnector(resolver=PublicOnlyResolver(self.allow_private), use_dns_cache=False,
                                         force_close=True, ssl=self._tls if self._tls is not None else True)
        try:
            async with aiohttp.ClientSession(connector=connector, trust_env=False,
                                             timeout=aiohttp.ClientTimeout(total=self._timeout)) as session, \
                    session.get(url, allow_redirects=False, headers={"Accept": "application/json"}) as resp:
                if resp.status != 200:
                    raise DocumentRefused(f"the client metadata document answered HTTP {resp.status}")
                if (resp.content_length or 0) > MAX_BYTES:
                    raise DocumentRefused(f"the client metadata document is larger than {MAX_BYTES} bytes")
                body = b""
                while len(body) <= MAX_BYTES:  # Why a loop: a read returns what has arrived so far
                    chunk = await resp.content.read(MAX_BYTES + 1 - len(body))
                    if not chunk:
                        break
                    body += chunk
                if len(body) > MAX_BYTES:
                    raise DocumentRefused(f"the client metadata document is larger than {MAX_BYTES} bytes")
        except (aiohttp.ClientError, OSError, asyncio.TimeoutError) as exc:
            if isinstance(exc, PrivateOnly) or isinstance(getattr(exc, "os_error", None), PrivateOnly) \
                    or isinstance(exc.__cause__, PrivateOnly):
                raise DocumentRefused("the client_id URL's host resolves only to private addresses") from None
            raise DocumentRefused(f"the client metadata document could not be fetched ({type(exc).__name__})") from None
        return parse_document(url, body)
