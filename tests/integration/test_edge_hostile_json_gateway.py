"""Hostile JSON never kills a process (issue 10, item 1).

The attack: 64 KiB of `[` sent without a token to `POST /.gateway/login` segfaulted a worker
(CPython's C JSON decoder recursed past the C stack: py_ecc, imported through eth-account,
raises the recursion limit to 100,000). Against the real `gateway serve` with 2 workers, the
real chain, the example plugin and the example MCP server: deep bodies to every JSON-reading
endpoint are refused with 400 `bad_request`, the gateway answers the next call, and no worker
died (same pids, no worker started again). Unit tests of `gateway.http.client_json`:
tests/unit/test_edge_hostile_json.py.
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

from gateway.http import client_json
from gateway.auth.issuer import OwnIssuer
from tests.support.served import Served
from tests.support.stack import HOST, SUBSCRIBER

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
    served = Served(chain, plugin, signing_key, tmp_path, workers=2)
    data = yaml.safe_load(served.path.read_text())
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
