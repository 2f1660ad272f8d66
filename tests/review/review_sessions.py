"""Sessions written as journal lines, the way the recorder writes them, for the review tests.

A helper module, not a conftest: tests/conftest.py is imported by name as `conftest` by other tests."""

from __future__ import annotations

import base64
import hashlib
import json
from pathlib import Path
from typing import Any, Dict, List, Optional

PNG = base64.b64decode(
    "iVBORw0KGgoAAAANSUhEUgAAAAEAAAABCAYAAAAfFcSJAAAADUlEQVR42mNk+M9QDwADhgGAWjR9awAAAABJRU5ErkJggg=="
)
HOSTILE = (
    '<script>window.__pwned = 1</script> <img src=x onerror="window.__pwned = 2"> '
    '<a href="javascript:window.__pwned = 3">click me</a> [link](javascript:window.__pwned=4)'
)


def record(
    rid: str,
    messages: List[Dict[str, Any]],
    time: str,
    parent: Optional[str] = None,
    base: int = 0,
    model: str = "gpt-4o",
    **meta: Any,
) -> Dict[str, Any]:
    info = {"time": time, "model": model, "endpoint": "/v1/chat/completions", "complete": True, "tags": []}
    info.update(meta)
    return {"v": 1, "id": rid, "parent": parent, "base": base, "messages": messages, "meta": info}


def user(text: str, **extra: Any) -> Dict[str, Any]:
    return {"role": "user", "content": text, **extra}


def bot(text: str, **extra: Any) -> Dict[str, Any]:
    return {"role": "assistant", "content": text, **extra}


def write_session(folder: Path, name: str, records: List[Dict[str, Any]]) -> Path:
    folder.mkdir(parents=True, exist_ok=True)
    path = folder / f"{name}.jsonl"
    path.write_bytes(b"".join(json.dumps(r).encode() + b"\n" for r in records))
    return path


def week_records(session: str) -> List[Dict[str, Any]]:
    image = f"{session}/images/{hashlib.sha256(PNG).hexdigest()}.png"
    return [
        record(
            "a000000000000001",
            [{"role": "system", "content": "You are terse."}, user("hello there"), bot("Hi.")],
            "2026-05-01T10:00:00.000Z",
        ),
        record(
            "a000000000000002",
            [user("write a haiku about rain"), bot("Rain on the window")],
            "2026-05-01T11:00:00.000Z",
            model="llama-3",
        ),
        # A regenerated reply: a branch of the haiku chat.
        record("a000000000000003", [bot("Grey sky, soft drumming")], "2026-05-01T11:01:00.000Z", "a000000000000002", 1),
        record(
            "a000000000000004",
            [user("what is in this picture?\n<image>", images=[image]), bot("A single pixel.", reasoning="tiny")],
            "2026-05-02T09:00:00.000Z",
            tags=["vision"],
        ),
        record("a000000000000005", [user(HOSTILE), bot("<b>not bold</b> " + HOSTILE)], "2026-05-02T10:00:00.000Z"),
    ]


def make_week(tmp_path: Path) -> Path:
    """A datasets folder with session `week`: five records, four chats (one with two branches), an image."""
    folder = tmp_path / "datasets"
    write_session(folder, "week", week_records("week"))
    images = folder / "week" / "images"
    images.mkdir(parents=True)
    (images / f"{hashlib.sha256(PNG).hexdigest()}.png").write_bytes(PNG)
    return folder
