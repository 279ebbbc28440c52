"""Issue 10 item 14: no path means one thing at the gateway and another upstream.

An escaped '%' followed by what decodes to another escape ("%252e", "%25%32%65", "%2570"...) is
one plain segment for the gateway but a dot, a slash or another letter for an upstream that
decodes twice (IIS, some servlet and proxy chains). Such spellings are refused with 400
`bad_request`, like single-encoded separators; so are overlong UTF-8 spellings of ASCII.
"""

from __future__ import annotations

from urllib.parse import unquote

import pytest
from hypothesis import example, given, settings
from hypothesis import strategies as st

from gateway.http.problems import Problem
from gateway.http.routing import normalize_path
from tests.support.path_spellings import DOUBLE_ENCODED, OVERLONG


@pytest.mark.parametrize("raw", DOUBLE_ENCODED)
def test_double_encoded_separators_are_refused(raw):
    with pytest.raises(Problem) as info:
        normalize_path(raw)
    assert (info.value.status, info.value.code) == (400, "bad_request")
    assert "double-encoded" in info.value.detail


@pytest.mark.parametrize("raw", OVERLONG)
def test_overlong_utf8_spellings_of_ascii_are_refused(raw):
    with pytest.raises(Problem) as info:
        normalize_path(raw)
    assert (info.value.status, info.value.code) == (400, "bad_request")
    assert "overlong" in info.value.detail


@pytest.mark.parametrize("raw, expected", [
    ("/files/100%25", "/files/100%25"),  # a literal '%' that starts no second escape stays valid
    ("/sale/%25off", "/sale/%25off"),
    ("/a%25/b", "/a%25/b"),
    ("/a%25%20b", "/a%25%20b"),  # "%" then an escape that is not unreserved: no second-level escape
    ("/caf%C3%A9", "/caf%C3%A9"),  # valid UTF-8 is untouched
    ("/x%FF", "/x%FF"),
])
def test_a_plain_escaped_percent_is_not_refused(raw, expected):
    assert normalize_path(raw) == expected


# Fragments an attacker combines: separators, dots, escapes of them, escaped '%', hex digits, ...
_FRAGMENTS = ["/", "/", ".", "..", "\\", "%", "%25", "%2", "%5", "2", "5", "e", "E", "f", "F", "c", "C", "0", "a",
              "%2e", "%2E", "%2f", "%2F", "%5c", "%5C", "%32", "%35", "%65", "%45", "%66", "%63", "%30", "%00",
              "%u", "u", ";", "?", "%3f", "%C0", "%AE", "x"]


def _segments(path: str) -> list[str]:
    return path.split("/")


@settings(max_examples=1500, deadline=None)
@given(st.lists(st.sampled_from(_FRAGMENTS), max_size=16).map(lambda parts: "/" + "".join(parts)))
@example("/open/%252e%252e/paid")
@example("/open/%25%32%65%25%32%65/paid")
@example("/%%32%65")
@example("/%25%25%32%65")
def test_hostile_path_spellings_never_mean_another_path_after_one_or_two_decodings(raw):
    try:
        path = normalize_path(raw)
    except Problem as problem:
        assert (problem.status, problem.code) == (400, "bad_request")
        return
    assert normalize_path(path) == path  # stable
    segments = _segments(path)
    assert not {".", ".."} & set(segments[1:])  # no dot segment
    upper = path.upper()
    assert "%2F" not in upper and "%5C" not in upper and "%00" not in upper and "\\" not in path
    for decoded in (unquote(path), unquote(unquote(path)), unquote(unquote(unquote(path)))):
        # Once, twice or three times decoded, the path has the same segments, none a dot segment:
        # an upstream that decodes again reaches the resource that was authorized, nothing else.
        assert "\\" not in decoded and "\x00" not in decoded
        decoded_segments = _segments(decoded)
        assert len(decoded_segments) == len(segments), (raw, path, decoded)
        assert not {".", ".."} & set(decoded_segments[1:]), (raw, path, decoded)
    # and the second decoding changes nothing the first did not (no escape is hidden one level down)
    assert unquote(unquote(path)) == unquote(path), (raw, path)
