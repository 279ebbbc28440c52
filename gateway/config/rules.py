"""Endpoint rules as written in the config: `[METHOD[,METHOD...]] PATTERN`.

PATTERN is an anchored regular expression over the whole normalized path (no
query, no fragment). `/:name` stands for one path segment. A full URL such as
`https://YOUR_SERVICE/.well-known/(.*)` is accepted and only its path is used.
Rules are compiled here, once, when the config is loaded.
"""

from __future__ import annotations

import re

from gateway.config.model import EndpointRule, Price

HTTP_METHODS = frozenset({"GET", "HEAD", "POST", "PUT", "PATCH", "DELETE", "OPTIONS"})

_PARAM = re.compile(r"(?<=/):([A-Za-z_][A-Za-z0-9_]*)")
_URL_PREFIX = re.compile(r"^[A-Za-z][A-Za-z0-9+.-]*://[^/]+(?=/)")


class RuleError(ValueError):
    """A rule that cannot be compiled; the message says why."""


def compile_rule(text: str, price: Price | None = None) -> EndpointRule:
    methods, pattern_text = _split_methods(text.strip())
    pattern_text = _URL_PREFIX.sub("", pattern_text, count=1)
    if not pattern_text.startswith("/"):
        raise RuleError(f"path pattern must start with '/' (got {pattern_text!r})")
    regex = _PARAM.sub(lambda m: f"(?P<{m.group(1)}>[^/]+)", pattern_text)
    try:
        compiled = re.compile(regex)
    except re.error as exc:
        raise RuleError(f"invalid regular expression: {exc}") from None
    return EndpointRule(source=text.strip(), methods=methods, pattern=compiled, price=price)


def _split_methods(text: str) -> tuple[frozenset[str] | None, str]:
    head, sep, rest = text.partition(" ")
    if not sep or head.startswith("/") or "://" in head:
        return None, text  # no method given: the rule applies to every method
    if head == "*":
        return None, rest.strip()
    methods = frozenset(m.strip().upper() for m in head.split(","))
    unknown = sorted(methods - HTTP_METHODS)
    if unknown:
        raise RuleError(f"unknown HTTP method(s) {', '.join(unknown)}")
    return methods, rest.strip()
