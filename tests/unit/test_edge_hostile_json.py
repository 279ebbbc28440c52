"""Hostile JSON never kills a process (issue 10, item 1): `gateway.http.client_json`'s depth scan
refuses JSON nested past the limit before the C decoder sees it. Deep bodies against the real
`gateway serve` with 2 workers are in tests/integration/test_edge_hostile_json_gateway.py."""

from __future__ import annotations

import json

import pytest
from hypothesis import given, settings
from hypothesis import strategies as st

from gateway.http import client_json
from gateway.http.problems import Problem


# --- gateway.http.client_json -------------------------------------------------------------------------


def nested(depth: int, kind: str = "[") -> bytes:
    return (b"[" * depth + b"]" * depth) if kind == "[" else (b'{"a":' * depth + b"1" + b"}" * depth)


@pytest.mark.parametrize("kind", ["[", "{"])
def test_json_nested_exactly_at_the_limit_is_accepted(kind):
    value = client_json.loads(nested(client_json.MAX_DEPTH, kind), "hint")
    depth = 0
    while isinstance(value, (list, dict)):
        value, depth = (value[0] if value else None) if isinstance(value, list) else value["a"], depth + 1
    assert depth == client_json.MAX_DEPTH


@pytest.mark.parametrize("kind", ["[", "{"])
def test_json_nested_one_past_the_limit_is_refused(kind):
    with pytest.raises(Problem) as refused:
        client_json.loads(nested(client_json.MAX_DEPTH + 1, kind), "send JSON")
    assert (refused.value.status, refused.value.code) == (400, "bad_request")
    assert refused.value.detail.startswith("send JSON (JSON nested deeper than 64")


@pytest.mark.parametrize("body", [
    b'["' + b"[" * 10_000 + b'"]',                         # brackets inside a string
    b'{"' + b"{[" * 5_000 + b'": "' + b"]}" * 5_000 + b'"}',  # ... in keys and values
    b'["\\"' + b"[" * 10_000 + b'\\""]',                   # after and before escaped quotes
    b'["\\\\\\"' + b"[" * 10_000 + b'"]',                  # an escaped backslash, then an escaped quote
    '["\u00e9[\\u005b' .encode() + b"[" * 1000 + b'"]',    # multi-byte UTF-8 and \\u escapes around them
])
def test_brackets_inside_strings_do_not_count_as_nesting(body):
    assert isinstance(client_json.loads(body, "hint"), (list, dict))


@pytest.mark.parametrize("body", [
    b'["\\\\", ' + nested(65) + b"]",          # an escaped backslash ends the string: the nesting is real
    b'["\\\\\\\\"' + b"," + nested(65) + b"]",  # two of them
    b"[" * 65 + b'"' + b"]" * 65,              # an unterminated string hides the closers: still deep
])
def test_escapes_cannot_hide_real_nesting(body):
    with pytest.raises(Problem) as refused:
        client_json.loads(body, "hint")
    assert refused.value.code == "bad_request"


@pytest.mark.parametrize("body, reason", [
    (b'{"message": "a", "message": "b", "signature": "0x"}', "duplicate key"),
    (b'[{"a": 1, "a": 1}]', "duplicate key"),
    ('{"message": "x"}'.encode("utf-16"), "not UTF-8"),
    (b"\xef\xbb\xbf{}", "BOM"),
    (b'{"message": "\xff"}', "not UTF-8"),
    (b"[NaN]", "NaN is not JSON"),
    (b"[-Infinity]", "-Infinity is not JSON"),
    (b"[1" + b"0" * 5000 + b"]", "digits"),
    (b"[]]", "Extra data"),
    (b"[]" * 40 + b"]" + b"[]" * 40, "unbalanced"),
    (b"{", "Expecting"),
])
def test_json_that_is_not_strict_is_refused(body, reason):
    with pytest.raises(Problem) as refused:
        client_json.loads(body, "hint")
    assert (refused.value.status, refused.value.code) == (400, "bad_request")
    assert reason in refused.value.detail and len(refused.value.detail) < 300


def depth_of(value) -> int:
    if isinstance(value, list):
        return 1 + max(map(depth_of, value), default=0)
    if isinstance(value, dict):
        return 1 + max(map(depth_of, value.values()), default=0)
    return 0


STRINGS = st.text(alphabet='[]{}"\\ab\u00e9/', max_size=6)
VALUES = st.recursive(st.none() | st.integers() | STRINGS,
                      lambda inner: st.lists(inner, max_size=4) | st.dictionaries(STRINGS, inner, max_size=3),
                      max_leaves=60)


@settings(max_examples=400, deadline=None)
@given(value=VALUES, limit=st.integers(0, 12), ascii_only=st.booleans())
def test_the_depth_scan_agrees_with_the_parsed_depth(value, limit, ascii_only):
    body = json.dumps(value, ensure_ascii=ascii_only).encode()
    assert client_json.nesting_depth_ok(body, limit) == (depth_of(value) <= limit)


@pytest.mark.parametrize("limit, expected", [(10, False), (11, True)])
def test_the_depth_scan_past_its_pair_passes_is_exact(limit, expected):
    # 1,000 teeth 10 deep inside one array: depth 11, still many runs after the 8 pair passes.
    body = b"[" + b"[" * 10 + b"]" * 10 + (b",[" + b"[" * 9 + b"]" * 10) * 999 + b"]"
    assert client_json.nesting_depth_ok(body, limit) is expected
