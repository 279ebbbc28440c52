"""`gateway import-openapi` from a URL: the running example plugin's OpenAPI document gives the exact
rule list; a 3 MB document gives its exact rule list too (a few seconds: kept out of tests/unit).
The rest of the importer is tested in-process in tests/unit/test_openapi_import.py."""

from __future__ import annotations
from tests.support.openapi_import import SONG_RULES, printed_rules, run


def test_from_a_url(capsys, plugin):
    code, out, _ = run(capsys, f"{plugin.url}/.well-known/openapi.yaml", "--service", "elvis")
    assert code == 0 and printed_rules(out) == SONG_RULES


def test_a_3_mb_document(capsys, tmp_path):
    """OpenAI's own spec is ~3 MB; this synthetic one is its size and shape (timed by
    `python -m tests.fixtures.big_openapi`: ~9 s before, ~2.5 s now; no timing asserted here)."""
    from tests.fixtures.big_openapi import expected_rules, write

    source = write(tmp_path / "big.yaml")
    assert source.stat().st_size > 3_000_000
    code, out, err = run(capsys, str(source), "--service", "big")
    assert code == 0 and printed_rules(out) == expected_rules()
    assert err.splitlines() == [f"warning: {source}: (validator) a big document (over 20000 nodes): checked "
                                "against the OpenAPI JSON Schema only; run openapi-spec-validator on it for the "
                                "full check"]
