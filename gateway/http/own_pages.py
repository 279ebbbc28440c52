"""The gateway's own HTML pages (sign-in, OAuth consent): read once, served with a strict CSP."""

from __future__ import annotations

import base64
import functools
import hashlib
import re
from pathlib import Path


@functools.lru_cache(maxsize=8)  # read once per process, not on every config reload
def page_with_csp(path: Path) -> tuple[str, str]:
    """The page's HTML, and a Content-Security-Policy that allows exactly its inline script and style."""
    html = path.read_text(encoding="utf-8")

    def digests(tag: str) -> str:
        blocks = re.findall(rf"<{tag}>(.*?)</{tag}>", html, re.S)
        return " ".join("'sha256-%s'" % base64.b64encode(hashlib.sha256(b.encode()).digest()).decode() for b in blocks)

    # Why this CSP: nothing but the page's own script and style runs, it talks only to this host,
    # no other site can frame it (clickjacking a wallet signature or a consent) or read its
    # referrer (the request's details).
    csp = (f"default-src 'none'; script-src {digests('script')}; style-src {digests('style')}; "
           "connect-src 'self'; img-src data:; base-uri 'none'; form-action 'none'; frame-ancestors 'none'")
    return html, csp
