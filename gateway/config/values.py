"""Parsers for single config values: each returns the typed value or raises
ValueError with a message short enough to follow a YAML path."""

from __future__ import annotations

import re
from pathlib import Path
from typing import Any, Callable, TypeVar
from urllib.parse import urlsplit

from gateway.config.model import ListenAddress

T = TypeVar("T")

LABEL = re.compile(r"[a-z0-9](?:[a-z0-9-]{0,61}[a-z0-9])?")
_DURATION = re.compile(r"(\d+(?:\.\d+)?)(ms|s|m|h|d)")
_UNITS = {"ms": 0.001, "s": 1, "m": 60, "h": 3600, "d": 86400}
_SIZE = re.compile(r"(\d+)\s*(B|KiB|MiB|GiB|KB|MB|GB)?", re.IGNORECASE)
_SIZE_UNITS = {"b": 1, "kib": 1024, "mib": 1024**2, "gib": 1024**3, "kb": 1000, "mb": 1000**2, "gb": 1000**3}
_HEX40 = re.compile(r"(?:0x)?([0-9a-fA-F]{40})")
_HEX64 = re.compile(r"(?:0x)?([0-9a-fA-F]{64})")
_TOKEN_CHARS = re.compile(r"[!#$%&'*+.^_`|~0-9A-Za-z-]+")
_SECP256K1_ORDER = 0xFFFFFFFFFFFFFFFFFFFFFFFFFFFFFFFEBAAEDCE6AF48A03BBFD25E8CD0364141
_DID = re.compile(r"did:nv:([0-9a-fA-F]{64})")
_BASE36 = "0123456789abcdefghijklmnopqrstuvwxyz"


def _text(raw: Any) -> str:
    if not isinstance(raw, (str, int, float)) or isinstance(raw, bool):
        raise ValueError("must be a string")
    return str(raw)


def non_empty(raw: Any) -> str:
    text = _text(raw).strip()
    if not text:
        raise ValueError("must not be empty")
    return text


def integer(lo: int | None = None, hi: int | None = None) -> Callable[[Any], int]:
    def parse(raw: Any) -> int:
        if isinstance(raw, str) and re.fullmatch(r"\d+", raw.strip()):
            raw = int(raw)  # `${VAR}` substitution always yields text
        if isinstance(raw, bool) or not isinstance(raw, int):
            raise ValueError("must be an integer")
        if (lo is not None and raw < lo) or (hi is not None and raw > hi):
            raise ValueError(f"must be between {lo} and {hi}" if hi is not None else f"must be >= {lo}")
        return raw
    return parse


def choice(*options: str) -> Callable[[Any], str]:
    def parse(raw: Any) -> str:
        if raw not in options:
            raise ValueError(f"must be one of {', '.join(options)} (got {raw!r})")
        return raw
    return parse


def list_of(item: Callable[[Any], T], min_items: int = 0) -> Callable[[Any], list[T]]:
    def parse(raw: Any) -> list[T]:
        if not isinstance(raw, list):
            raise ValueError("must be a list")
        if len(raw) < min_items:
            raise ValueError(f"must have at least {min_items} item(s)")
        out = []
        for i, element in enumerate(raw):
            try:
                out.append(item(element))
            except ValueError as exc:
                raise ValueError(f"item {i}: {exc}") from None
        return out
    return parse


def duration(raw: Any) -> float:
    """`500ms`, `30s`, `5m`, `1h`, `30d` -> seconds."""
    m = _DURATION.fullmatch(_text(raw).strip())
    if not m:
        raise ValueError(f"not a duration like 500ms, 30s, 5m, 1h, 30d (got {raw!r})")
    return float(m.group(1)) * _UNITS[m.group(2)]


