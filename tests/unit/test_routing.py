"""gateway.http.routing: DID labels, Host -> service, path normalization, endpoint classification."""

from __future__ import annotations

import pytest
from hypothesis import example, given, settings
from hypothesis import strategies as st

from gateway.config.model import ServiceConfig, UpstreamAuth
from gateway.config.rules import compile_rule
from gateway.http.problems import Problem
from gateway.http.routing import Decision, ServiceRouter, classify, did_label, normalize_path

NVM_DID = "did:nv:27ca72cfc79dccf35e4e54a54f0ed3e3b04873ce682fd5bf351fe9aa377d68c4"
NVM_LABEL = "zparolnv3lqwtjk26xfkgustpbbk9gz9so4x30zfe5v8x8wqs"


def service(sid="elvis", *, open_=(), protected=(), did=None, hosts=()) -> ServiceConfig:
    return ServiceConfig(
        id=sid,
        upstream="http://127.0.0.1:9",
        upstream_auth=UpstreamAuth(type="none"),
        timeout=60.0,
        did=did,
        did_label=did_label(did) if did else None,
        hosts=tuple(hosts),
        open_endpoints=tuple(compile_rule(r) for r in open_),
        protected_endpoints=tuple(compile_rule(r) for r in protected),
    )


def refused(fn, *args) -> Problem:
    with pytest.raises(Problem) as info:
        fn(*args)
    return info.value


# --- did_label -------------------------------------------------------------------------------

def test_did_label_matches_nevermined_tutorial_example():
    assert did_label(NVM_DID) == NVM_LABEL


@pytest.mark.parametrize(
    "did, label",
    [
        ("did:nv:" + "0" * 64, "0"),
        ("did:nv:" + "0" * 62 + "23", "z"),  # 0x23 = 35
        ("did:nv:" + "0" * 62 + "24", "10"),  # 36
        (NVM_DID.upper().replace("DID:NV:", "did:nv:"), NVM_LABEL),  # hex letter case does not matter
    ],
)
def test_did_label_base36_edges(did, label):
    assert did_label(did) == label


def test_did_label_of_largest_did_fits_a_dns_label():
    assert len(did_label("did:nv:" + "f" * 64)) <= 63


@pytest.mark.parametrize(
    "bad",
    [
        "",
        "did:nv:",
        "did:nv:" + "0" * 63,
        "did:nv:" + "0" * 65,
        "did:nv:" + "g" * 64,
        "did:nv:0x" + "0" * 62,
        "did:ethr:" + "0" * 64,
        "DID:NV:" + "0" * 64,
        " " + NVM_DID,
        NVM_DID + "\n",
        NVM_DID[len("did:nv:"):],
        None,
        123,
    ],
)
def test_did_label_rejects_anything_but_did_nv_64_hex(bad):
    with pytest.raises(ValueError):
        did_label(bad)


# --- ServiceRouter.resolve -------------------------------------------------------------------

ELVIS = service("elvis", did=NVM_DID, hosts=("elvis.example.com", "API.Example.ORG."))
OTHER = service("other")
ROUTER = ServiceRouter([ELVIS, OTHER], "Proxy.Localhost")


@pytest.mark.parametrize(
    "host, sid",
    [
        ("elvis.proxy.localhost", "elvis"),  # id label
        ("other.proxy.localhost", "other"),
        (f"{NVM_LABEL}.proxy.localhost", "elvis"),  # did label
        ("elvis.example.com", "elvis"),  # extra hosts
        ("api.example.org", "elvis"),  # extra host given in mixed case with a trailing dot
        ("ELVIS.Proxy.LOCALHOST", "elvis"),  # case-insensitive
        (f"{NVM_LABEL.upper()}.proxy.localhost", "elvis"),
        ("elvis.proxy.localhost:8080", "elvis"),  # port ignored
        ("elvis.proxy.localhost:443", "elvis"),
        ("elvis.proxy.localhost:", "elvis"),  # empty port is allowed by RFC 3986
        ("elvis.proxy.localhost.", "elvis"),  # trailing dot
        ("elvis.proxy.localhost.:8080", "elvis"),
        ("  elvis.proxy.localhost  ", "elvis"),
    ],
)
def test_resolve_finds_service(host, sid):
    assert ROUTER.resolve(host).id == sid


