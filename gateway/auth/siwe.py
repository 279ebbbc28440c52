"""Sign-In with Ethereum (EIP-4361) messages: a strict parser and the matching builder.

`parse(text)` accepts exactly the ABNF of EIP-4361 (ERC-4361 final text, with the optional
`scheme "://"` prefix) and raises `SiweError` for anything else: LF line ends only, fields in
the fixed order, no trailing newline, ASCII only, RFC 3986 URIs and authorities, RFC 3339
date-times. The signature covers the exact text, so nothing is normalized or repaired.

Two readings go beyond the bare grammar: a mixed-case address must carry a valid EIP-55
checksum (a single-case one has no checksum to check, and wallets hand out lower-case
addresses), and a chain id must fit in a uint256 (EIP-155) and have no leading zeros (so that
every accepted text is exactly what `text()` writes back).

`SiweMessage.text()` writes a message back out; `parse(m.text()) == m` for every valid `m`.
PyPI's `siwe` packages pin web3<8, hence this module (see README, Decisions).
"""

from __future__ import annotations

import ipaddress
import re
from dataclasses import dataclass
from datetime import datetime, timedelta, timezone

from eth_utils import is_checksum_address

HEADER_SUFFIX = " wants you to sign in with your Ethereum account:"

# RFC 3986 character classes (ASCII only: re.ASCII plus explicit ranges).
_UNRESERVED = r"A-Za-z0-9\-._~"
_SUB_DELIMS = r"!$&'()*+,;="
_PCT = r"%[0-9A-Fa-f]{2}"
_PCHAR = rf"(?:[{_UNRESERVED}{_SUB_DELIMS}:@]|{_PCT})"
_SCHEME = re.compile(r"[A-Za-z][A-Za-z0-9+\-.]*", re.ASCII)
_USERINFO = re.compile(rf"(?:[{_UNRESERVED}{_SUB_DELIMS}:]|{_PCT})*", re.ASCII)
_REG_NAME = re.compile(rf"(?:[{_UNRESERVED}{_SUB_DELIMS}]|{_PCT})*", re.ASCII)
_IPV_FUTURE = re.compile(rf"v[0-9A-Fa-f]+\.[{_UNRESERVED}{_SUB_DELIMS}:]+", re.ASCII)
_PORT = re.compile(r"[0-9]*", re.ASCII)
_PATH_ABEMPTY = re.compile(rf"(?:/{_PCHAR}*)*", re.ASCII)
_PATH_ABSOLUTE = re.compile(rf"/(?:{_PCHAR}+(?:/{_PCHAR}*)*)?", re.ASCII)
_PATH_ROOTLESS = re.compile(rf"{_PCHAR}+(?:/{_PCHAR}*)*", re.ASCII)
_QUERY = re.compile(rf"(?:{_PCHAR}|[/?])*", re.ASCII)
_REQUEST_ID = re.compile(rf"{_PCHAR}*", re.ASCII)
_STATEMENT = re.compile(rf"[{_UNRESERVED}{_SUB_DELIMS}:/?#\[\]@ ]*", re.ASCII)
_ADDRESS = re.compile(r"0x[0-9A-Fa-f]{40}", re.ASCII)
_NONCE = re.compile(r"[A-Za-z0-9]{8,}", re.ASCII)
_CHAIN_ID = re.compile(r"0|[1-9][0-9]*", re.ASCII)
# RFC 3339 date-time; "T" and "Z" are case-insensitive ABNF literals.
_DATE_TIME = re.compile(
    r"([0-9]{4})-([0-9]{2})-([0-9]{2})[Tt]([0-9]{2}):([0-9]{2}):([0-9]{2})(\.[0-9]+)?"
    r"(?:([Zz])|([+-])([0-9]{2}):([0-9]{2}))",
    re.ASCII,
)
_UINT256_MAX = 2**256 - 1


class SiweError(ValueError):
    """The text is not an EIP-4361 message; the message says what and where."""


@dataclass(frozen=True)
class Authority:
    """An RFC 3986 authority: `[userinfo "@"] host [":" port]`; port None when absent."""

    host: str
    port: str | None = None
    userinfo: str | None = None


@dataclass(frozen=True)
class SiweMessage:
    domain: str
    address: str
    uri: str
    chain_id: int
    nonce: str
    issued_at: str
    scheme: str | None = None
    statement: str | None = None
    version: str = "1"
    expiration_time: str | None = None
    not_before: str | None = None
    request_id: str | None = None
    resources: tuple[str, ...] | None = None  # None: no "Resources:" line; (): the line, no items

    def text(self) -> str:
        """The message as the wallet signs it (EIP-4361 layout, LF line ends, no final LF)."""
        origin = f"{self.scheme}://{self.domain}" if self.scheme is not None else self.domain
        lines = [origin + HEADER_SUFFIX, self.address, ""]
        if self.statement is not None:
            lines += [self.statement, ""]
        else:
            lines.append("")
        lines += [f"URI: {self.uri}", f"Version: {self.version}", f"Chain ID: {self.chain_id}",
                  f"Nonce: {self.nonce}", f"Issued At: {self.issued_at}"]
        for label, value in (("Expiration Time", self.expiration_time), ("Not Before", self.not_before),
                             ("Request ID", self.request_id)):
            if value is not None:
                lines.append(f"{label}: {value}")
        if self.resources is not None:
            lines.append("Resources:")
            lines += [f"- {r}" for r in self.resources]
        return "\n".join(lines)


