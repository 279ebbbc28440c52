"""Routing: Host -> service, request path -> one canonical path, path -> open / protected / not exposed.

SPEC §4. The path returned by `normalize_path` is both the string the endpoint rules are matched
against and the string forwarded upstream, so what is authorized is exactly what is forwarded.
Anything that could make the upstream read a different path than the one authorized (encoded
`/` or `\\`, control characters, dot segments above the root, an escaped `%` that a second
decoding would turn into another escape such as `%252e`, overlong UTF-8, ...) is refused with 400.
Everything here is pure and synchronous; the host table and the rule regexes are built once.
"""

from __future__ import annotations

import re
import unicodedata
from dataclasses import dataclass
from typing import Iterable, Literal, NoReturn

from gateway.config.model import EndpointRule, ServiceConfig
from gateway.config.values import did_label  # noqa: F401 - computed by the config, re-exported
from gateway.http.problems import Problem

_PORT = re.compile(r":[0-9]*")
_HEX = frozenset("0123456789abcdefABCDEF")
_UNRESERVED = frozenset("ABCDEFGHIJKLMNOPQRSTUVWXYZabcdefghijklmnopqrstuvwxyz0123456789-._~")
# RFC 3986 pchar (unreserved / sub-delims / ":" / "@") plus "/": kept as received.
_PATH_SAFE = _UNRESERVED | frozenset("!$&'()*+,;=:@/")
_WELL_KNOWN = "/.well-known/"
_MAX_ECHO = 120  # how much of a bad Host header a 404 detail repeats
# A path of safe characters only (no escape, nothing to encode or refuse): canonical as it is.
_PLAIN = re.compile(r"[A-Za-z0-9\-._~!$&'()*+,;=:@/]*")


class ServiceRouter:
    """Host header -> ServiceConfig, through one dict built at start-up."""

    def __init__(self, services: Iterable[ServiceConfig], base_domain: str) -> None:
        base = base_domain.strip().lower().rstrip(".")
        self._by_host: dict[str, ServiceConfig] = {}
        for service in services:
            names = [f"{service.id}.{base}", *service.hosts]
            if service.did_label:
                names.append(f"{service.did_label}.{base}")
            for name in names:
                key = name.strip().lower().rstrip(".")
                other = self._by_host.get(key)
                # Why: two services on one host would make routing depend on config order. The config
                # refuses this first (gateway.config.checks.check_hosts); kept here as a guard.
                if other is not None and other.id != service.id:
                    raise ValueError(f"host {key!r} is claimed by services {other.id!r} and {service.id!r}")
                self._by_host[key] = service

    def resolve(self, host_header: str | None) -> ServiceConfig:
        """The service answering on `host_header`; Problem 404 `unknown_service` otherwise."""
        if not host_header:
            # Why: without a Host we cannot know which owner's service (and rules) apply.
            raise Problem(404, "unknown_service", "the request has no Host header")
        key = _host_key(host_header)
        service = self._by_host.get(key) if key else None
        if service is None:
            # Why: never fall back to a default service; an unknown name reaches nothing.
            shown = host_header if len(host_header) <= _MAX_ECHO else host_header[:_MAX_ECHO] + "..."
            raise Problem(404, "unknown_service", f"no service answers on host {shown!r}")
        return service


def _host_key(value: str) -> str | None:
    """Lower-cased host name without port or trailing dot; None when it cannot be a host of ours."""
    text = value.strip()
    # Why: non-ASCII is refused rather than lower-cased: str.lower() maps e.g. the Kelvin sign
    # to "k", which would let a look-alike name reach a real service. Hosts are IDNA (ASCII).
    if not text.isascii():
        return None
    text = text.lower()
    if text.startswith("["):  # IPv6 literal: "[::1]" or "[::1]:8080"
        name, bracket, rest = text.partition("]")
        if not bracket:
            return None
        name, port = name + "]", rest
    else:
        name, colon, port = text.partition(":")
        port = colon + port
    # Why: a port must be digits (or empty, RFC 3986); anything else is a malformed Host.
    if port and not _PORT.fullmatch(port):
        return None
    if name.endswith("."):
        name = name[:-1]  # "example.com." is the same fully-qualified name
    return name or None


