"""MCP behind the gateway, in-process: pricing of JSON-RPC messages and batches, and the `mcp`
config section's problems and defaults. The SDK client through the real gateway to the example MCP
server is in tests/integration/test_mcp_gateway.py."""

from __future__ import annotations

import pytest

from gateway.config.model import McpConfig
from gateway.config.load import ConfigError, parse_config
from gateway.http.mcp import parse_messages, price_messages
from gateway.http.problems import Problem
from tests.support.mcp import rpc
from tests.support.stack import base_config


# --- pricing and configuration (no network) -------------------------------------------------------

MCP = McpConfig(path="/mcp", rule=None,  # type: ignore[arg-type]
                tools={"search": 2, "summarize": 5}, default_tool_credits=1)


@pytest.mark.parametrize("messages, credits, tools", [
    ([rpc(1, "initialize")], 0, ()),
    ([rpc(1, "server/discover")], 0, ()),
    ([rpc(1, "tools/list")], 0, ()),
    ([{"jsonrpc": "2.0", "method": "notifications/initialized"}], 0, ()),
    ([{"jsonrpc": "2.0", "id": 7, "result": {}}], 0, ()),                      # a response to the server
    ([rpc(1, "tools/call", "search")], 2, ("search",)),
    ([rpc(1, "tools/call", "translate")], 1, ("translate",)),                  # unlisted: the default
    ([{"jsonrpc": "2.0", "id": 1, "method": "tools/call"}], 1, ("?",)),        # no name: never free
    ([{"jsonrpc": "2.0", "id": 1, "method": "tools/call", "params": {"name": 5}}], 1, ("?",)),
    ([{"jsonrpc": "2.0", "method": "tools/call", "params": {"name": "summarize"}}], 5, ("summarize",)),  # no id
    ([rpc(1, "tools/call", "search"), rpc(2, "tools/call", "summarize"), 42], 7, ("search", "summarize")),
    ([rpc(1, "Tools/Call", "summarize")], 0, ()),                              # not the method: nothing runs
])
def test_price_of_messages(messages, credits, tools):
    call = price_messages(MCP, b"", messages, batch=True)
    assert (call.price.fixed, call.tools) == (credits, tools)


def test_parse_messages_keeps_a_single_message_single():
    assert parse_messages(b'{"a": 1}') == ([{"a": 1}], False)
    assert parse_messages(b'[{"a": 1}]') == ([{"a": 1}], True)
    with pytest.raises(Problem):
        parse_messages(b'{"a": 1, "a": 2}')


@pytest.mark.parametrize("mcp, problem", [
    ({"path": "mcp"}, "services.elvis.mcp.path: must be a literal path"),
    ({"path": "/mc(p)?"}, "services.elvis.mcp.path: must be a literal path"),
    ({"path": "/a/../mcp"}, "services.elvis.mcp.path: must be a literal path"),
    ({"path": "/.well-known/mcp"}, "services.elvis.mcp.path: must not be under"),
    ({"tools": {"search": -1}}, "services.elvis.mcp.tools: tool 'search': credits must be >= 0"),
    ({"tools": {"search": {"credit": 2}}}, "services.elvis.mcp.tools: tool 'search': only {credits: N, x402: PRICE}"),
    ({"tools": {"search": {}}}, "services.elvis.mcp.tools: tool 'search': only {credits: N, x402: PRICE}"),
    ({"tools": {"search": {"x402": "-1"}}}, "services.elvis.mcp.tools: tool 'search': x402 must be a positive price"),
    ({"tools": {"search": {"x402": "0.05"}}},
     "services.elvis.mcp.tools.search.x402: the service has no `x402` (network, asset, pay_to) to price it in"),
    ({"tools": ["search"]}, "services.elvis.mcp.tools: must map tool names to credits"),
    ({"prices": {}}, "services.elvis.mcp.prices: unknown key"),
])
def test_mcp_config_problems(signing_key, mcp, problem):
    data = base_config(None, None, signing_key, mcp=mcp)
    with pytest.raises(ConfigError) as err:
        parse_config(data, {})
    assert any(p.startswith(problem) for p in err.value.problems), err.value.problems


def test_mcp_config_defaults_and_plan_requirements(signing_key):
    data = base_config(None, None, signing_key, mcp={})
    service = parse_config(data, {}).services["elvis"]
    assert (service.mcp.path, dict(service.mcp.tools), service.mcp.default_tool_credits) == ("/mcp", {}, 1)
    no_plan = base_config(None, None, signing_key, mcp={}, protected_endpoints=[])
    del no_plan["services"]["elvis"]["plan"]
    with pytest.raises(ConfigError) as err:
        parse_config(no_plan, {})
    assert "services.elvis.plan: required when mcp is set (its calls are protected)" in err.value.problems
    pass_plan = base_config(None, None, signing_key, mcp={"tools": {"search": 2}}, protected_endpoints=[])
    pass_plan["services"]["elvis"]["plan"] |= {"standard": "erc721"}
    del pass_plan["services"]["elvis"]["plan"]["token_id"]
    with pytest.raises(ConfigError) as err:
        parse_config(pass_plan, {})
    assert "services.elvis.mcp: an erc721 pass plan has no credits to price tools with" in err.value.problems
