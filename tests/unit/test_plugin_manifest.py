"""ChatGPT plugin documents: `rewrite_url` points an upstream URL at the public proxy URL. The
manifest and OpenAPI document answered by the real gateway are in
tests/integration/test_plugin_manifest_gateway.py."""

from __future__ import annotations

import pytest

from gateway.http.plugin_documents import rewrite_url


@pytest.mark.parametrize("value, expected", [
    ("http://up:9000/a?b=1#c", "https://gw/a?b=1#c"),
    ("http://UP:9000/", "https://gw/"),
    ("http://up:9001/a", "http://up:9001/a"),          # another port: another origin
    ("https://up:9000/a", "https://up:9000/a"),        # another scheme: another origin
    ("http://up.evil:9000/a", "http://up.evil:9000/a"),
    ("mailto:someone@up", "mailto:someone@up"),
    ("just text", "just text"),
    ("http://[::1", "http://[::1"),                    # not a URL at all
])
def test_rewrite_url(value, expected):
    assert rewrite_url(value, {("http", "up", 9000)}, "https://gw") == expected
