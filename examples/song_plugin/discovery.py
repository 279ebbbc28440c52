"""The plugin's discovery documents: the ai-plugin.json manifest and the OpenAPI document.

Both name the plugin's public base URL, so that a gateway in front of it can rewrite them.
"""

from __future__ import annotations

import base64
from pathlib import Path

import yaml

OPENAPI_TEMPLATE = Path(__file__).with_name("openapi.yaml")
LOGO_PNG = base64.b64decode(  # a 1x1 transparent PNG
    "iVBORw0KGgoAAAANSUhEUgAAAAEAAAABCAYAAAAfFcSJAAAADUlEQVR42mNkYPhfDwAChwGA"
    "60e6kgAAAABJRU5ErkJggg==")
LEGAL_TEXT = "Song Summarizer is an example service. All lyrics are fictional."


def manifest(base: str) -> dict:
    """The ChatGPT plugin manifest served at /.well-known/ai-plugin.json."""
    return {
        "schema_version": "v1",
        "name_for_human": "Song Summarizer",
        "name_for_model": "song_summarizer",
        "description_for_human": "Search songs and get short summaries of their lyrics.",
        "description_for_model": "Plugin for searching a catalogue of songs by title, artist or "
                                 "lyrics, answering questions about a song and summarizing its "
                                 "lyrics. Use querySongs first to find a song id.",
        "auth": {"type": "service_http", "authorization_type": "bearer",
                 "verification_tokens": {"openai": "0f6a2c9d4e1b47a8b3c5d7e9f1a2b3c4"}},
        "api": {"type": "openapi", "url": f"{base}/.well-known/openapi.yaml"},
        "logo_url": f"{base}/logo.png",
        "contact_email": "support@song-summarizer.example",
        "legal_info_url": f"{base}/legal",
    }


def openapi_yaml(base: str) -> str:
    """The OpenAPI 3 document (openapi.yaml next to this file) with ``servers`` set to base."""
    doc = yaml.safe_load(OPENAPI_TEMPLATE.read_text(encoding="utf-8"))
    doc["servers"] = [{"url": base}]
    return yaml.safe_dump(doc, sort_keys=False)