def parse(text: str) -> SiweMessage:
    """The EIP-4361 message in `text`; SiweError if it does not conform to the ABNF."""
    if not isinstance(text, str):
        raise SiweError("the message must be a string")
    if not text.isascii():
        # Why: every EIP-4361 term is ASCII; a look-alike character is never "close enough".
        raise SiweError("the message must be ASCII")
    lines = text.split("\n")
    cursor = _Lines(lines)
    header = cursor.take("the header line")
    if not header.endswith(HEADER_SUFFIX):
        raise SiweError(f'line 1 must end with "{HEADER_SUFFIX.strip()}"')
    origin = header[: -len(HEADER_SUFFIX)]
    scheme, sep, domain = origin.partition("://")
    if not sep:
        scheme, domain = None, origin
    elif not _SCHEME.fullmatch(scheme):
        raise SiweError("line 1: the scheme is not an RFC 3986 scheme")
    parse_authority(domain, "line 1: the domain")
    address = cursor.take("the address")
    _check_address(address)
    cursor.expect_empty()
    statement = None
    # Why this look-ahead: "address LF LF [statement LF] LF" makes an empty line here either the
    # separator before "URI: " (no statement) or an empty statement (then one more empty line).
    if not (cursor.peek() == "" and (cursor.peek(1) or "").startswith("URI: ")):
        statement = cursor.take("the statement")
        if not _STATEMENT.fullmatch(statement):
            raise SiweError(f"line {cursor.number}: the statement has characters EIP-4361 does not allow")
    cursor.expect_empty()
    uri = cursor.field("URI: ")
    check_uri(uri, f"line {cursor.number}: URI")
    if cursor.field("Version: ") != "1":
        raise SiweError(f"line {cursor.number}: Version must be 1")
    chain = cursor.field("Chain ID: ")
    # Why no leading zeros (the ABNF allows them): the text must read back exactly as it was signed.
    # Why the length first: int() of a huge digit string is slow (and refused past 4300 digits).
    if not _CHAIN_ID.fullmatch(chain) or len(chain) > 78 or int(chain) > _UINT256_MAX:
        raise SiweError(f"line {cursor.number}: Chain ID must be a decimal number (EIP-155, at most uint256)")
    nonce = cursor.field("Nonce: ")
    if not _NONCE.fullmatch(nonce):
        raise SiweError(f"line {cursor.number}: Nonce must be at least 8 letters or digits")
    issued_at = cursor.field("Issued At: ")
    timestamp(issued_at, f"line {cursor.number}: Issued At")
    optional: dict[str, str | None] = {}
    for label in ("Expiration Time: ", "Not Before: ", "Request ID: "):
        value = cursor.field(label) if (cursor.peek() or "").startswith(label) else None
        if value is not None and label == "Request ID: ":
            if not _REQUEST_ID.fullmatch(value):
                raise SiweError(f"line {cursor.number}: Request ID must be RFC 3986 pchar characters")
        elif value is not None:
            timestamp(value, f"line {cursor.number}: {label[:-2]}")
        optional[label] = value
    resources = None
    if cursor.peek() == "Resources:":
        cursor.take("Resources:")
        resources = []
        while cursor.peek() is not None:
            resource = cursor.field("- ")
            check_uri(resource, f"line {cursor.number}: resource")
            resources.append(resource)
    if cursor.peek() is not None:
        # Why: fields come in the ABNF's order, each once, and nothing follows (no final LF).
        raise SiweError(f"line {cursor.number + 1}: unexpected {_show(cursor.peek())}")
    return SiweMessage(
        domain=domain, address=address, uri=uri, chain_id=int(chain), nonce=nonce, issued_at=issued_at,
        scheme=scheme, statement=statement, expiration_time=optional["Expiration Time: "],
        not_before=optional["Not Before: "], request_id=optional["Request ID: "],
        resources=tuple(resources) if resources is not None else None,
    )


class _Lines:
    def __init__(self, lines: list[str]) -> None:
        self._lines, self.number = lines, 0  # number: 1-based number of the last line taken

    def peek(self, ahead: int = 0) -> str | None:
        index = self.number + ahead
        return self._lines[index] if index < len(self._lines) else None

    def take(self, what: str) -> str:
        line = self.peek()
        if line is None:
            raise SiweError(f"the message ends before {what}")
        self.number += 1
        return line

    def expect_empty(self) -> None:
        if self.take("an empty line") != "":
            raise SiweError(f"line {self.number} must be empty")

    def field(self, label: str) -> str:
        line = self.take(f'"{label.strip()}"')
        if not line.startswith(label):
            raise SiweError(f'line {self.number}: expected "{label}", got {_show(line)}')
        return line[len(label):]


