"""Hostile JSON never kills a process (issue 10, item 1).

The attack: 64 KiB of `[` sent without a token to `POST /.gateway/login` segfaulted a worker
(CPython's C JSON decoder recursed past the C stack: py_ecc, imported through eth-account,
raises the recursion limit to 100,000). Against the real `gateway serve` with 2 workers, the
real chain, the example plugin and the example MCP server: deep bodies to every JSON-reading
endpoint are refused with 400 `bad_request`, the gateway answers the next call, and no worker
died (same pids, no worker started again). Unit tests of `gateway.http.client_json` beside it.
"""

from __future__ import annotations

import json
import subprocess
import sys
import urllib.error
import urllib.request
from pathlib import Path

import pytest
import yaml
from hypothesis import given, settings
from hypothesis import strategies as st

from conftest import HOST, SUBSCRIBER
from gateway.http import client_json
from gateway.auth.issuer import OwnIssuer
from gateway.http.problems import Problem
from test_crash_safety import Served
from test_mcp import mcp_upstream  # noqa: F401 - the session fixture: the example MCP server

MCP_HOST = "songs.proxy.localhost"
MIB = 1024 * 1024
DEEP = {
    "1 MiB of [": b"[" * MIB,
    '1 MiB of {"a":': b'{"a":' * (MIB // 5),
}
LOGIN_LIMIT = 64 * 1024  # gateway_endpoints.LOGIN_BODY_LIMIT: the size of the original attack
TOOLS_LIST = json.dumps({"jsonrpc": "2.0", "id": 1, "method": "tools/list"}).encode()


def post(port: int, host: str, path: str, body: bytes, token: str | None = None) -> tuple[int, dict]:
    headers = {"Host": host, "Content-Type": "application/json", "Accept": "application/json, text/event-stream"}
    if token:
        headers["Authorization"] = f"Bearer {token}"
    request = urllib.request.Request(f"http://127.0.0.1:{port}{path}", data=body, method="POST", headers=headers)
    try:
        with urllib.request.urlopen(request, timeout=30) as resp:
            return resp.status, _json_or_event(resp.read())
    except urllib.error.HTTPError as err:
        return err.code, json.loads(err.read() or b"{}")


def _json_or_event(body: bytes) -> dict:
    """The JSON of an answer, or of the one event of a text/event-stream answer (MCP)."""
    for line in body.splitlines():
        if line.startswith(b"data: "):
            return json.loads(line[6:])
    return json.loads(body or b"{}")


def get(port: int, host: str, path: str) -> int:
    request = urllib.request.Request(f"http://127.0.0.1:{port}{path}", headers={"Host": host})
    with urllib.request.urlopen(request, timeout=30) as resp:
        return resp.status


def children(pid: int) -> set[int]:
    found: set[int] = set()
    for task in Path(f"/proc/{pid}/task").iterdir():
        found |= {int(p) for p in (task / "children").read_text().split()}
    return found


def listening(served: Served) -> int:
    return sum('"event": "listening"' in line for line in served.child.lines)


@pytest.fixture
def two_workers(chain, plugin, mcp_upstream, signing_key, tmp_path):  # noqa: F811
    """`gateway serve`, workers: 2, with the plugin service (elvis) and an MCP service (songs)."""
    served = Served(chain, plugin, signing_key, tmp_path)
    data = yaml.safe_load(served.path.read_text())
    data["workers"] = 2
    songs = dict(data["services"]["elvis"], upstream=mcp_upstream.url, open_endpoints=[], protected_endpoints=[],
                 upstream_auth={"type": "bearer", "token": mcp_upstream.secret},
                 mcp={"path": "/mcp", "tools": {"search": 2}, "default_tool_credits": 1})
    data["services"]["songs"] = songs
    served.path.write_text(yaml.safe_dump(data))
    served.start()
    try:
        for worker in (0, 1):  # both workers listen
            served.child.wait_for(rf'"event": "listening".*"worker": {worker}\b|"worker": {worker}\b.*"event": "listening"',
                                  timeout=30)
        yield served
    finally:
        served.stop()


def test_deep_json_to_sign_in_and_mcp_never_kills_a_worker(two_workers):
    served = two_workers
    mcp_token = OwnIssuer(served.config.tokens.own).issue(SUBSCRIBER, ["songs"])
    workers, started = children(served.child.proc.pid), listening(served)
    assert len(workers) >= 2
    attacks = []
    for name, body in DEEP.items():
        attacks += [
            # The original attack, at the sign-in body's size limit: refused by the depth check.
            (f"login, {name[6:]} up to 64 KiB", HOST, "/.gateway/login", body[:LOGIN_LIMIT], None, 400, "bad_request"),
            # 1 MiB is over that limit: refused before it is parsed at all.
            (f"login, {name}", HOST, "/.gateway/login", body, None, 413, "body_too_large"),
            # MCP bodies (max_body 10 MiB) are parsed to be priced: 1 MiB deep is refused.
            (f"mcp, {name}", MCP_HOST, "/mcp", body, mcp_token, 400, "bad_request"),
        ]
    for label, host, path, body, token, status, code in attacks:
        for _ in range(3):  # new connections each time: the kernel spreads them over both workers
            answer = post(served.port, host, path, body, token)
            assert (answer[0], answer[1].get("code")) == (status, code), label
            # ... and the gateway answers the next call, on both services.
            assert get(served.port, HOST, "/.gateway/plan") == 200, label
            ok, listed = post(served.port, MCP_HOST, "/mcp", TOOLS_LIST, mcp_token)
            assert ok == 200 and {t["name"] for t in listed["result"]["tools"]} >= {"search"}, label
    assert served.child.proc.poll() is None
    assert children(served.child.proc.pid) == workers  # no worker died (or was replaced)
    assert listening(served) == started
    assert not any("Segmentation" in line or "Traceback" in line for line in served.child.lines)


def test_serve_runs_with_a_recursion_limit_its_c_stack_can_honour(tmp_path):
    """`gateway serve` caps the limit py_ecc raised once its imports are done (the workers fork
    from that process): the C decoder then stops with RecursionError instead of a segfault."""
    config = tmp_path / "gateway.yaml"
    config.write_text("{}")  # never read: `load_config` is replaced below
    code = (
        "import json, sys\n"
        "import gateway.cli as cli, gateway.process.server as server\n"
        "import gateway.ops.observability as obs\n"
        "obs.configure_logging = lambda *a: None\n"
        "cli._load = lambda path: type('C', (), {'log_level': 'info', 'log_format': 'json'})()\n"
        "def serve(config):\n"
        "    print('limit', sys.getrecursionlimit(), 'py_ecc' in sys.modules, flush=True)\n"
        "    try:\n"
        "        json.loads('[' * 200000)\n"
        "    except RecursionError:\n"
        "        print('recursion error', flush=True)\n"
        "    return 0\n"
        "server.serve = serve\n"
        f"sys.exit(cli.main(['serve', '--config', {str(config)!r}]))\n"
    )
    done = subprocess.run([sys.executable, "-c", code], capture_output=True, text=True, timeout=120)
    assert done.returncode == 0, done.stderr
    assert done.stdout.split("\n")[:2] == [f"limit {client_json.SAFE_RECURSION_LIMIT} True", "recursion error"]


# --- gateway.http.client_json -------------------------------------------------------------------------


def nested(depth: int, kind: str = "[") -> bytes:
    return (b"[" * depth + b"]" * depth) if kind == "[" else (b'{"a":' * depth + b"1" + b"}" * depth)


@pytest.mark.parametrize("kind", ["[", "{"])
def test_json_nested_exactly_at_the_limit_is_accepted(kind):
    value = client_json.loads(nested(client_json.MAX_DEPTH, kind), "hint")
    depth = 0
    while isinstance(value, (list, dict)):
        value, depth = (value[0] if value else None) if isinstance(value, list) else value["a"], depth + 1
    assert depth == client_json.MAX_DEPTH


@pytest.mark.parametrize("kind", ["[", "{"])
def test_json_nested_one_past_the_limit_is_refused(kind):
    with pytest.raises(Problem) as refused:
        client_json.loads(nested(client_json.MAX_DEPTH + 1, kind), "send JSON")
    assert (refused.value.status, refused.value.code) == (400, "bad_request")
    assert refused.value.detail.startswith("send JSON (JSON nested deeper than 64")


@pytest.mark.parametrize("body", [
    b'["' + b"[" * 10_000 + b'"]',                         # brackets inside a string
    b'{"' + b"{[" * 5_000 + b'": "' + b"]}" * 5_000 + b'"}',  # ... in keys and values
    b'["\\"' + b"[" * 10_000 + b'\\""]',                   # after and before escaped quotes
    b'["\\\\\\"' + b"[" * 10_000 + b'"]',                  # an escaped backslash, then an escaped quote
    '["\u00e9[\\u005b' .encode() + b"[" * 1000 + b'"]',    # multi-byte UTF-8 and \\u escapes around them
])
def test_brackets_inside_strings_do_not_count_as_nesting(body):
    assert isinstance(client_json.loads(body, "hint"), (list, dict))


@pytest.mark.parametrize("body", [
    b'["\\\\", ' + nested(65) + b"]",          # an escaped backslash ends the string: the nesting is real
    b'["\\\\\\\\"' + b"," + nested(65) + b"]",  # two of them
    b"[" * 65 + b'"' + b"]" * 65,              # an unterminated string hides the closers: still deep
])
def test_escapes_cannot_hide_real_nesting(body):
    with pytest.raises(Problem) as refused:
        client_json.loads(body, "hint")
    assert refused.value.code == "bad_request"


@pytest.mark.parametrize("body, reason", [
    (b'{"message": "a", "message": "b", "signature": "0x"}', "duplicate key"),
    (b'[{"a": 1, "a": 1}]', "duplicate key"),
    ('{"message": "x"}'.encode("utf-16"), "not UTF-8"),
    (b"\xef\xbb\xbf{}", "BOM"),
    (b'{"message": "\xff"}', "not UTF-8"),
    (b"[NaN]", "NaN is not JSON"),
    (b"[-Infinity]", "-Infinity is not JSON"),
    (b"[1" + b"0" * 5000 + b"]", "digits"),
    (b"[]]", "Extra data"),
    (b"[]" * 40 + b"]" + b"[]" * 40, "unbalanced"),
    (b"{", "Expecting"),
])
def test_json_that_is_not_strict_is_refused(body, reason):
    with pytest.raises(Problem) as refused:
        client_json.loads(body, "hint")
    assert (refused.value.status, refused.value.code) == (400, "bad_request")
    assert reason in refused.value.detail and len(refused.value.detail) < 300


def depth_of(value) -> int:
    if isinstance(value, list):
        return 1 + max(map(depth_of, value), default=0)
    if isinstance(value, dict):
        return 1 + max(map(depth_of, value.values()), default=0)
    return 0


STRINGS = st.text(alphabet='[]{}"\\ab\u00e9/', max_size=6)
VALUES = st.recursive(st.none() | st.integers() | STRINGS,
                      lambda inner: st.lists(inner, max_size=4) | st.dictionaries(STRINGS, inner, max_size=3),
                      max_leaves=60)


@settings(max_examples=400, deadline=None)
@given(value=VALUES, limit=st.integers(0, 12), ascii_only=st.booleans())
def test_the_depth_scan_agrees_with_the_parsed_depth(value, limit, ascii_only):
    body = json.dumps(value, ensure_ascii=ascii_only).encode()
    assert client_json.nesting_depth_ok(body, limit) == (depth_of(value) <= limit)


@pytest.mark.parametrize("limit, expected", [(10, False), (11, True)])
def test_the_depth_scan_past_its_pair_passes_is_exact(limit, expected):
    # 1,000 teeth 10 deep inside one array: depth 11, still many runs after the 8 pair passes.
    body = b"[" + b"[" * 10 + b"]" * 10 + (b",[" + b"[" * 9 + b"]" * 10) * 999 + b"]"
    assert client_json.nesting_depth_ok(body, limit) is expected