def normalize_path(raw_path: str) -> str:
    """The canonical form of a request path (no query), or Problem 400 `bad_request`.

    Unreserved characters are decoded from %XX, every other escape is kept (hex in upper case),
    characters not allowed in a path are percent-encoded (UTF-8), dot segments are resolved
    (RFC 3986 §5.2.4, also when they were encoded), duplicate slashes are kept. The result is
    idempotent: normalizing it again returns it unchanged.
    """
    if not raw_path.startswith("/"):
        _bad(f"the path must start with '/' (got {raw_path[:40]!r})")
    text = _canonical_escapes(raw_path)
    if "%" in text:  # every hidden escape starts with one
        _refuse_hidden_escapes(text)
    if "/." not in text:  # no segment starts with '.': no dot segment to resolve or refuse
        return text
    out: list[str] = []
    segments = text[1:].split("/")
    for i, segment in enumerate(segments):
        last = i == len(segments) - 1
        if segment == ".":
            if last:
                out.append("")  # "/a/." is "/a/": the trailing slash stays
        elif segment == "..":
            # Why: climbing above the root has no meaning; an upstream or a file server that
            # clamps it differently would serve a path other than the one authorized.
            if not out:
                _bad("the path's '..' segments climb above the root")
            out.pop()
            if last:
                out.append("")
        elif segment.split(";", 1)[0] in (".", ".."):
            # Why: "..;" is a dot segment to Tomcat/Spring (path parameters dropped), so
            # "/.well-known/..;/query" would reach /query there while matching an open rule here.
            _bad(f"dot segment with path parameters ({segment[:40]!r})")
        else:
            out.append(segment)
    return "/" + "/".join(out)


def _canonical_escapes(raw: str) -> str:
    """Decode unreserved %XX, upper-case the rest, encode what a path may not hold raw; refuse the unsafe."""
    if _PLAIN.fullmatch(raw):
        return raw  # the loop below would keep every character as it is
    out: list[str] = []
    i, n = 0, len(raw)
    while i < n:
        ch = raw[i]
        if ch == "%":
            hexpair = raw[i + 1:i + 3]
            # Why: a malformed escape is read differently by different decoders.
            if len(hexpair) != 2 or not set(hexpair) <= _HEX:
                _bad(f"malformed percent escape {raw[i:i + 3]!r} at offset {i}")
            code = int(hexpair, 16)
            # Why: an encoded '/' or '\' is one segment here but two after an upstream decodes it.
            if code == 0x2F:
                _bad(f"encoded '/' (%2F) at offset {i}")
            if code == 0x5C:
                _bad(f"encoded '\\' (%5C) at offset {i}")
            # Why: NUL truncates paths in C code; CR/LF and other controls split headers and logs.
            if code < 0x20 or code == 0x7F:
                _bad(f"encoded control character %{hexpair.upper()} at offset {i}")
            decoded = chr(code)
            out.append(decoded if decoded in _UNRESERVED else "%" + hexpair.upper())
            i += 3
            continue
        if ch == "\\":
            # Why: many servers and frameworks treat '\' as '/', so it could hide a segment.
            _bad(f"backslash in the path at offset {i}")
        if ch == "#":
            # Why: a fragment is never sent; one in the path could widen a match (oauth2-proxy).
            _bad(f"'#' in the path at offset {i}")
        if ch == "?":
            # Why: the caller splits off the query; a '?' here would be read as one upstream.
            _bad(f"'?' in the path at offset {i} (the query must be split off first)")
        if unicodedata.category(ch) == "Cc":
            _bad(f"control character U+{ord(ch):04X} at offset {i}")
        if ch in _PATH_SAFE:
            out.append(ch)
        else:
            # A space, '<', '|', non-ASCII...: encoded, so one name has one spelling.
            try:
                data = ch.encode("utf-8", "surrogateescape")  # aiohttp decodes with surrogateescape
            except UnicodeEncodeError:
                _bad(f"undecodable character at offset {i}")
            out.append("".join(f"%{byte:02X}" for byte in data))
        i += 1
    return "".join(out)