def _show(line: str | None) -> str:
    return "the end of the message" if line is None else repr(line[:40] + ("..." if len(line) > 40 else ""))


def _check_address(address: str) -> None:
    if not _ADDRESS.fullmatch(address):
        raise SiweError("line 2: the address must be 0x and 40 hex digits")
    digits = address[2:]
    # Why: mixed case claims an EIP-55 checksum, so it must be right (a typo'd address is caught);
    # a single-case address (what wallets' eth_requestAccounts returns) claims none.
    if digits != digits.lower() and digits != digits.upper() and not is_checksum_address(address):
        raise SiweError("line 2: the address has mixed case but not a valid EIP-55 checksum")


def parse_authority(value: str, what: str = "authority") -> Authority:
    """RFC 3986 `authority`; SiweError when it is not one."""
    userinfo, at, hostport = value.rpartition("@")
    if at and not _USERINFO.fullmatch(userinfo):
        raise SiweError(f"{what} has a malformed userinfo")
    if hostport.startswith("["):
        literal, bracket, rest = hostport[1:].partition("]")
        if not bracket or not _ip_literal(literal):
            raise SiweError(f"{what} has a malformed IP literal")
        host, port = f"[{literal}]", rest
    else:
        host, colon, port = hostport.partition(":")
        port = colon + port
        if not _REG_NAME.fullmatch(host):
            raise SiweError(f"{what} has a malformed host")
    if port and not (port.startswith(":") and _PORT.fullmatch(port[1:])):
        raise SiweError(f"{what} has a malformed port")
    return Authority(host=host, port=port[1:] if port else None, userinfo=userinfo if at else None)


def _ip_literal(literal: str) -> bool:
    if _IPV_FUTURE.fullmatch(literal):
        return True
    if "%" in literal:  # Why: zone ids are RFC 6874, not RFC 3986 (Python would accept them).
        return False
    try:
        ipaddress.IPv6Address(literal)
    except ValueError:
        return False
    return True


def split_uri(uri: str, what: str = "URI") -> tuple[str, Authority | None, str]:
    """RFC 3986 `URI` -> (scheme, authority or None, path); SiweError when it is not one."""
    scheme, colon, rest = uri.partition(":")
    if not colon or not _SCHEME.fullmatch(scheme):
        raise SiweError(f"{what} must be an absolute RFC 3986 URI (scheme:...)")
    rest, hash_, fragment = rest.partition("#")
    hier, question, query = rest.partition("?")
    if (question and not _QUERY.fullmatch(query)) or (hash_ and not _QUERY.fullmatch(fragment)):
        raise SiweError(f"{what} has a malformed query or fragment")
    authority = None
    if hier.startswith("//"):
        raw_authority, slash, path = hier[2:].partition("/")
        authority, path = parse_authority(raw_authority, what), slash + path
        valid_path = _PATH_ABEMPTY.fullmatch(path)
    else:
        path = hier
        valid_path = path == "" or _PATH_ABSOLUTE.fullmatch(path) or _PATH_ROOTLESS.fullmatch(path)
    if not valid_path:
        raise SiweError(f"{what} has a malformed path")
    return scheme, authority, path


def check_uri(uri: str, what: str = "URI") -> None:
    split_uri(uri, what)


def timestamp(value: str, what: str = "date-time") -> float:
    """RFC 3339 `date-time` -> seconds since the epoch; SiweError when it is not one."""
    match = _DATE_TIME.fullmatch(value)
    if match is None:
        raise SiweError(f"{what} must be an RFC 3339 date-time (e.g. 2026-11-26T10:00:00Z)")
    year, month, day, hour, minute, second = (int(g) for g in match.groups()[:6])
    fraction, zulu, sign, off_hour, off_minute = match.groups()[6:]
    if second > 60 or (off_hour is not None and (int(off_hour) > 23 or int(off_minute) > 59)):
        raise SiweError(f"{what} is not a valid date-time")
    try:
        # Why second 60 -> 59 + 1 s: RFC 3339 allows a leap second, Python's datetime does not.
        moment = datetime(year, month, day, hour, minute, min(second, 59), tzinfo=timezone.utc)
    except ValueError:
        raise SiweError(f"{what} is not a valid date-time") from None
    offset = 0 if zulu else (1 if sign == "+" else -1) * (int(off_hour) * 3600 + int(off_minute) * 60)
    seconds = (moment - datetime(1970, 1, 1, tzinfo=timezone.utc)) / timedelta(seconds=1)
    return seconds + (second == 60) + (float(fraction) if fraction else 0.0) - offset
