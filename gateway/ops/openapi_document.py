"""The OpenAPI document `gateway import-openapi` reads: loaded from a file or a URL, and checked.

Big documents (OpenAI's own spec is ~3 MB of YAML, reported to take 36 s) must import in seconds.
On a synthetic 3.5 MB document (tests/fixtures/big_openapi.py) ruamel's pure-Python YAML loader
took 5.5 s and openapi-spec-validator's full walk (every schema, default and example, following
each `$ref`) 3.3 s. So JSON is read by the standard library, YAML (1.2) by libyaml when PyYAML has
it, and the full walk runs only on documents of ordinary size; a big one is checked against the
OpenAPI JSON Schema alone, and a warning says so.
"""

from __future__ import annotations

import json
import urllib.request
from pathlib import Path
from typing import Any, Mapping
from urllib.parse import urlsplit

import yaml
from ruamel.yaml import YAML
from ruamel.yaml.error import YAMLError

MAX_DOCUMENT = 20 * 1024 * 1024
# Above this many nodes (mappings, lists and scalars: ~1 MB of YAML) only the JSON Schema check
# runs. The full walk costs ~35 us a node on the synthetic document and more where `$ref`s nest
# deeply (36 s reported for OpenAI's 3 MB spec). The Petstore has ~700 nodes.
FULL_CHECK_NODES = 20_000


class ImportProblem(Exception):
    """The document or the config cannot be used; the message (or `problems`) says why."""

    def __init__(self, message: str, problems: list[str] | None = None) -> None:
        super().__init__(message)
        self.problems = problems or []


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
        document = _parse(raw.decode("utf-8-sig"))
    except (UnicodeDecodeError, YAMLError, yaml.YAMLError) as exc:
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


def _parse(text: str) -> Any:
    """JSON if it is JSON (fast, and YAML's superset would read it the same), else YAML, safely."""
    if text.lstrip()[:1] in ("{", "["):
        try:
            return json.loads(text)
        except ValueError:
            pass  # YAML flow style also starts with '{': let the YAML reader have it
    if _Yaml12Loader is not None:
        return yaml.load(text, Loader=_Yaml12Loader)  # noqa: S506 - a subclass of the safe loader
    return YAML(typ="safe", pure=True).load(text)  # YAML 1.2, safe loader


def _yaml12_loader() -> type | None:
    """libyaml's safe loader (no tags, no objects; ~5x faster than pure Python) reading plain
    scalars as YAML 1.2 does, like ruamel's loader it replaces: `no` and `on` stay strings,
    `0o17` is 15, `0755` is 755, `1:20` is a string (YAML 1.1 read them as False, True, -, 493, 80)."""
    base = getattr(yaml, "CSafeLoader", None)
    if base is None:
        return None
    from ruamel.yaml.resolver import implicit_resolvers

    class Loader(base):  # type: ignore[misc, valid-type]
        yaml_implicit_resolvers: dict[str, list] = {}

    for versions, tag, regexp, first in implicit_resolvers:
        if (1, 2) in versions:
            Loader.add_implicit_resolver(tag, regexp, first)
    Loader.add_constructor("tag:yaml.org,2002:int", _yaml12_int)
    return Loader


def _yaml12_int(loader: Any, node: Any) -> int:
    text = str(loader.construct_scalar(node)).replace("_", "")
    sign = -1 if text.startswith("-") else 1
    text = text.lstrip("+-")
    for prefix, base in (("0b", 2), ("0o", 8), ("0x", 16)):
        if text.startswith(prefix):
            return sign * int(text[2:], base)
    return sign * int(text)  # `0755` is decimal in YAML 1.2


_Yaml12Loader = _yaml12_loader()


def validation_warnings(document: Mapping[str, Any], limit: int = 5) -> list[str]:
    """What openapi-spec-validator finds wrong (import goes on: many real documents are a bit off)."""
    from openapi_spec_validator import OpenAPIV30SpecValidator, OpenAPIV31SpecValidator
    from openapi_spec_validator.schemas import openapi_v30_schema_validator, openapi_v31_schema_validator

    v30 = str(document.get("openapi", "")).startswith("3.0")
    nodes = _count_nodes(document, FULL_CHECK_NODES + 1)
    found = []
    if nodes > FULL_CHECK_NODES:
        # Why: the full walk takes tens of seconds on a document this big; the rules do not depend
        # on it, and the JSON Schema check still catches a document that is not OpenAPI at all.
        found.append(f"(validator) a big document (over {FULL_CHECK_NODES} nodes): checked against the "
                     f"OpenAPI JSON Schema only; run openapi-spec-validator on it for the full check")
        errors = (openapi_v30_schema_validator if v30 else openapi_v31_schema_validator).iter_errors(document)
    else:
        errors = (OpenAPIV30SpecValidator if v30 else OpenAPIV31SpecValidator)(dict(document)).iter_errors()
    try:
        for error in errors:
            where = "/".join(str(p) for p in getattr(error, "absolute_path", ()) or ())
            found.append(f"{where or '(document)'}: {getattr(error, 'message', error)}")
            if len(found) >= limit + (nodes > FULL_CHECK_NODES):  # the note above is not an error
                break
    except Exception as exc:  # noqa: BLE001 - a validator crash must not stop an import
        found.append(f"(validator) {type(exc).__name__}: {exc}")
    return found


def _count_nodes(node: Any, stop: int) -> int:
    """How many nodes the document has, counting no further than `stop`."""
    count, stack = 0, [node]
    while stack and count < stop:
        item = stack.pop()
        count += 1
        if isinstance(item, dict):
            stack.extend(item.values())
        elif isinstance(item, list):
            stack.extend(item)
    return count
