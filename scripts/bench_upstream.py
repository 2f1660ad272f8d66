"""A canned OpenAI-compatible backend for scripts/bench.py, fast enough never to be the bottleneck.

    python scripts/bench_upstream.py [--port 0] [--reply-chars 600] [--chunks 200] [--gap-ms 0]

Prints `listening PORT` on stdout once the port accepts, then serves until killed. One plain
asyncio `Protocol` writing prepared bytes: no HTTP library, no JSON encoding per request.

- `POST` whose body says `"stream": true` -> an SSE reply (`Transfer-Encoding: chunked`, one HTTP
  chunk per event): `--chunks` content events (`X-Bench-Chunks` overrides per request), each one
  word, `--gap-ms` apart (`X-Bench-Gap-Ms`), then a finish event and `data: [DONE]`. With a gap of 0
  every event still goes out in its own `write`, so the proxy sees them as they would arrive.
- any other request -> a `chat.completion` JSON with `Content-Length` and a reply of `--reply-chars`.
- `GET /_bench/stats` -> `{"connections": N, "requests": N, "streams": N}` counted since start.
"""

from __future__ import annotations

import argparse
import asyncio
import json
import re
from typing import Dict, List, Optional

STATS = {"connections": 0, "requests": 0, "streams": 0}
MODEL = "bench-model"
CREATED = 1_700_000_000
_STREAM = re.compile(rb'"stream"\s*:\s*true')
_CONTENT_LENGTH = re.compile(rb"\r\ncontent-length:\s*(\d+)")
_CHUNKS = re.compile(rb"\r\nx-bench-chunks:\s*(\d+)")
_GAP = re.compile(rb"\r\nx-bench-gap-ms:\s*(\d+(?:\.\d+)?)")
WORDS = "the quick brown fox jumps over a lazy dog while streaming tokens arrive one by one".split()


def reply_text(chars: int) -> str:
    text = ""
    while len(text) < chars:
        text += WORDS[len(text) % len(WORDS)] + " "
    return text[:chars]


def json_response(chars: int) -> bytes:
    body = json.dumps(
        {
            "id": "chatcmpl-bench",
            "object": "chat.completion",
            "created": CREATED,
            "model": MODEL,
            "choices": [
                {"index": 0, "message": {"role": "assistant", "content": reply_text(chars)}, "finish_reason": "stop"}
            ],
            "usage": {"prompt_tokens": 20, "completion_tokens": chars // 4, "total_tokens": 20 + chars // 4},
        },
        separators=(",", ":"),
    ).encode()
    head = f"HTTP/1.1 200 OK\r\nContent-Type: application/json\r\nContent-Length: {len(body)}\r\n\r\n"
    return head.encode() + body


def _http_chunk(payload: bytes) -> bytes:
    return b"%x\r\n%s\r\n" % (len(payload), payload)


def _sse_event(delta: Dict[str, str], finish: Optional[str]) -> bytes:
    chunk = {
        "id": "chatcmpl-bench",
        "object": "chat.completion.chunk",
        "created": CREATED,
        "model": MODEL,
        "choices": [{"index": 0, "delta": delta, "finish_reason": finish}],
    }
    return _http_chunk(b"data: " + json.dumps(chunk, separators=(",", ":")).encode() + b"\n\n")


SSE_HEAD = (
    b"HTTP/1.1 200 OK\r\nContent-Type: text/event-stream\r\nCache-Control: no-cache\r\n"
    b"Transfer-Encoding: chunked\r\n\r\n"
)
SSE_END = _sse_event({}, "stop") + _http_chunk(b"data: [DONE]\n\n") + b"0\r\n\r\n"
STATS_HEAD = b"HTTP/1.1 200 OK\r\nContent-Type: application/json\r\nContent-Length: %d\r\n\r\n"
_events_cache: Dict[int, List[bytes]] = {}


def sse_events(count: int) -> List[bytes]:
    """The content events of a `count`-chunk reply, prepared once per count."""
    events = _events_cache.get(count)
    if events is None:
        events = [
            _sse_event(
                {"role": "assistant", "content": ""} if i == 0 else {"content": WORDS[i % len(WORDS)] + " "}, None
            )
            for i in range(count)
        ]
        _events_cache[count] = events
    return events


class Canned(asyncio.Protocol):
    """Answers each complete request on the connection with prepared bytes (keep-alive)."""

    def __init__(self, options: argparse.Namespace, json_reply: bytes) -> None:
        self.options = options
        self.json_reply = json_reply
        self.buffer = bytearray()
        self.transport: Optional[asyncio.Transport] = None
        self.timer: Optional[asyncio.TimerHandle] = None

    def connection_made(self, transport: asyncio.BaseTransport) -> None:
        self.transport = transport  # type: ignore[assignment]
        STATS["connections"] += 1

    def connection_lost(self, exc: Optional[Exception]) -> None:
        if self.timer is not None:
            self.timer.cancel()
        self.transport = None

    def data_received(self, data: bytes) -> None:
        self.buffer += data
        while self.transport is not None:
            end = self.buffer.find(b"\r\n\r\n")
            if end < 0:
                return
            head = bytes(self.buffer[: end + 2]).lower()
            match = _CONTENT_LENGTH.search(head)
            total = end + 4 + (int(match.group(1)) if match else 0)
            if len(self.buffer) < total:
                return
            body = bytes(self.buffer[end + 4 : total])
            del self.buffer[:total]
            self.answer(head, body)

    def answer(self, head: bytes, body: bytes) -> None:
        STATS["requests"] += 1
        assert self.transport is not None
        if head.startswith(b"get /_bench/stats"):
            payload = json.dumps(STATS).encode()
            self.transport.write(STATS_HEAD % len(payload) + payload)
        elif _STREAM.search(body):
            STATS["streams"] += 1
            chunks = _CHUNKS.search(head)
            gap = _GAP.search(head)
            count = int(chunks.group(1)) if chunks else self.options.chunks
            seconds = (float(gap.group(1)) if gap else self.options.gap_ms) / 1000
            self.transport.write(SSE_HEAD)
            self.stream(sse_events(count), 0, seconds)
        else:
            self.transport.write(self.json_reply)

    def stream(self, events: List[bytes], start: int, gap: float) -> None:
        self.timer = None
        if self.transport is None:
            return
        if self.transport.is_closing():
            return
        if gap <= 0:
            for event in events[start:]:
                self.transport.write(event)  # one write per event: one send() while the socket has room
            self.transport.write(SSE_END)
            return
        if start >= len(events):
            self.transport.write(SSE_END)
            return
        self.transport.write(events[start])
        self.timer = asyncio.get_running_loop().call_later(gap, self.stream, events, start + 1, gap)


async def serve(options: argparse.Namespace) -> None:
    loop = asyncio.get_running_loop()
    json_reply = json_response(options.reply_chars)
    server = await loop.create_server(lambda: Canned(options, json_reply), options.host, options.port, backlog=4096)
    print(f"listening {server.sockets[0].getsockname()[1]}", flush=True)
    await server.serve_forever()


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--host", default="127.0.0.1")
    parser.add_argument("--port", type=int, default=0)
    parser.add_argument("--reply-chars", type=int, default=600, help="length of the non-streaming reply's text")
    parser.add_argument("--chunks", type=int, default=200, help="content events per SSE reply")
    parser.add_argument("--gap-ms", type=float, default=0.0, help="pause between SSE events")
    try:
        asyncio.run(serve(parser.parse_args()))
    except KeyboardInterrupt:
        pass


if __name__ == "__main__":
    main()
