"""`gateway import-openapi`: a service's `protected_endpoints`, derived from its OpenAPI 3 document.

One rule per operation: the method and the path, with `{param}` turned into `:param` (one
segment) and regex characters escaped, so that the rule matches exactly the paths the document
describes; operationId and summary follow as a comment. Paths are prefixed with the base path of
the document's first server (`servers: [{url: /api/v3}]` -> `/api/v3/pet`), since that is what
clients send through the gateway; `--base-path` overrides it.

`write_config` puts the rules into a config file in place: round-trip YAML (ruamel.yaml) keeps
the owner's comments and layout; rules already listed (with their prices) stay as they are, new
ones are appended. The result is validated like `gateway check-config` before anything is
written, and refused if the import would add a problem.
"""

from __future__ import annotations

import io
import json
import os
import re
import tempfile
import urllib.request
from dataclasses import dataclass
from pathlib import Path
from typing import Any, Iterable, Mapping
from urllib.parse import urlsplit

from ruamel.yaml import YAML
from ruamel.yaml.comments import CommentedSeq
from ruamel.yaml.error import YAMLError
from ruamel.yaml.scalarstring import DoubleQuotedScalarString

from gateway.config.rules import HTTP_METHODS, RuleError, compile_rule

OPERATION_KEYS = ("get", "put", "post", "delete", "options", "head", "patch", "trace")
MAX_DOCUMENT = 20 * 1024 * 1024
_PARAM = re.compile(r"\{([^{}/]+)\}")
_NAME = re.compile(r"[A-Za-z_][A-Za-z0-9_]*")
_REGEX_SPECIAL = frozenset(".^$*+?()[]{}|\\")


class ImportProblem(Exception):
    """The document or the config cannot be used; the message (or `problems`) says why."""

    def __init__(self, message: str, problems: list[str] | None = None) -> None:
        super().__init__(message)
        self.problems = problems or []


@dataclass(frozen=True)
class Operation:
    method: str                 # upper case
    path: str                   # as the document writes it, base path included: /api/v3/pet/{petId}
    rule: str                   # GET /api/v3/pet/:petId
    operation_id: str | None
    summary: str | None

    @property
    def comment(self) -> str:
        text = ": ".join(part for part in (self.operation_id, self.summary) if part)
        return " ".join(text.split())  # one line


def load_document(source: str) -> dict[str, Any]:
    """The OpenAPI document at a URL or in a file (YAML or JSON)."""
    try:
        if urlsplit(source).scheme in ("http", "https"):
            request = urllib.request.Request(source, headers={"Accept": "application/json, application/yaml, */*"})
            with urllib.request.urlopen(request, timeout=30) as resp:
                raw = resp.read(MAX_DOCUMENT + 1)
        else:
            raw = Path(source).read_bytes()
    except OSError as exc:
        raise ImportProblem(f"{source}: cannot read: {exc}") from None
    if len(raw) > MAX_DOCUMENT:
        raise ImportProblem(f"{source}: larger than {MAX_DOCUMENT} bytes")
    try:
        # YAML 1.2 (a superset of JSON), safe loader: no tags, no objects.
        document = YAML(typ="safe", pure=True).load(raw.decode("utf-8-sig"))
    except (UnicodeDecodeError, YAMLError) as exc:
        raise ImportProblem(f"{source}: neither JSON nor YAML: {exc}") from None
    if not isinstance(document, dict):
        raise ImportProblem(f"{source}: not an OpenAPI document (no top-level mapping)")
    version = str(document.get("openapi", ""))
    if not version.startswith("3."):
        found = f"Swagger {document['swagger']}" if "swagger" in document else "no `openapi: 3.x` field"
        raise ImportProblem(f"{source}: not an OpenAPI 3 document ({found}); convert it to OpenAPI 3 first")
    if not isinstance(document.get("paths"), dict):
        raise ImportProblem(f"{source}: the document has no `paths`")
    return document


