"""`gateway import-openapi`: a service's `protected_endpoints`, derived from its OpenAPI 3 document.

One rule per operation: the method and the path, with `{param}` turned into `:param` (one
segment) and regex characters escaped, so that the rule matches exactly the paths the document
describes; operationId and summary follow as a comment. Paths are prefixed with the base path of
the document's first server (`servers: [{url: /api/v3}]` -> `/api/v3/pet`), since that is what
clients send through the gateway; `--base-path` overrides it. A rule is written for the path as
the gateway matches it (`openapi_paths`: query cut off, normalized spelling); what the rules cannot
say as the document does goes to `warn`, which the command prints to stderr. The document itself is
read and checked by `openapi_document`.

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
from dataclasses import dataclass
from pathlib import Path
from typing import Any, Iterable, Mapping

from ruamel.yaml import YAML
from ruamel.yaml.comments import CommentedSeq
from ruamel.yaml.error import YAMLError
from ruamel.yaml.scalarstring import DoubleQuotedScalarString

from gateway.config.rules import HTTP_METHODS, RuleError, compile_rule
from gateway.ops.openapi_document import ImportProblem, load_document, validation_warnings
from gateway.ops.openapi_paths import PARAM as _PARAM, Warn, base_path, rule_template

__all__ = ["ImportProblem", "Operation", "load_document", "validation_warnings", "base_path", "operations",
           "path_pattern", "render", "check", "write_config"]
OPERATION_KEYS = ("get", "put", "post", "delete", "options", "head", "patch", "trace")
_NAME = re.compile(r"[A-Za-z_][A-Za-z0-9_]*")
_REGEX_SPECIAL = frozenset(".^$*+?()[]{}|\\")


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


def operations(document: Mapping[str, Any], exclude_methods: Iterable[str] = (), exclude: Iterable[str] = (),
               prefix: str | None = None, warn: Warn | None = None) -> list[Operation]:
    """Every operation of the document, in document order, minus the excluded ones.

    `exclude` regexes are searched in the document's path (`/pet/{petId}`) and in
    `METHOD /path`; `prefix` defaults to the first server's base path. What the rules cannot
    say as the document does (a query in a path key, a path the gateway refuses) goes to `warn`."""
    warn = warn or (lambda _message: None)
    skip_methods = {m.upper() for m in exclude_methods}
    patterns = [re.compile(p) for p in exclude]
    prefix = base_path(document, warn) if prefix is None else "/" + prefix.strip("/") if prefix.strip("/") else ""
    found: list[Operation] = []
    seen: dict[str, str] = {}
    for path, item in document["paths"].items():
        item = _resolve(document, item)
        if not isinstance(path, str) or not path.startswith("/") or not isinstance(item, dict):
            continue
        template = rule_template(prefix, path, warn)
        for key, operation in item.items():
            method = str(key).upper()
            # TRACE is not a method the gateway forwards; x-* and parameters are not operations.
            if str(key) not in OPERATION_KEYS or method not in HTTP_METHODS or not isinstance(operation, dict):
                continue
            if method in skip_methods or any(p.search(path) or p.search(f"{method} {path}") for p in patterns):
                continue
            if template is None:
                continue
            rule = f"{method} {path_pattern(template)}"
            if rule in seen:  # `/x?beta=true` next to `/x`: one rule covers both
                warn(f"{method} {path}: same rule as {seen[rule]} ({rule!r}): listed once")
                continue
            seen[rule] = f"{method} {path}"
            found.append(Operation(method, prefix + path, rule,
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
    escaped = "".join("\\" + ch if ch in _REGEX_SPECIAL else ch for ch in text)
    return re.sub(r"(?<=/):", r"\\:", escaped)  # a literal `/:x` segment is not the parameter `:x`


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
