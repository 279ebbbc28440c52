"""Issue 10 item 12: errors and logs stay ours.

Against the real `gateway serve` process: a malformed request (bad request line, invalid header
bytes, an oversized head, broken body framing...) is answered in problem JSON and logged as ONE
JSON line, never as a plain traceback; a log line that cannot be written (stdout's reader gone)
never fails a request; no answer names a product version in `Server`.
"""

from __future__ import annotations

import json
import os
import signal
import socket
import subprocess
import sys
import urllib.error
import urllib.request

import pytest
import yaml

from gateway.dev.chain import free_port
from gateway.dev.process import REPO, ChildProcess
from gateway.http.headers import SERVER_NAME
from tests.support.stack import HOST, base_config

TIMEOUT = 30.0  # a generous deadline for one answer

# (name, raw bytes, expected status, expected code)
MALFORMED = [
    ("garbage_request_line", b"GARBAGE\r\n\r\n", 400, "bad_request"),
    ("bad_method", b"G@T /health HTTP/1.1\r\nHost: " + HOST.encode() + b"\r\n\r\n", 400, "bad_request"),
    ("bad_http_version", b"GET /health HTTP/9.9\r\nHost: x\r\n\r\n", 400, "bad_request"),
    ("tls_on_the_plain_port", b"\x16\x03\x01\x00\xa5\x01\x00\x00\xa1\x03\x03" + b"\x00" * 40, 400, "bad_request"),
    ("control_byte_in_header_value", b"GET /health HTTP/1.1\r\nHost: x\r\nAuthorization: Bearer s3cr\x01t\r\n\r\n",
     400, "bad_request"),
    ("space_in_header_name", b"GET /health HTTP/1.1\r\nHost: x\r\nX A: b\r\n\r\n", 400, "bad_request"),
    ("nul_in_path", b"GET /a\x00b HTTP/1.1\r\nHost: x\r\n\r\n", 400, "bad_request"),
    ("oversized_header", b"GET /health HTTP/1.1\r\nHost: x\r\nX-A: " + b"a" * 40000 + b"\r\n\r\n",
     431, "headers_too_large"),
    ("too_many_headers", b"GET /health HTTP/1.1\r\nHost: x\r\n" + b"".join(b"X-%d: 1\r\n" % i for i in range(300))
     + b"\r\n", 431, "headers_too_large"),
    ("oversized_request_line", b"GET /" + b"a" * 20000 + b" HTTP/1.1\r\nHost: x\r\n\r\n", 414, "uri_too_long"),
    ("bad_content_length", b"POST /query HTTP/1.1\r\nHost: x\r\nContent-Length: abc\r\n\r\n", 400, "bad_request"),
    ("duplicate_content_length", b"POST /query HTTP/1.1\r\nHost: x\r\nContent-Length: 1\r\nContent-Length: 2\r\n\r\nab",
     400, "bad_request"),
    ("content_length_with_chunked", b"POST /query HTTP/1.1\r\nHost: x\r\nContent-Length: 3\r\n"
     b"Transfer-Encoding: chunked\r\n\r\n0\r\n\r\n", 400, "bad_request"),
    ("bad_chunk_size", b"POST /query HTTP/1.1\r\nHost: x\r\nTransfer-Encoding: chunked\r\n\r\nzz\r\nhello\r\n0\r\n\r\n",
     400, "bad_request"),
    ("bad_transfer_encoding", b"POST /query HTTP/1.1\r\nHost: x\r\nTransfer-Encoding: gzip, chunked, foo\r\n\r\n",
     400, "bad_request"),
]


def write_config(chain, plugin, signing_key, tmp_path) -> tuple[str, int, int]:
    port, admin = free_port(), free_port()
    data = base_config(chain, plugin, signing_key)
    data.update(listen=f"127.0.0.1:{port}", admin_listen=f"127.0.0.1:{admin}", workers=1)
    path = tmp_path / "gateway.yaml"
    path.write_text(yaml.safe_dump(data))
    return str(path), port, admin


