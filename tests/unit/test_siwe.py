"""gateway.auth.siwe: the EIP-4361 parser accepts exactly the ABNF, and writes back what it read.

Examples come from the EIP itself; the properties are fuzzed with hypothesis: any text either
parses or raises SiweError (nothing else escapes), and whatever parses is written back to the
very same text (nothing is normalized, so what was signed is what was read)."""

from __future__ import annotations

import string
import time
from datetime import timezone

import pytest
from eth_utils import to_checksum_address
from hypothesis import HealthCheck, example, given, settings
from hypothesis import strategies as st

from gateway.auth.siwe import SiweError, SiweMessage, parse, parse_authority, split_uri, timestamp

EIP_EXAMPLE = """example.com wants you to sign in with your Ethereum account:
0xC02aaA39b223FE8D0A0e5C4F27eAD9083C756Cc2

I accept the ExampleOrg Terms of Service: https://example.com/tos

URI: https://example.com/login
Version: 1
Chain ID: 1
Nonce: 32891756
Issued At: 2021-09-30T16:25:24Z
Resources:
- ipfs://bafybeiemxf5abjwjbikoz4mc3a3dla6ual3jsgpdr4cjr3oz3evfyavhwq/
- https://example.com/my-web2-claim.json"""


def test_the_eips_example_parses_and_round_trips():
    m = parse(EIP_EXAMPLE)
    assert (m.scheme, m.domain, m.address) == (None, "example.com", "0xC02aaA39b223FE8D0A0e5C4F27eAD9083C756Cc2")
    assert m.statement == "I accept the ExampleOrg Terms of Service: https://example.com/tos"
    assert (m.uri, m.version, m.chain_id, m.nonce) == ("https://example.com/login", "1", 1, "32891756")
    assert m.issued_at == "2021-09-30T16:25:24Z" and timestamp(m.issued_at) == 1633019124
    assert m.resources == ("ipfs://bafybeiemxf5abjwjbikoz4mc3a3dla6ual3jsgpdr4cjr3oz3evfyavhwq/",
                           "https://example.com/my-web2-claim.json")
    assert m.text() == EIP_EXAMPLE


@pytest.mark.parametrize("origin, scheme, domain", [
    ("https://example.com", "https", "example.com"),
    ("example.com:3388", None, "example.com:3388"),
    ("http://127.0.0.1:8080", "http", "127.0.0.1:8080"),
    ("[::1]:8080", None, "[::1]:8080"),
])
def test_explicit_scheme_and_port_are_kept(origin, scheme, domain):
    m = parse(EIP_EXAMPLE.replace("example.com wants", f"{origin} wants", 1))
    assert (m.scheme, m.domain) == (scheme, domain)


def test_optional_fields_in_order():
    text = EIP_EXAMPLE.replace("Resources:", "Expiration Time: 2021-10-01T00:00:00.5+02:00\n"
                               "Not Before: 2021-09-30t16:00:00z\nRequest ID: abc-1:@\nResources:")
    m = parse(text)
    assert m.expiration_time == "2021-10-01T00:00:00.5+02:00"
    assert timestamp(m.expiration_time) == timestamp("2021-09-30T22:00:00Z") + 0.5
    assert (m.not_before, m.request_id) == ("2021-09-30t16:00:00z", "abc-1:@")
    assert m.text() == text


def test_no_statement_means_three_line_feeds_and_an_empty_statement_four():
    without = EIP_EXAMPLE.replace("I accept the ExampleOrg Terms of Service: https://example.com/tos\n\n", "\n")
    assert "Cc2\n\n\nURI: " in without and parse(without).statement is None
    empty = EIP_EXAMPLE.replace("I accept the ExampleOrg Terms of Service: https://example.com/tos", "")
    assert parse(empty).statement == ""
    assert parse(without).text() == without and parse(empty).text() == empty


def test_resources_line_with_no_items_and_no_resources_at_all():
    head = EIP_EXAMPLE.split("\nResources:")[0]
    assert parse(head).resources is None
    assert parse(head + "\nResources:").resources == ()


