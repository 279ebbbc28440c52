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


def _doc(tmp_path, paths, servers=None):
    doc = {"openapi": "3.0.0", "info": {"title": "t", "version": "1"},
           "paths": {p: {"get": {"responses": {"200": {"description": "ok"}}}} for p in paths}}
    if servers is not None:
        doc["servers"] = [{"url": url} for url in servers]
    path = tmp_path / "doc.json"
    path.write_text(json.dumps(doc))
    return str(path)


@pytest.mark.parametrize("url, rule", [
    ("localhost:5003/", "GET /x"),             # OpenAI's plugin quickstart
    ("localhost:5003", "GET /x"),
    ("api.example.com/v2/", "GET /v2/x"),      # an Apifox export
    ("127.0.0.1:8000/api", "GET /api/x"),
    ("[::1]:8000/api", "GET /api/x"),
])
def test_a_server_url_without_a_scheme_is_a_host_not_a_path(capsys, tmp_path, url, rule):
    code, out, err = run(capsys, _doc(tmp_path, ["/x"], [url]), "--service", "s")
    assert code == 0 and printed_rules(out) == [rule]
    assert f"servers[0].url {url!r} has no scheme: read as host" in err


@pytest.mark.parametrize("url, rule", [("/api/v3", "GET /api/v3/x"), ("api/v3", "GET /api/v3/x"),
                                       ("v1.2", "GET /v1.2/x"), ("//cdn.example.com/b", "GET /b/x")])
def test_server_urls_that_are_paths_stay_paths(capsys, tmp_path, url, rule):
    code, out, err = run(capsys, _doc(tmp_path, ["/x"], [url]), "--service", "s")
    assert code == 0 and [r.replace("\\", "") for r in printed_rules(out)] == [rule] and "no scheme" not in err


def test_a_query_in_a_path_key_is_left_out_of_the_rule(capsys, tmp_path):
    code, out, err = run(capsys, _doc(tmp_path, ["/x/{id}?beta=true", "/y?mode=a", "/y?mode=b", "/y"]),
                         "--service", "s")
    assert code == 0 and printed_rules(out) == ["GET /x/:id", "GET /y"]
    assert "path '/x/{id}?beta=true': the query '?beta=true' is not part of a rule" in err
    assert "GET /y?mode=b: same rule as GET /y?mode=a ('GET /y'): listed once" in err
    assert compile_rule("GET /x/:id").matches("GET", "/x/42")


@pytest.mark.parametrize("template, request_path, rule", [
    ("/a b/{id}", "/a b/1", "GET /a%20b/:id"),
    ("/tags/<b>", "/tags/<b>", "GET /tags/%3Cb%3E"),
    ("/café/{x}", "/café/1", "GET /caf%C3%A9/:x"),
    ("/%7euser/%c3%a9", "/~user/é", "GET /~user/%C3%A9"),    # unreserved escapes decoded, others upper case
    ("/a/./b/../c", "/a/c", "GET /a/c"),
])
def test_a_rule_matches_the_normalized_spelling_of_the_path(capsys, tmp_path, template, request_path, rule):
    from gateway.http.routing import normalize_path

    code, out, err = run(capsys, _doc(tmp_path, [template]), "--service", "s")
    assert code == 0 and printed_rules(out) == [rule]
    assert f"path {template!r}: requests reach the gateway as" in err
    assert compile_rule(rule).matches("GET", normalize_path(request_path))


def test_paths_no_request_can_take_are_skipped_with_a_warning(capsys, tmp_path):
    code, out, err = run(capsys, _doc(tmp_path, ["/a\\b", "/p/%252e", "/f#frag", "/ok", "/{id}/.."]), "--service", "s")
    assert code == 0 and printed_rules(out) == ["GET /ok"]
    assert "path '/a\\\\b': skipped, the gateway refuses such a path (backslash in the path" in err
    assert "path '/p/%252e': skipped, the gateway refuses such a path (double-encoded escape" in err
    assert "path '/f#frag': a '#' never reaches a server" in err
    assert "path '/{id}/..': skipped, its normalized form '/' lost the parameter {id}" in err


def test_a_literal_colon_segment_is_not_a_parameter(capsys, tmp_path):
    code, out, _ = run(capsys, _doc(tmp_path, ["/v1/:batch", "/v1/models/{model}:generate"]), "--service", "s")
    assert code == 0
    batch, generate = (compile_rule(r) for r in printed_rules(out))
    assert batch.matches("GET", "/v1/:batch") and not batch.matches("GET", "/v1/other")
    assert generate.matches("GET", "/v1/models/m1:generate") and not generate.matches("GET", "/v1/models/m1")


def test_a_big_document_is_checked_against_the_schema_only(capsys, tmp_path, monkeypatch):
    from gateway.ops import openapi_document

    monkeypatch.setattr(openapi_document, "FULL_CHECK_NODES", 100)  # the Petstore has ~700 nodes
    doc = yaml.safe_load(PETSTORE.read_text())
    del doc["info"]
    path = tmp_path / "no-info.yaml"
    path.write_text(yaml.safe_dump(doc, sort_keys=False))
    code, out, err = run(capsys, str(path), "--service", "pets")
    assert code == 0 and printed_rules(out) == PETSTORE_RULES
    assert "checked against the OpenAPI JSON Schema only" in err and "'info' is a required property" in err


def test_yaml_flow_style_that_looks_like_json_is_read_as_yaml(tmp_path):
    path = tmp_path / "doc.yaml"
    path.write_text("{openapi: 3.0.0, paths: {/a: {get: {}}}}\n")
    assert list(load_document(str(path))["paths"]) == ["/a"]


def test_yaml_is_read_as_yaml_1_2(tmp_path):
    from ruamel.yaml import YAML

    text = ("openapi: 3.0.0\npaths:\n  /a:\n    get:\n      x-values: [yes, no, on, off, 0755, 0o17, 0x1f, 1_000, 1:20,"
            " 1e3, .inf, ~, 2024-01-02, 0b101, true, FALSE]\n")
    path = tmp_path / "doc.yaml"
    path.write_text(text)
    values = load_document(str(path))["paths"]["/a"]["get"]["x-values"]
    assert values == YAML(typ="safe", pure=True).load(text)["paths"]["/a"]["get"]["x-values"]
    assert values[:6] == ["yes", "no", "on", "off", 755, 15] and values[8] == "1:20"
