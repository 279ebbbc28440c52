"""Song Summarizer: a deterministic ChatGPT-style plugin server used as an example upstream.

It behaves like a real plugin (manifest, OpenAPI document, bearer-protected JSON API, SSE,
WebSocket) without calling any external API, so the gateway can be demonstrated and tested
end to end.  Run it with ``python -m examples.song_plugin --token SECRET``.
"""

from .app import create_app

__all__ = ["create_app"]