# An escaped '%' that decoding once turns into the start of another escape: "%252e" -> "%2e" -> ".".
# Checked on the canonical text, where unreserved escapes are already decoded, so "%25%32%65" is
# caught as "%252e". "%25" then two hex digits covers every further level too ("%25252e" starts
# with "%2525"); "%25u" is IIS's "%u002e" spelling of a second-level escape.
_DOUBLE_ESCAPE = re.compile(r"%25(?:[0-9A-Fa-f]{2}|[uU])")
# Overlong UTF-8 (C0/C1 lead bytes, E0 80-9F, F0 80-8F): never valid, yet old decoders read
# "%C0%AE" as "." and "%C0%AF" as "/".
_OVERLONG = re.compile(r"%C[01]|%E0%[89]|%F0%8")


def _refuse_hidden_escapes(text: str) -> None:
    """Refuse what a second decoding (or a lax UTF-8 decoder) upstream would read as other characters."""
    if match := _DOUBLE_ESCAPE.search(text):
        # Why: an upstream (or a proxy chain) that decodes twice reads "/open/%252e%252e/paid" as "/paid",
        # and "/%2570aid" as "/paid", while here it is one plain segment under an open rule. Only an
        # escaped '%' that would start another escape is refused: "100%25" or "%25off" stay valid.
        _bad(f"double-encoded escape {match.group(0)!r} at offset {match.start()} of the canonical path")
    if match := _OVERLONG.search(text):
        # Why: an overlong UTF-8 sequence is a second spelling of an ASCII '.', '/' or '\\' for lax decoders.
        _bad(f"overlong UTF-8 escape {match.group(0)!r} at offset {match.start()} of the canonical path")


def _bad(detail: str) -> NoReturn:
    raise Problem(400, "bad_request", detail)


@dataclass(frozen=True)
class Decision:
    """How a request's endpoint is treated, and which rule said so (for logs and pricing)."""

    kind: Literal["open", "protected", "not_exposed"]
    rule: EndpointRule | None  # None for the implicit .well-known rule and for not_exposed

    @property
    def rule_name(self) -> str:
        if self.rule is not None:
            return self.rule.source
        return ".well-known" if self.kind == "open" else ""


def classify(service: ServiceConfig, method: str, path: str) -> Decision:
    """Classify a normalized path (from `normalize_path`). `/.gateway/` paths are classified too;
    the pipeline answers them itself, whatever the decision.

    Protected rules first, then open rules, then the implicit "GET/HEAD under /.well-known/ is
    open"; nothing matched: not_exposed. A rule that allows GET also allows HEAD (RFC 9110:
    HEAD is GET without the body; it costs the same when protected).
    """
    lax = lax_form(path) if service.protected_endpoints else path
    for rule in service.protected_endpoints:
        # Why: protected wins over open. A protected rule is also tried on the path as lenient
        # upstreams read it ('//' merged, trailing '/' and ';params' dropped), so "//query",
        # "/query/" or "/query;x" cannot slip through a broad open rule such as "GET /(.*)".
        if _allows(rule, method, path) or (lax != path and _allows(rule, method, lax)):
            return Decision("protected", rule)
    for rule in service.open_endpoints:
        if _allows(rule, method, path):
            return Decision("open", rule)  # the owner listed it as free
    # Why: discovery documents (ai-plugin.json, RFC 8615) must be readable without a token;
    # read-only methods only, since other methods on them are not discovery.
    if path.startswith(_WELL_KNOWN) and method in ("GET", "HEAD"):
        return Decision("open", None)
    # Why: deny by default; only what the owner listed is reachable.
    return Decision("not_exposed", None)


def _allows(rule: EndpointRule, method: str, path: str) -> bool:
    return rule.matches(method, path) or (method == "HEAD" and rule.matches("GET", path))


def lax_form(path: str) -> str:
    """The path as a lenient upstream may route it: ';params' dropped, '//' merged, no trailing '/'."""
    if ";" not in path and "//" not in path and (path == "/" or not path.endswith("/")):
        return path  # nothing a lenient upstream would read differently
    segments = (segment.split(";", 1)[0] for segment in path.split("/"))
    return "/" + "/".join(segment for segment in segments if segment)
