"""Tests of the Song Summarizer example plugin, served on a real loopback port."""

from __future__ import annotations

import asyncio
import os
import socket
import sys
import time
from pathlib import Path

import aiohttp
import pytest
import pytest_asyncio
import yaml
from aiohttp.test_utils import TestServer

ROOT = Path(__file__).resolve().parents[2]
if str(ROOT) not in sys.path:  # so that `pytest` works without `python -m` too
    sys.path.insert(0, str(ROOT))

from examples.song_plugin import create_app  # noqa: E402
from examples.song_plugin.songs import SEED_SONGS  # noqa: E402

TOKEN = "s3cret-upstream-token"
AUTH = {"Authorization": f"Bearer {TOKEN}"}


async def start(app) -> TestServer:
    server = TestServer(app, host="127.0.0.1", port=0)
    await server.start_server()
    return server


@pytest_asyncio.fixture
async def plugin():
    """(base URL, client session) of a plugin whose public URL is derived from Host."""
    server = await start(create_app(TOKEN))
    async with aiohttp.ClientSession() as session:
        yield str(server.make_url("")).rstrip("/"), session
    await server.close()


async def call(session, method, url, body=None, headers=AUTH):
    """(status, decoded JSON body or None, headers) of one request."""
    async with session.request(method, url, json=body, headers=headers) as resp:
        data = await resp.json() if resp.content_type == "application/json" else None
        return resp.status, data, resp.headers


async def post(session, url, body=None, headers=AUTH):
    return await call(session, "POST", url, body, headers)


@pytest.mark.asyncio
async def test_auth_required_and_refused(plugin):
    base, session = plugin
    for headers in ({}, {"Authorization": "Bearer wrong"}, {"Authorization": TOKEN},
                    {"Authorization": f"Basic {TOKEN}"}, {"Authorization": f"Bearer {TOKEN}x"}):
        status, body, answer_headers = await post(session, f"{base}/query", {}, headers)
        assert (status, body) == (401, {"error": "unauthorized"}), headers
        assert answer_headers["WWW-Authenticate"].startswith("Bearer")
    for path in ("/debug/requests", "/stream", "/status/200", "/ws"):
        assert (await call(session, "GET", base + path, headers={}))[0] == 401, path
    lowercase_scheme = {"Authorization": f"bearer {TOKEN}"}
    assert (await post(session, f"{base}/query", {"queries": []}, lowercase_scheme))[0] == 200
    for path in ("/health", "/.well-known/ai-plugin.json", "/.well-known/openapi.yaml",
                 "/logo.png", "/legal"):
        assert (await call(session, "GET", base + path, headers={}))[0] == 200, path
    assert (await call(session, "GET", f"{base}/health", headers={}))[:2] == (200, {"ok": True})
    assert (await call(session, "GET", f"{base}/.well-known/missing.json", headers={}))[0] == 404


@pytest.mark.asyncio
async def test_manifest_uses_configured_public_url():
    server = await start(create_app(TOKEN, public_url="https://songs.example.com/"))
    try:
        async with aiohttp.ClientSession() as session:
            async with session.get(server.make_url("/.well-known/ai-plugin.json")) as resp:
                manifest = await resp.json()
    finally:
        await server.close()
    assert {key: manifest[key] for key in ("schema_version", "name_for_human", "name_for_model",
                                           "api", "logo_url", "legal_info_url")} == {
        "schema_version": "v1", "name_for_human": "Song Summarizer",
        "name_for_model": "song_summarizer", "logo_url": "https://songs.example.com/logo.png",
        "api": {"type": "openapi", "url": "https://songs.example.com/.well-known/openapi.yaml"},
        "legal_info_url": "https://songs.example.com/legal"}
    auth = manifest["auth"]
    assert (auth["type"], auth["authorization_type"]) == ("service_http", "bearer")
    assert auth["verification_tokens"]["openai"] and "@" in manifest["contact_email"]
    assert manifest["description_for_human"] and manifest["description_for_model"]


@pytest.mark.asyncio
async def test_manifest_and_openapi_default_to_request_host(plugin):
    base, session = plugin
    async with session.get(f"{base}/.well-known/ai-plugin.json") as resp:
        manifest = await resp.json()
    assert manifest["api"]["url"] == f"{base}/.well-known/openapi.yaml"
    async with session.get(manifest["api"]["url"]) as resp:
        assert resp.content_type == "application/yaml"
        doc = yaml.safe_load(await resp.text())
    assert doc["openapi"].startswith("3.0")
    assert doc["servers"] == [{"url": base}]
    operations = {(method.upper(), path): op["operationId"]
                  for path, item in doc["paths"].items() for method, op in item.items()}
    assert operations == {
        ("POST", "/query"): "querySongs", ("POST", "/ask"): "askAboutSong",
        ("POST", "/summarize/{song_id}"): "summarizeSong", ("POST", "/upsert"): "upsertSongs",
        ("DELETE", "/delete"): "deleteSongs", ("GET", "/stream"): "streamLyrics"}
    summarize = doc["paths"]["/summarize/{song_id}"]["post"]["responses"]["200"]
    assert "X-Credits-Consumed" in summarize["headers"]
    assert doc["components"]["securitySchemes"]["bearerAuth"]["scheme"] == "bearer"


