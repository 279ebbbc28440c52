"""Hostile spellings of a path: double-encoded separators and dot segments, and overlong UTF-8 forms of
ASCII, each of which the gateway refuses (unit: `normalize_path`; integration: a double-decoding upstream)."""

from __future__ import annotations

DOUBLE_ENCODED = [
    "/open/%252e%252e/paid",  # '..' once decoded twice
    "/open/%252E%252E/paid",
    "/open/%25%32%65%25%32%65/paid",  # the same, its hex digits escaped too
    "/open/%25%32%45./paid",
    "/open/%252e./paid",
    "/open/..%252fpaid",  # '/' once decoded twice
    "/open/..%252Fpaid",
    "/open/..%255cpaid",  # '\'
    "/open/%25%35%63",
    "/open/x%2500",  # NUL
    "/open/%25252e%25252e/paid",  # three decodings
    "/open/%2525",  # '%' itself
    "/%2570aid",  # "%70" is 'p': "/paid" to a double decoder
    "/open/%25u002e%25u002e/paid",  # IIS %u spelling at the second level
    "/open/%25U002E",
]
OVERLONG = ["/open/%C0%AE%C0%AE/paid", "/open/..%C0%AFpaid", "/open/%c1%9c", "/open/%E0%80%AE", "/open/%F0%80%80%AE"]
