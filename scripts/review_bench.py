"""Speed check of the review page (not a timed test): a 20,000-conversation session, `chatproxy review`
started on it, then the time to the first page of the list and to a few searches, printed.

    python scripts/review_bench.py [--conversations 20000]
"""

from __future__ import annotations

import argparse
import http.client
import json
import os
import random
import subprocess
import sys
import tempfile
import time
from pathlib import Path
from typing import Any, Tuple

REPO = Path(__file__).resolve().parent.parent
WORDS = "rain window model token prompt answer python table river cloud budget summary error retry stream".split()


def make_session(folder: Path, count: int) -> Path:
    """`count` two- to six-turn chats over a week, a tenth with tools, written as the recorder writes them."""
    rng = random.Random(0)
    folder.mkdir(parents=True, exist_ok=True)
    path = folder / "big.jsonl"
    with open(path, "wb") as out:
        for n in range(count):
            messages = []
            for turn in range(rng.randint(1, 3)):
                words = " ".join(rng.choice(WORDS) for _ in range(rng.randint(5, 60)))
                messages.append({"role": "user", "content": f"question {n}.{turn}: {words}"})
                messages.append({"role": "assistant", "content": f"answer {n}.{turn}: {words[::-1]}"})
            when = f"2026-05-{1 + n * 7 // count:02d}T{n % 24:02d}:{n % 60:02d}:00.000Z"
            meta = {
                "time": when,
                "model": rng.choice(["gpt-4o", "llama-3", "claude-sonnet-4"]),
                "endpoint": "/v1/chat/completions",
                "complete": True,
                "tags": [],
                "usage": {"total_tokens": rng.randint(20, 2000)},
            }
            rid = f"{n:016x}"
            record = {"v": 1, "id": rid, "parent": None, "base": 0, "messages": messages, "meta": meta}
            out.write(json.dumps(record).encode() + b"\n")
    return path


def get(port: int, path: str) -> Tuple[int, Any]:
    conn = http.client.HTTPConnection("127.0.0.1", port, timeout=60)
    conn.request("GET", "/_chatproxy/review/" + path)
    reply = conn.getresponse()
    body = reply.read()
    conn.close()
    return reply.status, json.loads(body) if reply.status == 200 and path.startswith("api/") else body


def timed(port: int, path: str) -> Tuple[float, Any]:
    start = time.perf_counter()
    status, body = get(port, path)
    assert status == 200, (status, body)
    return time.perf_counter() - start, body


def main() -> int:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--conversations", type=int, default=20000)
    args = parser.parse_args()
    with tempfile.TemporaryDirectory() as tmp:
        folder = Path(tmp) / "datasets"
        started = time.perf_counter()
        journal = make_session(folder, args.conversations)
        print(
            f"session: {args.conversations} conversations, {journal.stat().st_size / 1e6:.1f} MB "
            f"(written in {time.perf_counter() - started:.1f} s)"
        )
        env = dict(os.environ, PYTHONPATH=str(REPO))
        command = [sys.executable, "-m", "chatproxy", "review", "big", "--datasets", str(folder), "--port", "0"]
        started = time.perf_counter()
        proc = subprocess.Popen(command, stdout=subprocess.PIPE, text=True, env=env)
        try:
            assert proc.stdout is not None
            line = proc.stdout.readline()
            listening = time.perf_counter() - started
            port = int(line.rsplit(":", 1)[1].split("/", 1)[0])
            get(port, "")  # the page's HTML
            _, first = timed(port, "api/list")
            first_page = time.perf_counter() - started
            assert first["total"] == args.conversations, first["total"]
            print(f"listening after        {listening * 1000:7.0f} ms")
            print(f"first page after start {first_page * 1000:7.0f} ms  (HTML + api/list, {first['total']} rows)")
            for query in ("q=drizzle", "q=budget+summary", "q=question+17.1", "model=llama*&q=river", "page=40"):
                best = min(timed(port, "api/list?" + query)[0] for _ in range(5))
                hits = timed(port, "api/list?" + query)[1]["total"]
                print(f"api/list?{query:<22} {best * 1000:7.1f} ms  (best of 5, {hits} matches)")
            spent, _ = timed(port, "api/stats")
            print(f"api/stats (dashboard)   {spent * 1000:7.1f} ms  (first: hashes every chat for duplicates)")
            spent, _ = timed(port, "api/stats")
            print(f"api/stats again         {spent * 1000:7.1f} ms")
            spent, preview = timed(port, "api/export?profile=messages")
            print(f"api/export (count)      {spent * 1000:7.1f} ms  ({preview['records']} records)")
        finally:
            proc.terminate()
            proc.wait(10)
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