@pytest.mark.asyncio
async def test_query_is_deterministic_and_names_the_subscriber(plugin):
    base, session = plugin
    body = {"queries": [{"query": "blue moon highway"}, {"query": "zebra"},
                        {"query": "river", "top_k": 1}]}
    headers = {**AUTH, "X-Gateway-Subscriber": "0xabc"}
    status, answer, _ = await post(session, f"{base}/query", body, headers)
    assert status == 200 and answer == (await post(session, f"{base}/query", body, headers))[1]
    assert answer["subscriber"] == "0xabc"
    blue, zebra, river = answer["results"]
    assert blue["query"] == "blue moon highway"
    assert [(hit["id"], hit["score"]) for hit in blue["results"]] == [
        ("blue-highway", 2), ("paper-moon-diner", 1)]
    assert blue["results"][0]["snippet"] == "The sun comes up on the blue highway."
    assert zebra["results"] == []
    assert [hit["id"] for hit in river["results"]] == ["river-of-lights"]
    _, without, _ = await post(session, f"{base}/query", {"queries": []})
    assert without["subscriber"] is None
    for bad in ({"queries": "x"}, {"queries": [{"q": 1}]}, [1, 2]):
        assert (await post(session, f"{base}/query", bad))[0] == 400
    async with session.post(f"{base}/query", data=b"{not json", headers=AUTH) as resp:
        assert (resp.status, await resp.json()) == (400, {"error": "body must be JSON"})


@pytest.mark.asyncio
async def test_ask_is_deterministic(plugin):
    base, session = plugin
    question = {"question": "Who ordered the pie at the diner?"}
    headers = {**AUTH, "X-Gateway-Subscriber": "0xdef"}
    status, answer, _ = await post(session, f"{base}/ask", question, headers)
    assert status == 200 and answer == (await post(session, f"{base}/ask", question, headers))[1]
    assert answer["song_id"] == "paper-moon-diner" and answer["subscriber"] == "0xdef"
    assert answer["matched_words"] == ["diner", "ordered", "pie"]
    summary = answer["summary"]
    assert (summary["first_sentence"], summary["word_count"], summary["top_words"][:3]) == (
        "We met at the paper moon diner at midnight.", 30, ["moon", "ordered", "paper"])
    assert answer["answer"].startswith('"Paper Moon Diner" by Rosa Vale')

    chosen = (await post(session, f"{base}/ask",
                         {"question": "Happy?", "song_id": "river-of-lights"}))[1]
    assert (chosen["song_id"], chosen["matched_words"]) == ("river-of-lights", [])
    assert (await post(session, f"{base}/ask", {"question": "x", "song_id": "nope"}))[0] == 404
    assert (await post(session, f"{base}/ask", {"question": "zebra quartz"}))[0] == 404
    assert (await post(session, f"{base}/ask", {"question": ""}))[0] == 400