def test_resolve_ipv6_literal_ignores_port():
    router = ServiceRouter([service("v6", hosts=("[::1]",))], "proxy.localhost")
    for host in ("[::1]", "[::1]:8080", "[::1]:"):
        assert router.resolve(host).id == "v6"


@pytest.mark.parametrize(
    "host",
    [
        None,
        "",
        "nobody.proxy.localhost",
        "proxy.localhost",
        "elvis",
        "elvis.proxy.localhost.evil.com",
        "evil.com",
        "xelvis.proxy.localhost",
        "elvis.proxy.localhost..",
        "elvis.proxy.localhost:http",  # a port is digits
        "elvis.proxy.localhost:80:80",
        "user@elvis.proxy.localhost",
        "[::1]:8080",  # IPv6 literal that no service claims
        "[::1",
        "::1",
        "\u212aelvis.proxy.localhost",  # Kelvin sign lower-cases to "k": never folded onto ASCII
        "elv\u0131s.proxy.localhost",
        "x" * 5000,
    ],
)
def test_resolve_unknown_or_missing_host_is_404_unknown_service(host):
    problem = refused(ROUTER.resolve, host)
    assert (problem.status, problem.code) == (404, "unknown_service")
    assert len(problem.detail) < 300


def test_router_refuses_two_services_on_one_host():
    with pytest.raises(ValueError, match="claimed by"):
        ServiceRouter([service("a", hosts=("x.example.com",)), service("b", hosts=("X.example.com",))], "p.test")


# --- normalize_path --------------------------------------------------------------------------

@pytest.mark.parametrize(
    "raw, expected",
    [
        ("/", "/"),
        ("/query", "/query"),
        ("/a/./b", "/a/b"),
        ("/a/b/../c", "/a/c"),
        ("/a/b/..", "/a/"),
        ("/a/.", "/a/"),
        ("/.", "/"),
        ("/a/b/c/../../d", "/a/d"),
        ("/%7Euser", "/~user"),
        ("/%7euser", "/~user"),
        ("/%41%62%2D%2e%5F", "/Ab-._"),  # unreserved decoded
        ("/a%20b", "/a%20b"),  # other escapes kept
        ("/a%3ab", "/a%3Ab"),  # ... with upper-case hex
        ("/a%3Fb%23c", "/a%3Fb%23c"),  # encoded '?' and '#' stay encoded: data, not delimiters
        ("/a%25b", "/a%25b"),  # '%' stays encoded: never decoded twice
        ("/100%25/x%25off", "/100%25/x%25off"),  # a '%' that starts no second escape (%252e: test_edge_path_spellings)
        ("/.well-known/../query", "/query"),
        ("/.well-known/%2e%2e/query", "/query"),
        ("/.well-known/%2E%2E/query", "/query"),
        ("/.well-known/.%2e/query", "/query"),
        ("/a/%2e/b", "/a/b"),
        ("//a//b", "//a//b"),  # duplicate slashes kept
        ("/a//../b", "/a/b"),  # '..' removes the empty segment (RFC 3986 §5.2.4)
        ("/.well-known//../query", "/.well-known/query"),  # ... so this stays under /.well-known/
        ("/a/...", "/a/..."),  # not a dot segment
        ("/a/..b/.c", "/a/..b/.c"),
        ("/a;x=1/b", "/a;x=1/b"),
        ("/a:b@c!$&'()*+,=", "/a:b@c!$&'()*+,="),  # sub-delims, ':' and '@' kept raw
        ("/a b", "/a%20b"),  # characters a path may not hold raw are encoded
        ("/a|b{c}", "/a%7Cb%7Bc%7D"),
        ("/caf\u00e9", "/caf%C3%A9"),  # non-ASCII: UTF-8 percent-encoded
        ("/x\udcff", "/x%FF"),  # a raw byte that was not UTF-8 (aiohttp's surrogateescape)
    ],
)
def test_normalize_path(raw, expected):
    assert normalize_path(raw) == expected
    assert normalize_path(expected) == expected


