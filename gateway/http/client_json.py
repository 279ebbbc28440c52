"""The one parser of JSON that came from a client (sign-in bodies, MCP bodies, anything later).

`loads(body, hint)` accepts only strict RFC 8259 JSON in UTF-8: no other encoding, no BOM, no
duplicate keys, no `NaN`/`Infinity`, and nesting no deeper than `MAX_DEPTH`. Anything else is
Problem 400 `bad_request` (`hint` says what the client should have sent).

Why the depth is checked before the C parser runs: CPython's C JSON decoder recurses once per
nesting level and only stops at the interpreter's recursion limit, which a dependency (py_ecc,
imported through eth-account) raises to 100,000; 64 KiB of `[` then overflows the C stack and
the worker dies with a segfault. `nesting_depth_ok` is a scan done with bytes methods (C
speed, no Python loop per byte), measured on this machine (2 cores): a small MCP call ~0.01 ms
(a body with at most MAX_DEPTH brackets is accepted without a scan); per MiB: `[` ~3 ms, `[]`
~8 ms, `{"a":` ~25 ms, an array of 40,000 small objects ~8 ms (json.loads of it: ~30 ms), the
worst shape found (1 MiB of 63-deep teeth, 8 pair passes then a run scan) ~43 ms.

`cap_recursion_limit` is the second guard: `gateway serve` puts the limit back to CPython's
default after its imports (see gateway/cli.py), so that no recursive C code (PyJWT's json.loads
of a token header, for one) can overflow the stack either.
"""

from __future__ import annotations

import json
import re
import sys
from typing import Any

from gateway.http.problems import Problem

MAX_DEPTH = 64  # JSON-RPC and sign-in bodies nest 3 to 6 levels; MCP tool arguments a few more
SAFE_RECURSION_LIMIT = 1000  # CPython's default: what its C stack is sized for

_NOT_BRACKETS = bytes(b for b in range(256) if b not in b"[]{}")
_CURLY_TO_SQUARE = bytes.maketrans(b"{}", b"[]")
_RUNS = re.compile(rb"\[+|\]+")
_PAIR_PASSES = 8  # after k passes at most len/(k+1) runs are left for the (Python) run scan


def loads(body: bytes, hint: str, max_depth: int = MAX_DEPTH) -> Any:
    """The JSON value of a client's body; Problem 400 `bad_request` (`hint` + the reason) otherwise."""
    try:
        text = body.decode("utf-8")  # Why strict UTF-8: RFC 8259 §8.1; no UTF-16/32 guessing
    except UnicodeDecodeError:
        raise Problem(400, "bad_request", f"{hint} (the body is not UTF-8)") from None
    # Why before parsing: the C decoder's recursion is what kills the process (module docstring).
    if not nesting_depth_ok(body, max_depth):
        raise Problem(400, "bad_request", f"{hint} (JSON nested deeper than {max_depth} levels, or unbalanced)")
    try:
        return json.loads(text, object_pairs_hook=_no_duplicate_keys, parse_constant=_no_constants)
    except (ValueError, RecursionError) as exc:  # JSONDecodeError, a duplicate key, a huge integer
        raise Problem(400, "bad_request", f"{hint} ({_short(exc)})") from None


def nesting_depth_ok(body: bytes, limit: int = MAX_DEPTH) -> bool:
    """True if the JSON text nests arrays and objects at most `limit` deep (brackets inside
    strings do not count). False also for unbalanced brackets (not JSON either).

    Exact for valid JSON; for invalid JSON it may answer either way, but never True when the
    C decoder could recurse deeper than `limit` before finding the error: the decoder only
    recurses through a valid prefix, whose brackets this scan reads exactly as the decoder does."""
    if body.count(b"[") + body.count(b"{") <= limit:
        return True  # Why: a text cannot nest deeper than the brackets it contains
    brackets = _brackets_outside_strings(body)
    if b"[" * (limit + 1) in brackets:
        return False  # the plain attack (a run of openers), found by one substring search
    # Each pass removes every innermost "[]": the deepest level goes (all deepest positions are
    # innermost pairs) and no pair is made and removed in the same pass, so the depth drops by one.
    for _ in range(_PAIR_PASSES):
        if not brackets:
            return True
        if limit <= 0:
            return False  # brackets are left: one more level than allowed
        shorter = brackets.replace(b"[]", b"")
        if len(shorter) == len(brackets):
            return False  # brackets left, none of them a pair: unbalanced
        brackets, limit = shorter, limit - 1
    depth = 0
    for run in _RUNS.finditer(brackets):
        depth += (run.end() - run.start()) * (1 if brackets[run.start()] == 0x5B else -1)
        if depth > limit or depth < 0:
            return False
    return depth == 0


def _brackets_outside_strings(body: bytes) -> bytes:
    """The `[]{}` of the text outside strings, braces written as square brackets.

    Working on the UTF-8 bytes is exact: `"`, `\\` and brackets never occur inside a multi-byte
    sequence. Escapes are read left to right as the decoder does: first every escaped backslash
    goes (a run of n backslashes is n // 2 of them), then every escaped quote; the quotes left
    delimit strings, so every other piece of a split on them is outside a string."""
    unescaped = body.replace(b"\\\\", b"").replace(b'\\"', b"")
    outside = b"".join(unescaped.split(b'"')[0::2])
    return outside.translate(_CURLY_TO_SQUARE, _NOT_BRACKETS)


def _no_duplicate_keys(pairs: list[tuple[str, Any]]) -> dict[str, Any]:
    # Why: with {"method": "tools/list", "method": "tools/call"} a parser that keeps the first
    # key and one that keeps the last disagree on what runs (or who signed in); refused.
    keys = [key for key, _ in pairs]
    if len(keys) != len(set(keys)):
        raise ValueError("duplicate key in a JSON object")
    return dict(pairs)


def _no_constants(name: str) -> Any:
    # Why: NaN and Infinity are not JSON (RFC 8259 §6); other parsers upstream refuse them.
    raise ValueError(f"{name} is not JSON")


def _short(exc: BaseException) -> str:
    text = str(exc)
    return text if len(text) <= 200 else text[:200] + "..."  # Why: a detail is echoed, never unbounded


def cap_recursion_limit(limit: int = SAFE_RECURSION_LIMIT) -> None:
    """Put the interpreter's recursion limit back to at most `limit` (called once the heavy
    imports are done).

    Why: py_ecc (imported through eth-account -> eth-keyfile) sets it to 100,000 at import, for
    its recursive BLS12-381 code, which the gateway never calls (eth-keyfile only uses it for
    BLS keystores). With that limit Python-level and C-level recursion (json, re, pickle,
    PyJWT's header decode) run until the C stack overflows, a segfault instead of a
    RecursionError; at CPython's default they fail cleanly."""
    if sys.getrecursionlimit() > limit:
        sys.setrecursionlimit(limit)