def rate(raw: Any) -> tuple[int, float] | None:
    """`30/1m`, `10/10s` -> (count, per seconds); `off` -> None."""
    if raw is False:  # YAML 1.1 reads a bare `off` as false
        return None
    text = _text(raw).strip()
    if text == "off":
        return None
    count, slash, per = text.partition("/")
    if not (slash and count.isdigit() and int(count) >= 1 and _DURATION.fullmatch(per.strip())):
        raise ValueError(f"not a rate like 30/1m or 10/10s, or off (got {raw!r})")
    seconds = duration(per)
    if seconds <= 0:
        raise ValueError(f"the period of a rate must be more than 0 (got {raw!r})")
    return int(count), seconds


def size(raw: Any) -> int:
    """`10MiB`, `512KiB`, `1000000` -> bytes."""
    m = _SIZE.fullmatch(_text(raw).strip())
    if not m:
        raise ValueError(f"not a size like 10MiB (got {raw!r})")
    return int(m.group(1)) * _SIZE_UNITS[(m.group(2) or "b").lower()]


def listen_address(raw: Any) -> ListenAddress:
    text = _text(raw).strip()
    m = re.fullmatch(r"\[([0-9a-fA-F:.]+)\]:(\d+)|([^:\[\]]+):(\d+)", text)
    if not m:
        raise ValueError(f"not HOST:PORT (got {text!r})")
    host, port = (m.group(1), m.group(2)) if m.group(1) else (m.group(3), m.group(4))
    if not 0 <= int(port) <= 65535:
        raise ValueError("port out of range")
    return ListenAddress(host, int(port))


def domain(raw: Any) -> str:
    name = _text(raw).strip().lower().rstrip(".")
    if not name or not all(LABEL.fullmatch(label) for label in name.split(".")):
        raise ValueError(f"not a host name (got {raw!r})")
    return name


def http_url(raw: Any) -> str:
    text = non_empty(raw)
    parts = urlsplit(text)
    if parts.scheme not in ("http", "https") or not parts.hostname:
        raise ValueError(f"not an http(s) URL (got {text!r})")
    return text


def upstream_url(raw: Any) -> str:
    text = http_url(raw).rstrip("/")
    parts = urlsplit(text)
    if parts.query or parts.fragment or parts.username:
        raise ValueError("an upstream URL has no query, fragment or credentials (use upstream_auth)")
    return text


def address(raw: Any) -> str:
    """An Ethereum address, with or without 0x, any case -> checksummed."""
    from eth_utils import to_checksum_address

    m = _HEX40.fullmatch(_text(raw).strip()) if isinstance(raw, str) else None
    if not m:
        raise ValueError("not an address (0x + 40 hex digits)")
    return to_checksum_address("0x" + m.group(1))


def private_key(raw: Any) -> str:
    """A secp256k1 private key (the settlement operator's): 0x + 64 hex digits, 1 <= key < n."""
    m = _HEX64.fullmatch(_text(raw).strip()) if isinstance(raw, str) else None
    if not m:
        raise ValueError("not a private key (0x + 64 hex digits)")
    # Why: 0 and numbers at or past the curve order are 64 hex digits yet no key; the settler
    # would refuse them at start-up (eth_account), so the config refuses them first.
    if not 1 <= int(m.group(1), 16) < _SECP256K1_ORDER:
        raise ValueError("not a valid secp256k1 private key (must be between 1 and the curve order - 1)")
    return "0x" + m.group(1).lower()


def did(raw: Any) -> str:
    text = _text(raw).strip()
    if not _DID.fullmatch(text):
        raise ValueError("not a did:nv:<64 hex> identifier")
    return text.lower()


def did_label(did: str) -> str:
    """`did:nv:<64 hex>` -> base36 (0-9a-z) of its 256-bit number: Nevermined's proxy host label."""
    match = _DID.fullmatch(did) if isinstance(did, str) else None
    if match is None:
        raise ValueError(f"not a did:nv:<64 hex> identifier (got {did!r})")
    number, digits = int(match.group(1), 16), []
    while True:
        number, digit = divmod(number, 36)
        digits.append(_BASE36[digit])
        if number == 0:
            return "".join(reversed(digits))