@pytest.mark.parametrize(
    "raw, why",
    [
        ("/a%2fb", "encoded '/'"),
        ("/a%2Fb", "encoded '/'"),
        ("/.well-known/%2E%2E%2Fquery", "encoded '/'"),
        ("/a%5cb", "encoded '\\'"),
        ("/a\\b", "backslash"),
        ("/%00", "control"),
        ("/a%0d%0aX-Evil:1", "control"),
        ("/a%7F", "control"),
        ("/a\x00b", "control"),
        ("/a\nb", "control"),
        ("/a\x7fb", "control"),
        ("/a\x85b", "control"),  # C1 control (NEL)
        ("/%zz", "malformed"),
        ("/%", "malformed"),
        ("/%4", "malformed"),
        ("/a%g1", "malformed"),
        ("/a#b", "'#'"),
        ("/a?b", "'?'"),
        ("", "start with '/'"),
        ("query", "start with '/'"),
        ("*", "start with '/'"),
        ("http://evil/query", "start with '/'"),
        ("/..", "climb"),
        ("/../x", "climb"),
        ("/a/../../b", "climb"),
        ("/%2e%2e/x", "climb"),
        ("/.well-known/..;/query", "path parameters"),  # Tomcat's "..;" bypass
        ("/a/.;x/b", "path parameters"),
        ("/x\ud800", "undecodable"),  # a lone surrogate that is not an escaped byte
    ],
)
def test_normalize_path_refuses(raw, why):
    problem = refused(normalize_path, raw)
    assert (problem.status, problem.code) == (400, "bad_request")
    assert why in problem.detail


_PIECES = ["/", "/", ".", "..", "%2e", "%2E", "%2f", "%2F", "%5c", "%", "%7e", "%41", "%25", "%20",
           "a", "b", ";", ";x", "\\", "#", "%00", "?", " ", "\u00e9", ":", "@", "%3a"]


@settings(max_examples=800, deadline=None)
@given(st.one_of(st.text(), st.lists(st.sampled_from(_PIECES), max_size=14).map("".join)))
@example("/.well-known/%2e%2e/query")
@example("//..//../a")
def test_normalize_path_property(raw):
    try:
        path = normalize_path(raw)
    except Problem as problem:
        assert (problem.status, problem.code) == (400, "bad_request")
        return
    assert path.startswith("/")
    assert not {".", ".."} & set(path.split("/")[1:])
    assert "%2F" not in path.upper() and "%5C" not in path.upper()
    assert "\\" not in path and "#" not in path and "?" not in path
    assert path.isascii() and path.isprintable() and " " not in path
    assert normalize_path(path) == path


# --- classify --------------------------------------------------------------------------------

SONGS = service(
    open_=["GET /openapi.json", "GET /public/(.*)", "POST /query"],
    protected=["POST /query", "POST /summarize/:song", "GET,POST /ask", "/.well-known/secret", "* /any"],
)


