"""`gateway import-openapi`: exact rule lists from the example plugin's and the Petstore's OpenAPI
documents, exclusions, and `--write` into a config file that keeps its comments."""

from __future__ import annotations

import json
import re
import shutil
from pathlib import Path

import pytest
import yaml

from gateway.config.load import load_config
from gateway.config.rules import compile_rule
from gateway.ops.openapi_import import load_document, operations, path_pattern
from tests.support.openapi_import import SONG_RULES, printed_rules, run

REPO = Path(__file__).resolve().parents[2]
PETSTORE = REPO / "tests" / "fixtures" / "petstore.yaml"
SONGS = REPO / "examples" / "song_plugin" / "openapi.yaml"
PETSTORE_RULES = [
    "PUT /api/v3/pet", "POST /api/v3/pet", "GET /api/v3/pet/findByStatus", "GET /api/v3/pet/findByTags",
    "GET /api/v3/pet/:petId", "POST /api/v3/pet/:petId", "DELETE /api/v3/pet/:petId",
    "POST /api/v3/pet/:petId/uploadImage", "GET /api/v3/store/inventory", "POST /api/v3/store/order",
    "GET /api/v3/store/order/:orderId", "DELETE /api/v3/store/order/:orderId", "POST /api/v3/user",
    "POST /api/v3/user/createWithList", "GET /api/v3/user/login", "GET /api/v3/user/logout",
    "GET /api/v3/user/:username", "PUT /api/v3/user/:username", "DELETE /api/v3/user/:username",
]


def test_example_plugin(capsys):
    code, out, err = run(capsys, str(SONGS), "--service", "elvis")
    assert code == 0 and err == ""
    assert printed_rules(out) == SONG_RULES
    assert '  - "POST /summarize/:song_id"  # summarizeSong: Summarize the lyrics of a song.' in out
    assert out.startswith("# protected_endpoints for service elvis, from ")


def test_petstore_yaml_and_json_give_the_same_exact_list(capsys, tmp_path):
    code, out, err = run(capsys, str(PETSTORE), "--service", "pets")
    assert code == 0 and err == "", err  # the fixture is a valid OpenAPI 3.0 document
    assert printed_rules(out) == PETSTORE_RULES
    assert '"GET /api/v3/pet/:petId"               # getPetById: Find pet by ID.' in out
    as_json = tmp_path / "petstore.json"
    as_json.write_text(json.dumps(yaml.safe_load(PETSTORE.read_text())))
    code, out_json, _ = run(capsys, str(as_json), "--service", "pets")
    assert code == 0 and printed_rules(out_json) == PETSTORE_RULES


def test_exclusions_and_base_path(capsys):
    code, out, _ = run(capsys, str(PETSTORE), "--service", "pets", "--exclude-method", "delete",
                       "--exclude-method", "PUT", "--exclude", "^/user", "--exclude", r"^GET /store/order/\{")
    assert code == 0
    assert printed_rules(out) == [
        "POST /api/v3/pet", "GET /api/v3/pet/findByStatus", "GET /api/v3/pet/findByTags", "GET /api/v3/pet/:petId",
        "POST /api/v3/pet/:petId", "POST /api/v3/pet/:petId/uploadImage", "GET /api/v3/store/inventory",
        "POST /api/v3/store/order"]
    code, out, _ = run(capsys, str(PETSTORE), "--service", "pets", "--base-path", "/", "--exclude", "^/(pet|store)")
    assert printed_rules(out) == ["POST /user", "POST /user/createWithList", "GET /user/login", "GET /user/logout",
                                  "GET /user/:username", "PUT /user/:username", "DELETE /user/:username"]


@pytest.mark.parametrize("template, concrete, pattern", [
    ("/pets/{petId}", "/pets/42", "/pets/:petId"),
    ("/v1.0/items.json", "/v1.0/items.json", r"/v1\.0/items\.json"),
    ("/files/{name}.{ext}", "/files/a.txt", r"/files/[^/]+\.[^/]+"),
    ("/a/{id}/b/{id}", "/a/1/b/2", "/a/:id/b/[^/]+"),
    ("/users/{user-id}", "/users/7", "/users/[^/]+"),
    ("/search(+)", "/search(+)", r"/search\(\+\)"),
])
def test_path_patterns_match_exactly_what_the_document_describes(template, concrete, pattern):
    assert path_pattern(template) == pattern
    rule = compile_rule(f"GET {pattern}")
    assert rule.matches("GET", concrete)
    if "." in template:
        assert not rule.matches("GET", concrete.replace(".", "x", 1))  # a dot is a dot


