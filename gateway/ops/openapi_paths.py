"""The paths `gateway import-openapi` writes rules for: the ones requests will have at the gateway.

A rule is matched against the request's path after `routing.normalize_path`, without its query
(gateway/config/rules.py), so a rule written from the document's text as-is never matches when
that text is not already in that form. Real documents have such paths:
- a server URL without a scheme (`localhost:5003/`, OpenAI's plugin quickstart, Apifox exports):
  its first part is a host, not the first segment of every path;
- a path key with a query (`/x/{id}?beta=true`): the rule is for `/x/{id}`, with any query;
- characters the normalizer escapes (a space, `<`, non-ASCII) or decodes (`%7E`), dot segments:
  the rule is written in the normalized spelling (`/café` -> `/caf%C3%A9`);
- a path the gateway refuses (a backslash, `%252e`, a fragment): no rule, since no request matches.
Each case is reported through `warn` (one line, printed by the command on stderr).
"""

from __future__ import annotations

import re
import secrets
from typing import Any, Callable, Mapping
from urllib.parse import urlsplit

from gateway.http.problems import Problem
from gateway.http.routing import normalize_path

Warn = Callable[[str], None]
PARAM = re.compile(r"\{([^{}/]+)\}")
# A host (name, IPv4 or [IPv6]) with an optional port: the start of a server URL written without a scheme.
_HOST = re.compile(r"(?:localhost|(?:[A-Za-z0-9-]+\.)+[A-Za-z][A-Za-z0-9-]*|\d{1,3}(?:\.\d{1,3}){3}"
                   r"|\[[0-9A-Fa-f:.]+\])(?::\d{1,5})?|[A-Za-z0-9.-]+:\d{1,5}")


def base_path(document: Mapping[str, Any], warn: Warn | None = None) -> str:
    """The path of the first server URL (variables at their defaults), without a trailing '/'."""
    servers = document.get("servers")
    if not isinstance(servers, list) or not servers or not isinstance(servers[0], dict):
        return ""
    written = str(servers[0].get("url") or "")
    variables = servers[0].get("variables") if isinstance(servers[0].get("variables"), dict) else {}
    url = PARAM.sub(lambda m: str((variables.get(m.group(1)) or {}).get("default", "")), written)
    if "://" in url or url.startswith("//"):
        path = urlsplit(url).path
    elif _HOST.fullmatch(url.split("/", 1)[0]):
        # `localhost:5003/` (OpenAI's plugin quickstart, Apifox exports): a host without its scheme.
        # Read as a path it would make every rule start with `/localhost:5003`, matching nothing.
        host, _, rest = url.partition("/")
        path = "/" + rest.split("?")[0]
        if warn:
            warn(f"servers[0].url {written!r} has no scheme: read as host {host!r} with base path "
                 f"{'/' + path.strip('/') if path.strip('/') else '/'!r} (write http://{url} or pass --base-path)")
    else:
        path = url.split("?")[0]  # relative to the document: `/api/v3`
    return "/" + path.strip("/") if path.strip("/") else ""


def rule_template(prefix: str, path: str, warn: Warn) -> str | None:
    """The document's path as the gateway will see it: query cut off, in its normalized spelling.

    None (with a warning) for a path no request can take, since the gateway refuses it."""
    bare, sep, query = path.partition("?")
    if sep:
        # Why: rules match the path alone (routing splits the query off first); a rule with
        # `\?beta=true` in it would never match. The rule then covers every query of that path.
        warn(f"path {path!r}: the query '?{query}' is not part of a rule: the rule for {bare!r} "
             f"matches it with any query")
    if "#" in bare:
        warn(f"path {path!r}: a '#' never reaches a server (clients cut the fragment off): skipped")
        return None
    # Parameters stand aside as unreserved placeholders while the rest is normalized exactly as
    # routing.normalize_path does to a request's path, which is what the rule is matched against.
    token = secrets.token_hex(6)
    names: list[str] = []

    def hold(m: re.Match[str]) -> str:
        names.append(m.group(0))
        return f"p{len(names) - 1}x{token}"

    held = PARAM.sub(hold, prefix + bare)
    try:
        normal = normalize_path(held)
    except Problem as exc:
        warn(f"path {path!r}: skipped, the gateway refuses such a path ({exc.detail})")
        return None
    for i, name in enumerate(names):
        if f"p{i}x{token}" not in normal:  # `/{id}/..`: the parameter's segment is gone
            warn(f"path {path!r}: skipped, its normalized form {normal!r} lost the parameter {name}")
            return None
        normal = normal.replace(f"p{i}x{token}", name)
    if normal != prefix + bare:
        warn(f"path {path!r}: requests reach the gateway as {normal!r} (normalized); the rule is written so")
    return normal