@pytest.mark.parametrize("change, where", [
    (("example.com wants", "exa mple.com wants"), "line 1"),
    (("example.com wants", "ex\"ample.com wants"), "line 1"),
    (("example.com wants", "user@host@example.com wants"), "line 1"),
    (("example.com wants", "example.com:80x wants"), "line 1"),
    (("example.com wants", "1http://example.com wants"), "scheme"),
    (("example.com wants", "[fe80::1%25eth0] wants"), "IP literal"),
    (("wants you to sign in", "wants you to log in"), "line 1"),
    (("0xC02aaA39b223FE8D0A0e5C4F27eAD9083C756Cc2", "0xC02aaA39b223FE8D0A0e5C4F27eAD9083C756cc2"), "EIP-55"),
    (("0xC02aaA39b223FE8D0A0e5C4F27eAD9083C756Cc2", "0xC02aaA39b223FE8D0A0e5C4F27eAD9083C756C"), "40 hex"),
    (("Service: https", "Service: \"https"), "statement"),
    (("URI: https://example.com/login", "URI: /login"), "URI"),
    (("URI: https://example.com/login", "URI: https://example.com/lo gin"), "URI"),
    (("URI: https://example.com/login", "URI: https://example.com/%zz"), "URI"),
    (("Version: 1", "Version: 2"), "Version"),
    (("Chain ID: 1", "Chain ID: 0x1"), "Chain ID"),
    (("Chain ID: 1", "Chain ID: " + "9" * 79), "Chain ID"),
    (("Chain ID: 1", "Chain ID: 01"), "Chain ID"),
    (("Nonce: 32891756", "Nonce: 1234567"), "Nonce"),
    (("Nonce: 32891756", "Nonce: 1234567_8"), "Nonce"),
    (("2021-09-30T16:25:24Z", "2021-09-30 16:25:24Z"), "Issued At"),
    (("2021-09-30T16:25:24Z", "2021-02-30T16:25:24Z"), "Issued At"),
    (("2021-09-30T16:25:24Z", "2021-09-30T24:00:00Z"), "Issued At"),
    (("2021-09-30T16:25:24Z", "2021-09-30T16:25:24+24:00"), "Issued At"),
    (("2021-09-30T16:25:24Z", "2021-09-30T16:25:24"), "Issued At"),
    (("Version: 1\n", "Version: 1\r\n"), "Version"),
    (("Chain ID: 1\nNonce: 32891756", "Nonce: 32891756\nChain ID: 1"), "Chain ID"),
    (("\n- https://example.com/my-web2-claim.json", "\n-https://example.com/my-web2-claim.json"),
     'line 13: expected "- "'),
])
def test_malformed_messages_are_refused_saying_where(change, where):
    text = EIP_EXAMPLE.replace(*change)
    assert text != EIP_EXAMPLE
    with pytest.raises(SiweError, match=where):
        parse(text)


@pytest.mark.parametrize("text", [
    "", "hello", EIP_EXAMPLE + "\n", "\n" + EIP_EXAMPLE, EIP_EXAMPLE.replace("\n", "\r\n"),
    EIP_EXAMPLE.replace("example.com wants", "exämple.com wants"), EIP_EXAMPLE.replace("\n\nURI", "\nURI"),
    EIP_EXAMPLE.split("Issued At")[0].rstrip("\n"), EIP_EXAMPLE + "\nResources:",
    EIP_EXAMPLE.replace("Resources:", "Request ID: x\nNot Before: 2021-09-30T16:25:24Z\nResources:"),
])
def test_structural_errors_are_refused(text):
    with pytest.raises(SiweError):
        parse(text)


@pytest.mark.parametrize("field, value", [
    ("I accept", "a" * 60_000 + '"'), ("Chain ID: 1", "Chain ID: " + "0" * 60_000 + "1"),
    ("URI: https://example.com/login", "URI: https://example.com" + "/a" * 30_000 + " "),
    ("URI: https://example.com/login", "URI: https://e?" + "?/" * 30_000),
    ("example.com wants", "a" * 60_000 + "% wants"), ("16:25:24Z", "16:25:24." + "9" * 60_000 + "Z"),
])
def test_huge_fields_are_handled_in_linear_time(field, value):
    started = time.perf_counter()
    try:
        parse(EIP_EXAMPLE.replace(field, value, 1))
    except SiweError:
        pass
    assert time.perf_counter() - started < 1.0


def test_non_strings_are_refused():
    with pytest.raises(SiweError):
        parse(b"example.com wants you")  # type: ignore[arg-type]


def test_single_case_addresses_carry_no_checksum_and_are_accepted():
    checksummed = "0xC02aaA39b223FE8D0A0e5C4F27eAD9083C756Cc2"
    lower = EIP_EXAMPLE.replace(checksummed, checksummed.lower())
    assert parse(lower).address == "0xc02aaa39b223fe8d0a0e5c4f27ead9083c756cc2"