def test_documents_that_are_not_openapi_3_are_refused(capsys, tmp_path):
    swagger = tmp_path / "swagger.json"
    swagger.write_text(json.dumps({"swagger": "2.0", "paths": {}}))
    code, _, err = run(capsys, str(swagger), "--service", "x")
    assert code == 1 and "not an OpenAPI 3 document (Swagger 2.0)" in err
    garbage = tmp_path / "x.yaml"
    garbage.write_text("- just\n- a list\n")
    assert run(capsys, str(garbage), "--service", "x")[0] == 1
    assert run(capsys, str(tmp_path / "missing.yaml"), "--service", "x")[0] == 1
    assert run(capsys, str(SONGS), "--service", "x", "--exclude", "(")[0] == 1


def test_an_invalid_document_is_imported_with_warnings(capsys, tmp_path):
    doc = yaml.safe_load(PETSTORE.read_text())
    del doc["info"]  # required by the OpenAPI schema
    path = tmp_path / "no-info.yaml"
    path.write_text(yaml.safe_dump(doc, sort_keys=False))
    code, out, err = run(capsys, str(path), "--service", "pets")
    assert code == 0 and "warning:" in err and "'info' is a required property" in err
    assert printed_rules(out) == PETSTORE_RULES


def test_trace_and_extensions_are_not_operations():
    doc = {"openapi": "3.1.0", "paths": {"/x": {"trace": {}, "x-internal": {}, "parameters": [], "get": {}},
                                         "/y": {"$ref": "#/components/pathItems/y"}},
           "components": {"pathItems": {"y": {"post": {"operationId": "makeY"}}}}}
    assert [(op.rule, op.operation_id) for op in operations(doc)] == [("GET /x", None), ("POST /y", "makeY")]


@pytest.fixture
def config_file(tmp_path, signing_key, monkeypatch):
    path = tmp_path / "gateway.yaml"
    shutil.copy(REPO / "config" / "gateway.yaml", path)
    monkeypatch.setenv("GATEWAY_SIGNING_KEY_FILE", str(signing_key))
    monkeypatch.setenv("ELVIS_UPSTREAM_TOKEN", "t")
    return path


def test_write_adds_rules_in_place_and_keeps_comments(capsys, config_file):
    before = config_file.read_text()
    code, out, err = run(capsys, str(PETSTORE), "--service", "elvis", "--write", str(config_file))
    assert code == 0, err
    assert out == f"{config_file}: services.elvis.protected_endpoints: 19 rule(s) added, 0 already listed\n"
    after = config_file.read_text()
    # Every line of the owner's file is still there, in order (comments, quotes, flow style, ${VARS}).
    old_lines, new_lines = before.splitlines(), after.splitlines()
    it = iter(new_lines)
    assert all(line in it for line in old_lines)
    assert len(new_lines) == len(old_lines) + 19
    assert re.search(r'^      - "GET /api/v3/pet/:petId" # getPetById: Find pet by ID\.$', after, re.M)
    service = load_config(config_file).services["elvis"]
    sources = [rule.source for rule in service.protected_endpoints]
    assert sources[:7] == ["POST /query", "POST /ask", "POST /summarize/:song", "POST /upsert", "DELETE /delete",
                           "GET /stream", "GET /ws"]
    assert sources[7:] == PETSTORE_RULES
    assert service.protected_endpoints[1].price.fixed == 2  # the owner's prices stay
    # Importing again adds nothing; the file is not even rewritten.
    code, out, _ = run(capsys, str(PETSTORE), "--service", "elvis", "--write", str(config_file))
    assert code == 0 and "0 rule(s) added, 19 already listed" in out and config_file.read_text() == after


def test_write_keeps_the_owners_priced_entry_for_the_same_rule(capsys, config_file):
    code, out, _ = run(capsys, str(SONGS), "--service", "elvis", "--write", str(config_file))
    # `POST /summarize/:song` (priced) is `POST /summarize/:song_id`: nothing to add.
    assert code == 0 and "0 rule(s) added, 6 already listed" in out


def test_write_refuses_what_would_break_the_config(capsys, tmp_path, signing_key, monkeypatch):
    path = tmp_path / "gateway.yaml"
    text = (f"# my gateway\nbase_domain: proxy.localhost\ntokens:\n  own: {{issuer: https://gw.test, "
            f"signing_key_file: {signing_key}}}\nservices:\n  pets:\n    upstream: http://127.0.0.1:9\n")
    path.write_text(text)
    code, _, err = run(capsys, str(PETSTORE), "--service", "pets", "--write", str(path))
    assert code == 1 and "not written, the result would have 1 new problem(s)" in err
    assert "services.pets.plan: required when protected_endpoints are listed" in err
    assert path.read_text() == text
    code, _, err = run(capsys, str(PETSTORE), "--service", "nope", "--write", str(path))
    assert code == 1 and "no service 'nope' (known: pets)" in err


def test_load_document_reads_json_with_a_bom(tmp_path):
    path = tmp_path / "doc.json"
    path.write_bytes(b"\xef\xbb\xbf" + json.dumps({"openapi": "3.0.0", "paths": {"/a": {"get": {}}}}).encode())
    assert list(load_document(str(path))["paths"]) == ["/a"]
