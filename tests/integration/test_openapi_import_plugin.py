"""`gateway import-openapi` from a URL: the running example plugin's OpenAPI document gives the exact
rule list. The rest of the importer is tested in-process in tests/unit/test_openapi_import.py."""

from __future__ import annotations
from tests.support.openapi_import import SONG_RULES, printed_rules, run


def test_from_a_url(capsys, plugin):
    code, out, _ = run(capsys, f"{plugin.url}/.well-known/openapi.yaml", "--service", "elvis")
    assert code == 0 and printed_rules(out) == SONG_RULES
