"""Decoding a compressed request body, bounded, for the few readers that must look inside it.

The gateway forwards request bodies as the client's very bytes (the server does not decompress
them: `auto_decompress` is off in gateway/app.py), so a `Content-Encoding: gzip` body reaches the
upstream still gzip'd, with its own length. Readers that decide something from a body (MCP
pricing, sign-in) decode it here: `gzip`/`x-gzip`, `deflate` (zlib, or raw as some clients send
it), `br` (when a brotli library is installed) and `identity`, applied in reverse order of the
header's list. The decoded size is bounded while decompressing, so a small bomb never grows in
memory: above `limit` it is 413 `body_too_large`. An encoding the gateway cannot decode is 415
`unsupported_encoding` (what it cannot read, it cannot price); a corrupt body is 400.
"""

from __future__ import annotations

import zlib
from typing import Callable

from gateway.http.problems import Problem

try:  # the one aiohttp itself uses (pinned); the reference `brotli` module has the same interface
    import brotlicffi as brotli
except ImportError:  # pragma: no cover - depends on the installation
    try:
        import brotli  # type: ignore[no-redef]
    except ImportError:
        brotli = None

STEP = 64 * 1024  # decompress in steps of at most this much output


def encodings(header: str | None) -> list[str]:
    """The codings of a `Content-Encoding` value, in the order they were applied."""
    return [c.strip().lower() for c in (header or "").split(",") if c.strip() and c.strip().lower() != "identity"]


def supported() -> tuple[str, ...]:
    return ("gzip", "x-gzip", "deflate") + (("br",) if brotli is not None else ())


def decode(body: bytes, header: str | None, limit: int) -> bytes:
    """The body with every coding of `header` undone; Problem 413/415/400 as described above."""
    for coding in reversed(encodings(header)):
        if coding not in supported():
            # Why refuse: a body the gateway cannot read cannot be priced or checked.
            raise Problem(415, "unsupported_encoding",
                          f"Content-Encoding {coding[:40]!r} is not supported here (use {', '.join(supported())})")
        try:
            body = _inflate(body, coding, limit)
        except (zlib.error, ValueError, _BrotliError) as exc:
            raise Problem(400, "bad_request", f"the {coding} request body is corrupt ({type(exc).__name__})") from None
    return body


class _BrotliError(Exception):
    pass


def _inflate(data: bytes, coding: str, limit: int) -> bytes:
    if coding == "br":
        return _bounded_brotli(data, limit)
    if coding in ("gzip", "x-gzip"):
        return _bounded_zlib(data, lambda: zlib.decompressobj(16 + zlib.MAX_WBITS), limit)
    # deflate is meant to be zlib-wrapped (RFC 9110 §8.4.1.2); some clients send it raw.
    raw = bool(data) and (data[0] & 0x0F) != 8
    return _bounded_zlib(data, lambda: zlib.decompressobj(-zlib.MAX_WBITS if raw else zlib.MAX_WBITS), limit)


def _too_large(limit: int) -> Problem:
    # Why 413 before the whole output exists: a decompression bomb must never fill memory.
    return Problem(413, "body_too_large", f"decoded request body exceeds {limit} bytes")


def _bounded_zlib(data: bytes, new: Callable, limit: int) -> bytes:
    out = bytearray()
    while data:
        d = new()  # gzip allows several members one after the other
        pending = data
        while pending and not d.eof:
            out += d.decompress(pending, STEP)
            if len(out) > limit:
                raise _too_large(limit)
            pending = d.unconsumed_tail
        if not d.eof:
            out += d.flush()
            if len(out) > limit:
                raise _too_large(limit)
            raise ValueError("truncated stream")
        data = d.unused_data
    return bytes(out)


def _bounded_brotli(data: bytes, limit: int) -> bytes:
    assert brotli is not None
    d = brotli.Decompressor()
    out = bytearray()
    try:
        out += d.process(data, output_buffer_limit=STEP)
        while len(out) <= limit and not d.is_finished() and not d.can_accept_more_data():
            out += d.process(b"", output_buffer_limit=STEP)
        if len(out) > limit:
            raise _too_large(limit)
        if not d.is_finished():
            raise _BrotliError("truncated stream")
    except Problem:
        raise
    except Exception as exc:  # noqa: BLE001 - brotli libraries raise their own error types
        raise _BrotliError(str(exc)) from None
    return bytes(out)