def validation_warnings(document: Mapping[str, Any], limit: int = 5) -> list[str]:
    """What openapi-spec-validator finds wrong (import goes on: many real documents are a bit off)."""
    from openapi_spec_validator import OpenAPIV30SpecValidator, OpenAPIV31SpecValidator
    from jsonschema_path import SchemaPath

    version = str(document.get("openapi", ""))
    validator = OpenAPIV30SpecValidator if version.startswith("3.0") else OpenAPIV31SpecValidator
    found = []
    try:
        for error in validator(SchemaPath.from_dict(dict(document))).iter_errors():
            where = "/".join(str(p) for p in getattr(error, "absolute_path", ()) or ())
            found.append(f"{where or '(document)'}: {getattr(error, 'message', error)}")
            if len(found) >= limit:
                break
    except Exception as exc:  # noqa: BLE001 - a validator crash must not stop an import
        found.append(f"(validator) {type(exc).__name__}: {exc}")
    return found


def base_path(document: Mapping[str, Any]) -> str:
    """The path of the first server URL (variables at their defaults), without a trailing '/'."""
    servers = document.get("servers")
    if not isinstance(servers, list) or not servers or not isinstance(servers[0], dict):
        return ""
    url = str(servers[0].get("url") or "")
    variables = servers[0].get("variables") if isinstance(servers[0].get("variables"), dict) else {}
    url = _PARAM.sub(lambda m: str((variables.get(m.group(1)) or {}).get("default", "")), url)
    path = urlsplit(url).path if "://" in url else url.split("?")[0]
    return "/" + path.strip("/") if path.strip("/") else ""


def operations(document: Mapping[str, Any], exclude_methods: Iterable[str] = (), exclude: Iterable[str] = (),
               prefix: str | None = None) -> list[Operation]:
    """Every operation of the document, in document order, minus the excluded ones.

    `exclude` regexes are searched in the document's path (`/pet/{petId}`) and in
    `METHOD /path`; `prefix` defaults to the first server's base path."""
    skip_methods = {m.upper() for m in exclude_methods}
    patterns = [re.compile(p) for p in exclude]
    prefix = base_path(document) if prefix is None else "/" + prefix.strip("/") if prefix.strip("/") else ""
    found = []
    for path, item in document["paths"].items():
        item = _resolve(document, item)
        if not isinstance(path, str) or not path.startswith("/") or not isinstance(item, dict):
            continue
        for key, operation in item.items():
            method = str(key).upper()
            # TRACE is not a method the gateway forwards; x-* and parameters are not operations.
            if str(key) not in OPERATION_KEYS or method not in HTTP_METHODS or not isinstance(operation, dict):
                continue
            if method in skip_methods or any(p.search(path) or p.search(f"{method} {path}") for p in patterns):
                continue
            full = prefix + path
            found.append(Operation(method, full, f"{method} {path_pattern(full)}",
                                   _text(operation.get("operationId")), _text(operation.get("summary"))))
    return found


def path_pattern(path: str) -> str:
    """`/pets/{petId}` -> `/pets/:petId`; literal text escaped (`.` must not match any character)."""
    out, names, pos = [], set(), 0
    for m in _PARAM.finditer(path):
        out.append(_escape(path[pos:m.start()]))
        name = m.group(1)
        whole_segment = path[m.start() - 1:m.start()] == "/" and path[m.end():m.end() + 1] in ("/", "")
        if whole_segment and _NAME.fullmatch(name) and name not in names:
            out.append(f":{name}")
            names.add(name)
        else:  # part of a segment (/files/{name}.{ext}), or a name a regex group cannot take
            out.append("[^/]+")
        pos = m.end()
    out.append(_escape(path[pos:]))
    return "".join(out)


def _escape(text: str) -> str:
    return "".join("\\" + ch if ch in _REGEX_SPECIAL else ch for ch in text)


def _text(value: Any) -> str | None:
    return str(value) if value not in (None, "") else None


def _resolve(document: Mapping[str, Any], item: Any) -> Any:
    """A path item given as a local `$ref` (`#/components/pathItems/x`)."""
    ref = item.get("$ref") if isinstance(item, dict) else None
    if not isinstance(ref, str) or not ref.startswith("#/"):
        return item
    node: Any = document
    for part in ref[2:].split("/"):
        part = part.replace("~1", "/").replace("~0", "~")
        node = node.get(part) if isinstance(node, dict) else None
    return node


