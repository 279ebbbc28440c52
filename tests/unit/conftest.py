"""Unit tests run in-process: no anvil, no example plugin, MCP server or httpbin process, no real
gateway. A unit test that asks for one of the real-stack fixtures of tests/conftest.py (directly
or through another fixture) is an error at collection; it belongs in tests/integration/."""

from __future__ import annotations

from pathlib import Path

import pytest

HERE = Path(__file__).parent
REAL_STACK = {"chain_session", "plugin", "httpbin_url", "mcp_upstream", "make_gateway", "postgres"}


def pytest_collection_modifyitems(items: list[pytest.Item]) -> None:
    wrong = [f"{item.nodeid}: {', '.join(sorted(REAL_STACK & set(item.fixturenames)))}" for item in items
             if item.path.is_relative_to(HERE) and REAL_STACK & set(getattr(item, "fixturenames", ()))]
    if wrong:
        raise pytest.UsageError("unit tests that need the real stack (move them to tests/integration/):\n  "
                                + "\n  ".join(wrong))