@pytest.mark.parametrize(
    "method, path, kind, rule_name",
    [
        ("POST", "/query", "protected", "POST /query"),  # protected beats open for the same path
        ("GET", "/openapi.json", "open", "GET /openapi.json"),
        ("HEAD", "/openapi.json", "open", "GET /openapi.json"),  # HEAD allowed by a GET rule
        ("POST", "/openapi.json", "not_exposed", ""),  # method filtering
        ("GET", "/public/a/b", "open", "GET /public/(.*)"),
        ("GET", "/.well-known/ai-plugin.json", "open", ".well-known"),  # implicit open rule
        ("HEAD", "/.well-known/ai-plugin.json", "open", ".well-known"),
        ("POST", "/.well-known/ai-plugin.json", "not_exposed", ""),  # implicit rule is read-only
        ("GET", "/.well-known", "not_exposed", ""),  # not *under* /.well-known/
        ("GET", "/.well-known/secret", "protected", "/.well-known/secret"),  # listed as protected
        ("POST", "/summarize/hound-dog", "protected", "POST /summarize/:song"),  # :param rules
        ("POST", "/summarize/a/b", "not_exposed", ""),  # :param is one segment
        ("POST", "/summarize/", "not_exposed", ""),
        ("GET", "/ask", "protected", "GET,POST /ask"),
        ("HEAD", "/ask", "protected", "GET,POST /ask"),  # HEAD costs what GET costs
        ("DELETE", "/ask", "not_exposed", ""),
        ("DELETE", "/any", "protected", "* /any"),
        ("GET", "/query", "not_exposed", ""),
        ("POST", "/query/x", "not_exposed", ""),  # anchored at the end
        ("POST", "/xquery", "not_exposed", ""),  # anchored at the start
        ("POST", "/a/query", "not_exposed", ""),
        ("POST", "/query?x", "not_exposed", ""),  # a query never takes part
        ("get", "/openapi.json", "not_exposed", ""),  # methods are case-sensitive (RFC 9110)
        ("GET", "/nothing", "not_exposed", ""),  # deny by default
    ],
)
def test_classify(method, path, kind, rule_name):
    decision = classify(SONGS, method, path)
    assert (decision.kind, decision.rule_name) == (kind, rule_name)
    assert (decision.rule is None) == (rule_name in ("", ".well-known"))


def test_query_string_never_matches_a_rule():
    rule = compile_rule("POST /query")
    assert not rule.matches("POST", "/query?x")
    assert rule.pattern.fullmatch("/query?x") is None


def test_no_rules_only_well_known_is_open():
    bare = service()
    assert classify(bare, "GET", "/.well-known/ai-plugin.json") == Decision("open", None)
    assert classify(bare, "GET", "/") == Decision("not_exposed", None)


def test_full_url_rule_matches_its_path():
    nvm = service(open_=["https://YOUR_SERVICE/.well-known/(.*)"], protected=["https://YOUR_SERVICE/query"])
    assert classify(nvm, "POST", "/.well-known/x").kind == "open"  # Nevermined rules carry no method
    assert classify(nvm, "PUT", "/query").kind == "protected"


# A broad open rule must not let a lenient upstream serve a protected path for free.
WIDE_OPEN = service(open_=["GET /(.*)"], protected=["GET /premium", "GET /paid/:id"])


@pytest.mark.parametrize(
    "path",
    ["/premium", "//premium", "/premium/", "/premium;jsessionid=1", "/premium;/", "///premium//", "/paid//7"],
)
def test_protected_wins_over_lenient_upstream_spellings(path):
    assert classify(WIDE_OPEN, "GET", normalize_path(path)).kind == "protected"


def test_broad_open_rule_still_opens_other_paths():
    assert classify(WIDE_OPEN, "GET", "/premium-preview").kind == "open"
    assert classify(WIDE_OPEN, "GET", "/docs//intro").kind == "open"


# --- end to end: normalize then classify -----------------------------------------------------

NVM = service(open_=["GET /.well-known/(.*)"], protected=["POST /query"])


@pytest.mark.parametrize(
    "raw",
    [
        "/.well-known/../query",
        "/.well-known/%2e%2e/query",
        "/.well-known/%2E%2E/query",
        "/.well-known/.%2e/query",
        "/.well-known/%2e./query",
        "/.well-known/./../query",
        "/.well-known/x/../../query",
        "/.well-known/..%2Fquery",
        "/.well-known%2F..%2Fquery",
        "/.well-known/%2E%2E%2Fquery",
        "/.well-known/..%5Cquery",
        "/.well-known/..\\query",
        "/.well-known/..;/query",
        "/.well-known/%2e%2e;/query",
        "/.well-known/../query#",
        "/.well-known/../query%00",
        "/.well-known/../../query",
        "/.well-known/../query/",
        "/.well-known/../query;x",
    ],
)
@pytest.mark.parametrize("method", ["POST", "GET", "HEAD"])
def test_traversal_out_of_open_prefix_is_refused_or_protected(raw, method):
    try:
        path = normalize_path(raw)
    except Problem as problem:
        assert problem.status == 400
        return
    decision = classify(NVM, method, path)
    assert decision.kind != "open", (raw, path)
    if method == "POST":
        assert decision.kind == "protected", (raw, path)