def render(ops: list[Operation], service: str, source: str, title: str | None) -> str:
    """The `protected_endpoints` YAML to paste under `services.<service>`."""
    lines = [f"# protected_endpoints for service {service}, from {source}"
             + (f" ({title})" if title else "") + f": {len(ops)} operation(s)",
             "protected_endpoints:"]
    width = max((len(json.dumps(op.rule)) for op in ops), default=0)
    for op in ops:
        quoted = json.dumps(op.rule)  # a JSON string is a valid YAML double-quoted scalar
        lines.append(f"  - {quoted.ljust(width)}  # {op.comment}" if op.comment else f"  - {quoted}")
    return "\n".join(lines) + "\n"


def check(ops: list[Operation]) -> None:
    """Every generated rule compiles exactly as the gateway will compile it."""
    for op in ops:
        try:
            compile_rule(op.rule)
        except RuleError as exc:
            raise ImportProblem(f"{op.method} {op.path}: cannot make a rule: {exc}") from None


def _round_trip() -> YAML:
    yaml = YAML()
    yaml.preserve_quotes = True
    yaml.width = 4096  # never fold a long rule or comment
    yaml.indent(mapping=2, sequence=4, offset=2)
    return yaml


def write_config(config_path: str | Path, service: str, ops: list[Operation],
                 environ: Mapping[str, str] | None = None) -> tuple[int, int]:
    """Add the operations' rules to `services.<service>.protected_endpoints` in the file, in place.

    Returns (added, already listed). Raises ImportProblem, leaving the file untouched, if the
    service does not exist or the result would have a problem the file did not have before."""
    from gateway.config.load import ConfigError, parse_config

    path = Path(config_path)
    yaml = _round_trip()
    try:
        original = path.read_text(encoding="utf-8")
        tree = yaml.load(original)
    except (OSError, YAMLError) as exc:
        raise ImportProblem(f"{path}: cannot read: {exc}") from None
    services = tree.get("services") if isinstance(tree, dict) else None
    node = services.get(service) if isinstance(services, dict) else None
    if not isinstance(node, dict):
        known = ", ".join(sorted(map(str, services))) if isinstance(services, dict) else "none"
        raise ImportProblem(f"{path}: no service {service!r} (known: {known})")
    rules = node.get("protected_endpoints")
    if rules is None:
        rules = node["protected_endpoints"] = CommentedSeq()
    if not isinstance(rules, list):
        raise ImportProblem(f"{path}: services.{service}.protected_endpoints is not a list")
    listed = {_rule_key(entry) for entry in rules}
    added = 0
    for op in ops:
        if _rule_key(op.rule) in listed:
            continue  # already there, perhaps with a price: the owner's entry wins
        rules.append(DoubleQuotedScalarString(op.rule))
        if op.comment:
            rules.yaml_add_eol_comment(op.comment, len(rules) - 1, column=0)
        listed.add(_rule_key(op.rule))
        added += 1
    out = io.StringIO()
    yaml.dump(tree, out)
    updated = out.getvalue()

    def problems(text: str) -> set[str]:
        env = os.environ if environ is None else environ
        try:
            parse_config(YAML(typ="safe", pure=True).load(text), env, base_dir=path.parent, source=path)
        except ConfigError as exc:
            return set(exc.problems)
        return set()

    new = sorted(problems(updated) - problems(original))
    if new:
        raise ImportProblem(f"{path}: not written, the result would have {len(new)} new problem(s)", new)
    if added:
        _replace(path, updated)
    return added, len(ops) - added


def _rule_key(entry: Any) -> tuple[frozenset[str] | None, str] | None:
    """A rule's identity (methods, pattern), whether written as text or {endpoint, credits}."""
    text = entry.get("endpoint") if isinstance(entry, dict) else entry
    if not isinstance(text, str):
        return None
    try:
        rule = compile_rule(text)
    except RuleError:
        return None
    # `/:song` and `/:song_id` are the same rule: group names do not matter.
    return rule.methods, re.sub(r"\(\?P<[^>]+>", "(", rule.pattern.pattern)


def _replace(path: Path, text: str) -> None:
    """Write atomically (a crash leaves the old file or the new one, never half of one)."""
    mode = path.stat().st_mode & 0o7777
    fd, tmp = tempfile.mkstemp(dir=path.parent, prefix=f".{path.name}.", suffix=".tmp")
    try:
        with os.fdopen(fd, "w", encoding="utf-8") as f:
            f.write(text)
        os.chmod(tmp, mode)
        os.replace(tmp, path)
    except BaseException:
        Path(tmp).unlink(missing_ok=True)
        raise
