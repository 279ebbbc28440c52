"""The plugin's song API: search, questions, summaries (with a dynamic price), catalogue edits
and a server-sent-event stream of lyric lines.
"""

from __future__ import annotations

import asyncio
import json

from aiohttp import web

from .songs import credits_for, keywords, search, summarize, words

SONGS = web.AppKey("songs", dict)


def error(status: int, message: str) -> web.Response:
    return web.json_response({"error": message}, status=status)


class BadRequest(Exception):
    """Raised by handlers for a malformed request; answered 400 by the middleware."""


async def read_json(request: web.Request) -> dict:
    try:
        body = await request.json()
    except (ValueError, UnicodeDecodeError):
        raise BadRequest("body must be JSON") from None
    if not isinstance(body, dict):
        raise BadRequest("body must be a JSON object")
    return body


def int_param(request: web.Request, name: str, default: int, maximum: int) -> int:
    raw = request.query.get(name, str(default))
    if not (raw.isascii() and raw.isdigit()) or int(raw) > maximum:
        raise BadRequest(f"{name} must be an integer between 0 and {maximum}")
    return int(raw)


def with_subscriber(request: web.Request, body: dict) -> dict:
    body["subscriber"] = request.headers.get("X-Gateway-Subscriber")
    return body


def find_song(request: web.Request, song_id: str) -> dict:
    song = request.app[SONGS].get(song_id)
    if song is None:
        raise web.HTTPNotFound(text=json.dumps({"error": f"unknown song: {song_id}"}),
                               content_type="application/json")
    return song


async def query(request: web.Request) -> web.Response:
    queries = (await read_json(request)).get("queries")
    if not isinstance(queries, list) or not all(
            isinstance(q, dict) and isinstance(q.get("query"), str)
            and isinstance(q.get("top_k", 3), int) for q in queries):
        raise BadRequest('queries must be a list of {"query": "...", "top_k": n}')
    results = [{"query": q["query"],
                "results": search(request.app[SONGS], q["query"], max(q.get("top_k", 3), 0))}
               for q in queries]
    return web.json_response(with_subscriber(request, {"results": results}))


async def ask(request: web.Request) -> web.Response:
    body = await read_json(request)
    question = body.get("question")
    if not isinstance(question, str) or not question.strip():
        raise BadRequest("question must be a non-empty string")
    song_id = body.get("song_id")
    if song_id is None:
        best = search(request.app[SONGS], question, 1)
        if not best:
            return error(404, "no song matches the question")
        song_id = best[0]["id"]
    song = find_song(request, str(song_id))
    summary = summarize(song)
    matched = sorted(keywords(question) & keywords(song["lyrics"]))
    answer = summary["summary"] + (
        f" Words of the question found in the lyrics: {', '.join(matched)}." if matched
        else " None of the question's words appear in the lyrics.")
    return web.json_response(with_subscriber(request, {
        "question": question, "song_id": song["id"], "answer": answer,
        "matched_words": matched, "summary": summary}))


async def summarize_song(request: web.Request) -> web.Response:
    song = find_song(request, request.match_info["song_id"])
    return web.json_response(with_subscriber(request, summarize(song)),
                             headers={"X-Credits-Consumed": str(credits_for(song))})


async def upsert(request: web.Request) -> web.Response:
    documents = (await read_json(request)).get("documents")
    if not isinstance(documents, list) or not all(
            isinstance(d, dict) and isinstance(d.get("title"), str)
            and isinstance(d.get("lyrics"), str) for d in documents):
        raise BadRequest('documents must be a list of {"id", "title", "artist", "lyrics"}')
    songs = request.app[SONGS]
    ids = []
    for doc in documents:
        song_id = str(doc.get("id") or "-".join(words(doc["title"])) or f"song-{len(songs) + 1}")
        songs[song_id] = {"id": song_id, "title": doc["title"],
                          "artist": str(doc.get("artist", "Unknown")), "lyrics": doc["lyrics"]}
        ids.append(song_id)
    return web.json_response(with_subscriber(request, {"ids": ids}))


async def delete(request: web.Request) -> web.Response:
    ids = (await read_json(request)).get("ids")
    if not isinstance(ids, list):
        raise BadRequest("ids must be a list")
    songs = request.app[SONGS]
    deleted = sum(songs.pop(str(i), None) is not None for i in ids)
    return web.json_response(with_subscriber(request, {"deleted": deleted}))


async def stream(request: web.Request) -> web.StreamResponse:
    count = int_param(request, "count", 3, 1000)
    interval = int_param(request, "interval_ms", 50, 10_000) / 1000
    lines = [ln for song in request.app[SONGS].values() for ln in song["lyrics"].splitlines()]
    resp = web.StreamResponse(headers={"Content-Type": "text/event-stream",
                                       "Cache-Control": "no-cache"})
    await resp.prepare(request)
    try:
        for i in range(count):
            if i:
                await asyncio.sleep(interval)
            data = json.dumps({"index": i, "line": lines[i % len(lines)] if lines else ""})
            await resp.write(f"id: {i}\nevent: line\ndata: {data}\n\n".encode())
        await resp.write(f"event: done\ndata: {json.dumps({'count': count})}\n\n".encode())
        await resp.write_eof()
    except ConnectionError:  # the client went away mid-stream
        pass
    return resp