def header_name(raw: Any) -> str:
    text = non_empty(raw)
    if not _TOKEN_CHARS.fullmatch(text):
        raise ValueError("not a valid header name")
    return text


def header_value(raw: Any) -> str:
    text = non_empty(raw)
    if any(ch in text for ch in "\r\n\0"):
        raise ValueError("must not contain CR, LF or NUL")
    return text


def relative_path(raw: Any, base_dir: Path) -> Path:
    path = Path(non_empty(raw))
    return path if path.is_absolute() else (base_dir / path).resolve()


def existing_file(base_dir: Path) -> Callable[[Any], Path]:
    def parse(raw: Any) -> Path:
        path = Path(non_empty(raw))
        path = path if path.is_absolute() else base_dir / path
        if not path.is_file():
            raise ValueError(f"no such file: {path}")
        return path
    return parse


# Key files are checked by the very loaders `gateway.auth` uses at start-up (imported lazily: the
# one exception to "config imports nothing of the gateway"), so a file that passes here loads there.

def signing_key_file(base_dir: Path) -> Callable[[Any], Path]:
    def parse(raw: Any) -> Path:
        from gateway.auth.issuer import check_signing_key

        path = existing_file(base_dir)(raw)
        problem = check_signing_key(path)
        if problem:
            raise ValueError(problem)
        return path
    return parse


def public_key_file(base_dir: Path) -> Callable[[Any], Path]:
    """A PEM public key or certificate file, readable (what `TokenVerifier` loads)."""
    def parse(raw: Any) -> Path:
        from gateway.auth.issuer import load_public_key_file

        path = existing_file(base_dir)(raw)
        try:
            load_public_key_file(path)
        except OSError as exc:
            raise ValueError(f"cannot read {path}: {exc.strerror or exc}") from None
        return path
    return parse


def jwks_file(base_dir: Path) -> Callable[[Any], Path]:
    """A JWKS document (JSON `{"keys": [...]}`), readable (what `TokenVerifier` loads)."""
    def parse(raw: Any) -> Path:
        from gateway.auth.issuer import load_jwks_file

        path = existing_file(base_dir)(raw)
        try:
            load_jwks_file(path)
        except OSError as exc:
            raise ValueError(f"cannot read {path}: {exc.strerror or exc}") from None
        return path
    return parse


def ledger_url(raw: Any, base_dir: Path = Path(".")) -> str:
    """`sqlite:///PATH` (relative to the config's folder; `sqlite:////abs` is absolute), or
    `postgresql://USER@HOST:PORT/DB` (the shared ledger of replicas on several machines).

    A sqlite URL comes back with an absolute path, so the process's working directory never matters."""
    text = non_empty(raw)
    scheme = urlsplit(text).scheme  # only the scheme is ever repeated: a URL may hold a password
    if scheme in ("postgresql", "postgres"):
        parts = urlsplit(text)
        # Why refuse a password in the URL: the config file is not a secret store (it is shown,
        # copied, committed); the password comes from `ledger_password_file`, PGPASSWORD or PGPASSFILE.
        if parts.password:
            raise ValueError("must not hold a password: use metering.ledger_password_file "
                             "(or the PGPASSWORD / PGPASSFILE environment variables)")
        if not parts.hostname and "host=" not in parts.query:
            raise ValueError("a postgresql:// URL needs a host (postgresql://USER@HOST:PORT/DB)")
        return text
    # Why only these two: they are the ledgers this gateway has (`gateway.ledger`); any other
    # scheme (redis://, mysql://) would pass here and stop `serve` at start-up.
    if not text.startswith("sqlite:///"):
        raise ValueError("must be sqlite:///PATH or postgresql://USER@HOST:PORT/DB"
                         + (f" (got a {scheme}:// URL)" if scheme else ""))
    path = Path(text[len("sqlite:///"):])
    if not path.name:
        raise ValueError("sqlite:/// needs a file path")
    return "sqlite:///" + str((base_dir / path).resolve())