@pytest.fixture
def served(chain, plugin, signing_key, tmp_path):
    path, port, admin = write_config(chain, plugin, signing_key, tmp_path)
    child = ChildProcess([sys.executable, "-m", "gateway", "serve", "--config", path], ready=r'"event": "listening"',
                         env={"GATEWAY_LOG_FORMAT": "json"})
    child.port, child.admin = port, admin
    yield child
    child.stop()


def raw_exchange(port: int, data: bytes) -> bytes:
    """Send bytes as they are; read the answer until the server closes the connection (it must: a
    connection still open after a malformed request fails here with a socket timeout)."""
    with socket.create_connection(("127.0.0.1", port), timeout=10) as sock:
        try:
            sock.sendall(data)
        except (BrokenPipeError, ConnectionResetError):  # the server answered and closed mid-send
            pass
        chunks = []
        try:
            while chunk := sock.recv(65536):
                chunks.append(chunk)
        except ConnectionResetError:
            pass
    return b"".join(chunks)


def parse_answer(raw: bytes) -> tuple[int, dict[str, str], bytes]:
    head, _, body = raw.partition(b"\r\n\r\n")
    status_line, *header_lines = head.decode("latin-1").split("\r\n")
    headers = {}
    for line in header_lines:
        name, _, value = line.partition(":")
        headers[name.strip().lower()] = value.strip()
    return int(status_line.split()[1]), headers, body


def get(url: str, host: str | None = HOST) -> tuple[int, dict[str, str]]:
    req = urllib.request.Request(url, headers={"Host": host} if host else {})
    try:
        with urllib.request.urlopen(req, timeout=TIMEOUT) as resp:
            resp.read()
            return resp.status, dict(resp.headers)
    except urllib.error.HTTPError as err:
        return err.code, dict(err.headers)


def test_malformed_requests_get_problem_json_and_one_json_log_line_each_never_a_traceback(served):
    start = len(served.lines)
    for name, data, status, code in MALFORMED:
        answer_status, headers, body = parse_answer(raw_exchange(served.port, data))
        assert (answer_status, json.loads(body)["code"]) == (status, code), name
        assert headers["content-type"].startswith("application/problem+json"), name
        assert headers["server"] == SERVER_NAME, name
        assert b"s3cr" not in body, name  # the request's bytes are never echoed
    served.wait_for(r"^\{.*\"decision\": \"malformed\".*\"code\": \"bad_request\"", start=start)
    # the log line is written before the answer: once every answer is in, every line is too
    lines = served.lines[start:]
    records = [json.loads(line) for line in lines]  # every line is one JSON object
    malformed = [r for r in records if r.get("event") == "request" and r.get("decision") == "malformed"]
    assert [(r["status"], r["code"]) for r in malformed] == [(s, c) for _, _, s, c in MALFORMED]
    assert all(r.get("reason") and r.get("request_id") for r in malformed)
    output = "\n".join(lines)
    assert "Traceback" not in output and "Error handling request" not in output
    assert "s3cr" not in output  # the log says why, never what was sent (it may hold a token)
    # ... counted by code for the operator's dashboards
    with urllib.request.urlopen(f"http://127.0.0.1:{served.admin}/metrics", timeout=TIMEOUT) as resp:
        metrics = resp.read().decode()
    for code in {c for _, _, _, c in MALFORMED}:
        expected = sum(1 for _, _, _, c in MALFORMED if c == code)
        assert f'gateway_malformed_requests_total{{code="{code}"}} {expected}.0' in metrics, code
    # ... and the gateway serves the next call as before
    assert get(f"http://127.0.0.1:{served.port}/health")[0] == 200