@pytest.mark.asyncio
async def test_summarize_reports_its_dynamic_price(plugin):
    base, session = plugin
    for song in SEED_SONGS:
        status, summary, headers = await post(session, f"{base}/summarize/{song['id']}")
        assert status == 200 and summary["song_id"] == song["id"]
        assert headers["X-Credits-Consumed"] == str(1 + summary["word_count"] // 50) == "1"
    status, body, headers = await post(session, f"{base}/summarize/missing")
    assert (status, body) == (404, {"error": "unknown song: missing"})
    assert "X-Credits-Consumed" not in headers


@pytest.mark.asyncio
async def test_upsert_then_delete(plugin):
    base, session = plugin
    lyrics = "\n".join(["Quartz lanterns glow in the quiet harbour tonight."] * 15)  # 120 words
    documents = [{"id": "quartz", "title": "Quartz Harbour", "artist": "Band", "lyrics": lyrics},
                 {"title": "No Id Given", "lyrics": "Short and sweet."}]
    status, body, _ = await post(session, f"{base}/upsert", {"documents": documents})
    assert (status, body["ids"]) == (200, ["quartz", "no-id-given"])
    _, found, _ = await post(session, f"{base}/query", {"queries": [{"query": "quartz harbour"}]})
    assert found["results"][0]["results"][0]["id"] == "quartz"
    status, summary, headers = await post(session, f"{base}/summarize/quartz")
    assert summary["word_count"] == 120 and headers["X-Credits-Consumed"] == "3"

    status, body, _ = await call(session, "DELETE", f"{base}/delete",
                                 {"ids": ["quartz", "no-id-given", "x"]})
    assert (status, body["deleted"]) == (200, 2)
    _, body, _ = await call(session, "DELETE", f"{base}/delete", {"ids": ["quartz"]})
    assert body["deleted"] == 0
    assert (await post(session, f"{base}/summarize/quartz"))[0] == 404
    assert (await post(session, f"{base}/upsert", {"documents": [{"id": "x"}]}))[0] == 400


@pytest.mark.asyncio
async def test_sse_events_arrive_in_order_and_spaced(plugin):
    base, session = plugin
    events, arrivals = [], []
    async with session.get(f"{base}/stream?count=4&interval_ms=80", headers=AUTH) as resp:
        assert resp.status == 200 and resp.content_type == "text/event-stream"
        event: dict[str, str] = {}
        async for raw in resp.content:
            line = raw.decode().rstrip("\n")
            if line:
                field, _, value = line.partition(": ")
                event[field] = value
            elif event:
                events.append(event)
                arrivals.append(time.monotonic())
                event = {}
    assert [e.get("id") for e in events] == ["0", "1", "2", "3", None]
    assert [e["event"] for e in events] == ["line"] * 4 + ["done"]
    assert events[0]["data"] == '{"index": 0, "line": "The sun comes up on the blue highway."}'
    assert events[-1]["data"] == '{"count": 4}'
    assert arrivals[3] - arrivals[0] >= 0.2  # written one by one, not buffered to the end
    async with session.get(f"{base}/stream", headers=AUTH) as resp:  # defaults: 3 events
        assert (await resp.text()).count("event: line") == 3
    assert (await call(session, "GET", f"{base}/stream?count=-1"))[0] == 400


@pytest.mark.asyncio
async def test_websocket_echo(plugin):
    base, session = plugin
    async with session.ws_connect(f"{base}/ws", headers=AUTH) as ws:
        await ws.send_str("hello")
        assert (await ws.receive(timeout=5)).data == "echo: hello"
        await ws.send_bytes(b"\x00\x01binary")
        message = await ws.receive(timeout=5)
        assert (message.type, message.data) == (aiohttp.WSMsgType.BINARY, b"\x00\x01binary")
        await ws.close()
    assert ws.closed and ws.close_code == aiohttp.WSCloseCode.OK


@pytest.mark.asyncio
async def test_debug_requests_records_headers_as_received(plugin):
    base, session = plugin
    assert (await call(session, "DELETE", f"{base}/debug/requests"))[0] == 200
    headers = [("Authorization", f"Bearer {TOKEN}"), ("X-Gateway-Subscriber", "0xabc"),
               ("X-Multi", "one"), ("X-Multi", "two")]
    assert (await call(session, "GET", f"{base}/status/200?a=1&a=2&b=3", None, headers))[0] == 200
    await call(session, "GET", f"{base}/health", headers={})
    recorded = (await call(session, "GET", f"{base}/debug/requests"))[1]
    assert [(r["method"], r["path"]) for r in recorded] == [("GET", "/status/200"),
                                                           ("GET", "/health")]
    assert recorded[0]["query"] == {"a": ["1", "2"], "b": "3"}
    assert {name: value for name, value in recorded[0]["headers"].items()
            if name in ("Authorization", "X-Gateway-Subscriber", "X-Multi")} == {
        "Authorization": f"Bearer {TOKEN}", "X-Gateway-Subscriber": "0xabc",
        "X-Multi": ["one", "two"]}
    assert "Authorization" not in recorded[1]["headers"]
    await call(session, "DELETE", f"{base}/debug/requests")
    assert (await call(session, "GET", f"{base}/debug/requests"))[1] == []


@pytest.mark.asyncio
async def test_status_passthrough(plugin):
    base, session = plugin
    for code in (201, 404, 418, 500, 503):
        assert (await call(session, "GET", f"{base}/status/{code}"))[:2] == (code, {"status": code})
    async with session.get(f"{base}/status/204", headers=AUTH) as resp:
        assert resp.status == 204 and await resp.read() == b""
    for bad in ("99", "600", "abc"):
        assert (await call(session, "GET", f"{base}/status/{bad}"))[0] == 400, bad


@pytest.mark.asyncio
async def test_cli_serves_until_terminated():
    with socket.socket() as sock:  # a free port
        sock.bind(("127.0.0.1", 0))
        port = sock.getsockname()[1]
    env = {**os.environ, "SONG_PLUGIN_TOKEN": TOKEN}
    proc = await asyncio.create_subprocess_exec(
        sys.executable, "-m", "examples.song_plugin", "--host", "127.0.0.1", "--port", str(port),
        cwd=ROOT, env=env, stdout=asyncio.subprocess.PIPE, stderr=asyncio.subprocess.PIPE)
    try:
        line = await asyncio.wait_for(proc.stdout.readline(), timeout=20)
        assert line.decode().strip() == f"song-plugin listening on http://127.0.0.1:{port}"
        async with aiohttp.ClientSession() as session:
            async with session.get(f"http://127.0.0.1:{port}/health") as resp:
                assert (resp.status, await resp.json()) == (200, {"ok": True})
            async with session.post(f"http://127.0.0.1:{port}/summarize/blue-highway",
                                    headers=AUTH) as resp:
                assert resp.status == 200  # the token came from $SONG_PLUGIN_TOKEN
    finally:
        if proc.returncode is None:
            proc.terminate()
        returncode = await asyncio.wait_for(proc.wait(), timeout=10)
    assert returncode == 0, (await proc.stderr.read()).decode()
