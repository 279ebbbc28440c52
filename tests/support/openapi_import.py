"""`gateway import-openapi` run in-process, its printed rules read back, and the rule list the example
plugin's OpenAPI document gives."""

from __future__ import annotations

import yaml

from gateway.cli import main


SONG_RULES = ["POST /query", "POST /ask", "POST /summarize/:song_id", "POST /upsert", "DELETE /delete", "GET /stream"]


def run(capsys, *args: str) -> tuple[int, str, str]:
    code = main(["import-openapi", *args])
    out = capsys.readouterr()
    return code, out.out, out.err


def printed_rules(out: str) -> list[str]:
    """The rules of the printed YAML, read back with a YAML parser (as an owner pasting it would)."""
    return yaml.safe_load(out)["protected_endpoints"]
