"""The song catalogue and its deterministic text "intelligence": search and summaries.

All lyrics are fictional and were written for this example.
"""

from __future__ import annotations

import collections
import re

SEED_SONGS = [
    {"id": "blue-highway", "title": "Blue Highway Morning", "artist": "The Lantern Keys",
     "lyrics": "The sun comes up on the blue highway.\n"
               "I drive with the windows down and the radio low.\n"
               "Every mile is a story the old road tells.\n"
               "Blue highway morning, carry me home."},
    {"id": "paper-moon-diner", "title": "Paper Moon Diner", "artist": "Rosa Vale",
     "lyrics": "We met at the paper moon diner at midnight.\n"
               "You ordered pie and I ordered the rain.\n"
               "The jukebox played a song about leaving.\n"
               "Paper moon, stay awake with me."},
    {"id": "river-of-lights", "title": "River of Lights", "artist": "Ortega and the Night Shift",
     "lyrics": "The city is a river of lights tonight.\n"
               "We float on the sound of a thousand cars.\n"
               "Hold my hand across the crowded bridge.\n"
               "River of lights, never let me go."},
]
STOPWORDS = frozenset("a about across and at i is it me my of on the to we with you".split())


def words(text: str) -> list[str]:
    return re.findall(r"[a-z0-9']+", text.lower())


def keywords(text: str) -> set[str]:
    return {w for w in words(text) if w not in STOPWORDS}


def credits_for(song: dict) -> int:
    """Dynamic price of /summarize: 1 + one credit per full 50 words of lyrics."""
    return 1 + len(words(song["lyrics"])) // 50


def summarize(song: dict) -> dict:
    """First sentence, word count and the five most frequent keywords (ties: alphabetical)."""
    lyric_words = words(song["lyrics"])
    first = re.split(r"(?<=[.!?])\s+", song["lyrics"].strip(), maxsplit=1)[0]
    counts = collections.Counter(w for w in lyric_words if w not in STOPWORDS)
    top = [w for w, _ in sorted(counts.items(), key=lambda kv: (-kv[1], kv[0]))[:5]]
    return {
        "song_id": song["id"], "title": song["title"], "artist": song["artist"],
        "first_sentence": first, "word_count": len(lyric_words), "top_words": top,
        "summary": f'"{song["title"]}" by {song["artist"]} opens with "{first}" '
                   f"It has {len(lyric_words)} words; the most frequent are {', '.join(top)}.",
    }


def search(songs: dict, query: str, top_k: int = 3) -> list[dict]:
    """Word-overlap search: score = distinct query keywords found in title, artist or lyrics."""
    wanted = keywords(query)
    hits = []
    for song in songs.values():
        score = len(wanted & keywords(f"{song['title']} {song['artist']} {song['lyrics']}"))
        if score:
            lines = song["lyrics"].splitlines() or [""]
            snippet = next((ln for ln in lines if wanted & keywords(ln)), lines[0])
            hits.append({"id": song["id"], "title": song["title"], "artist": song["artist"],
                         "score": score, "snippet": snippet})
    hits.sort(key=lambda h: (-h["score"], h["id"]))
    return hits[:top_k]