def test_leap_second_and_offsets():
    assert timestamp("2016-12-31T23:59:60Z") == timestamp("2017-01-01T00:00:00Z")
    assert timestamp("2021-09-30T18:25:24+02:00") == timestamp("2021-09-30T16:25:24Z")
    assert timestamp("2021-09-30T16:25:24.250Z") == timestamp("2021-09-30T16:25:24Z") + 0.25


def test_authority_and_uri_pieces():
    assert parse_authority("u:p@Example.COM:8080").host == "Example.COM"
    assert parse_authority("example.com:").port == ""
    assert parse_authority("[v1.fe]").host == "[v1.fe]"
    assert split_uri("urn:isbn:0451450523") == ("urn", None, "isbn:0451450523")
    scheme, authority, path = split_uri("https://a.example:443/x/y?q=1/?#f?")
    assert (scheme, authority.host, authority.port, path) == ("https", "a.example", "443", "/x/y")


# --- properties -----------------------------------------------------------------------------------

UNRESERVED = string.ascii_letters + string.digits + "-._~"
SUB_DELIMS = "!$&'()*+,;="
PCHAR = UNRESERVED + SUB_DELIMS + ":@"
STATEMENT = UNRESERVED + SUB_DELIMS + ":/?#[]@ "

hosts = st.one_of(
    st.from_regex(r"[a-z0-9]([a-z0-9-]{0,10}[a-z0-9])?(\.[a-z0-9]{1,8}){0,3}", fullmatch=True),
    st.ip_addresses(v=4).map(str),
    st.ip_addresses(v=6).map(lambda a: f"[{a}]"),
)
ports = st.one_of(st.none(), st.integers(0, 65535).map(str))
authorities = st.builds(lambda h, p: h if p is None else f"{h}:{p}", hosts, ports)
segments = st.text(PCHAR, max_size=8)
uris = st.builds(
    lambda scheme, authority, segs, query, fragment: f"{scheme}://{authority}" + "".join("/" + s for s in segs)
    + ("" if query is None else "?" + query) + ("" if fragment is None else "#" + fragment),
    st.sampled_from(["https", "http", "ipfs", "did+x", "a.b-c"]), authorities, st.lists(segments, max_size=4),
    st.one_of(st.none(), st.text(PCHAR + "/?", max_size=10)), st.one_of(st.none(), st.text(PCHAR + "/?", max_size=10)),
)
datetimes = st.builds(
    lambda dt, frac, zone: f"{dt.year:04d}-" + dt.strftime("%m-%dT%H:%M:%S") + frac + zone,
    st.datetimes(timezones=st.just(timezone.utc)), st.sampled_from(["", ".5", ".123456789"]),
    st.sampled_from(["Z", "+00:00", "-05:30", "+14:00"]),
)
addresses = st.binary(min_size=20, max_size=20).flatmap(
    lambda raw: st.sampled_from(["0x" + raw.hex(), to_checksum_address(raw)]))
optional = lambda s: st.one_of(st.none(), s)  # noqa: E731

messages = st.builds(
    SiweMessage,
    domain=authorities, address=addresses, uri=uris, chain_id=st.integers(1, 2**256 - 1),
    nonce=st.text(string.ascii_letters + string.digits, min_size=8, max_size=40), issued_at=datetimes,
    scheme=optional(st.sampled_from(["https", "http"])), statement=optional(st.text(STATEMENT, max_size=60)),
    expiration_time=optional(datetimes), not_before=optional(datetimes),
    request_id=optional(st.text(PCHAR, max_size=20)),
    resources=optional(st.lists(uris, max_size=3).map(tuple)),
)


@settings(max_examples=300, suppress_health_check=[HealthCheck.too_slow])
@given(messages)
def test_every_valid_message_round_trips(message):
    assert parse(message.text()) == message


@settings(max_examples=500)
@given(st.text())
@example("x wants you to sign in with your Ethereum account:\n0x" + "0" * 40 + "\n\n\n")
def test_arbitrary_text_raises_only_siwe_error(text):
    try:
        parse(text)
    except SiweError:
        pass


@settings(max_examples=500, suppress_health_check=[HealthCheck.too_slow])
@given(messages, st.data())
def test_mutated_messages_parse_exactly_or_raise_siwe_error(message, data):
    text = message.text()
    start = data.draw(st.integers(0, len(text)))
    end = data.draw(st.integers(start, min(len(text), start + 12)))
    insert = data.draw(st.one_of(st.text(max_size=6), st.text("\n :-/@.0x1aZ", max_size=6)))
    mutated = text[:start] + insert + text[end:]
    try:
        parsed = parse(mutated)
    except SiweError:
        return
    # Whatever is accepted is read exactly: writing it back gives the signed text, byte for byte.
    assert parsed.text() == mutated