def test_a_bad_chunk_in_the_middle_of_a_body_is_answered_400_and_never_left_hanging(served):
    start = len(served.lines)
    head = (f"POST /.gateway/login HTTP/1.1\r\nHost: {HOST}\r\nContent-Type: application/json\r\n"
            "Transfer-Encoding: chunked\r\nExpect: 100-continue\r\n\r\n").encode()
    with socket.create_connection(("127.0.0.1", served.port), timeout=10) as sock:
        sock.sendall(head)
        interim = b""
        while not interim.endswith(b"\r\n\r\n"):  # "100 Continue": the head is parsed, the handler runs
            interim += sock.recv(1)
        assert interim.startswith(b"HTTP/1.1 100")
        sock.sendall(b"5\r\n[1,2]\r\nzz\r\nxx\r\n0\r\n\r\n")  # the body, whose second chunk size is not hex
        answer = b""
        while chunk := sock.recv(65536):  # a handler left waiting for ever fails here (socket timeout)
            answer += chunk
    status, headers, body = parse_answer(answer)
    assert (status, json.loads(body)["code"]) == (400, "bad_request")
    served.wait_for(r'"status": 400, .*"code": "bad_request"', start=start)
    output = "\n".join(served.lines[start:])
    assert "Traceback" not in output and "Unhandled exception" not in output


def test_no_answer_names_a_product_version_in_server(served):
    answers = {
        "relayed": get(f"http://127.0.0.1:{served.port}/health"),  # the upstream's (aiohttp) answer
        "problem": get(f"http://127.0.0.1:{served.port}/query"),  # 405/401/404 problem answers
        "unknown_host": get(f"http://127.0.0.1:{served.port}/health", host="nobody.example"),
        "own_endpoint": get(f"http://127.0.0.1:{served.port}/.gateway/jwks.json"),
        "admin_health": get(f"http://127.0.0.1:{served.admin}/healthz", host=None),
        "admin_metrics": get(f"http://127.0.0.1:{served.admin}/metrics", host=None),
        "admin_not_found": get(f"http://127.0.0.1:{served.admin}/nothing", host=None),
    }
    assert answers["relayed"][0] == 200 and answers["admin_health"][0] == 200
    malformed = parse_answer(raw_exchange(served.port, b"GARBAGE\r\n\r\n"))[1]
    servers = {name: headers.get("Server") for name, (_, headers) in answers.items()} | {
        "malformed": malformed.get("server")}
    assert servers == {name: SERVER_NAME for name in servers}
    for value in servers.values():
        assert "aiohttp" not in value and "Python/" not in value


def test_a_closed_stdout_never_fails_a_request(chain, plugin, signing_key, tmp_path):
    path, port, admin = write_config(chain, plugin, signing_key, tmp_path)
    proc = subprocess.Popen([sys.executable, "-m", "gateway", "serve", "--config", path], cwd=REPO,
                            stdout=subprocess.PIPE, stderr=subprocess.STDOUT, stdin=subprocess.DEVNULL,
                            env={**os.environ, "GATEWAY_LOG_FORMAT": "json"})
    try:
        assert proc.stdout is not None
        for line in proc.stdout:  # the pipe is read until the gateway listens, then its read end closes
            if b'"event": "listening"' in line:
                break
        else:
            pytest.fail(f"gateway exited ({proc.wait()}) before listening")
        proc.stdout.close()  # as when the terminal of the parent goes away: every write now fails (EPIPE)
        statuses = [get(f"http://127.0.0.1:{port}/health")[0] for _ in range(20)]
        assert statuses == [200] * 20
        malformed = parse_answer(raw_exchange(port, b"GARBAGE\r\n\r\n"))[0]
        assert malformed == 400
        with urllib.request.urlopen(f"http://127.0.0.1:{admin}/metrics", timeout=TIMEOUT) as resp:
            metrics = resp.read().decode()
        errors = next(float(line.split()[-1]) for line in metrics.splitlines()
                      if line.startswith("gateway_log_write_errors_total"))
        assert errors >= 21  # every request's line was dropped and counted, none raised
        proc.send_signal(signal.SIGTERM)
        assert proc.wait(timeout=60) == 0  # and it still stops cleanly (no failed flush at exit)
    finally:
        if proc.poll() is None:
            proc.kill()
            proc.wait()
