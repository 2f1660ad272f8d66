"""The built-in load generator of scripts/bench.py, used when `wrk` is not installed.

    python scripts/bench_client.py --port PORT -c 32 -d 5 [--stream --chunks 200 --gap-ms 0] [--nonce N]

Closed loop like wrk: C keep-alive connections, each sending its next request as soon as the last
answer ended. Requests are the same distinct chats as scripts/bench_wrk.lua sends. Prints one line,
`BENCH_JSON {...}`, in the same shape as the wrk script's. One Python process is far slower than
wrk, so with this client the load generator may be what limits requests/s.
"""

from __future__ import annotations

import argparse
import asyncio
import json
import time
from typing import List, Optional

QUESTION = "Tell me more about benchmarks. " * 5


class Stats:
    def __init__(self) -> None:
        self.latencies: List[float] = []
        self.bytes = 0
        self.errors = {"connect": 0, "read": 0, "write": 0, "status": 0, "timeout": 0}


class LoopClient(asyncio.Protocol):
    """One connection: send, read the whole answer (Content-Length or chunked), repeat."""

    def __init__(
        self, options: argparse.Namespace, number: int, stats: Stats, deadline: float, done: asyncio.Future
    ) -> None:
        self.options = options
        self.number = number
        self.stats = stats
        self.deadline = deadline
        self.done = done
        self.counter = 0
        self.buffer = bytearray()
        self.sent_at = 0.0
        self.transport: Optional[asyncio.Transport] = None

    def connection_made(self, transport: asyncio.BaseTransport) -> None:
        self.transport = transport  # type: ignore[assignment]
        self.send()

    def connection_lost(self, exc: Optional[Exception]) -> None:
        if not self.done.done():
            self.stats.errors["read"] += 1
            self.done.set_result(None)

    def send(self) -> None:
        self.counter += 1
        stream = "true" if self.options.stream else "false"
        body = (
            f'{{"model":"bench-model","stream":{stream},"messages":['
            '{"role":"system","content":"You are a helpful assistant."},'
            f'{{"role":"user","content":"Question {self.options.nonce}-{self.number}-{self.counter}. {QUESTION}"}}]}}'
        ).encode()
        extra = (
            f"X-Bench-Chunks: {self.options.chunks}\r\nX-Bench-Gap-Ms: {self.options.gap_ms}\r\n"
            if self.options.stream
            else ""
        )
        head = (
            f"POST /v1/chat/completions HTTP/1.1\r\nHost: {self.options.host}:{self.options.port}\r\n"
            f"Content-Type: application/json\r\nAuthorization: Bearer sk-bench\r\n{extra}"
            f"Content-Length: {len(body)}\r\n\r\n"
        ).encode()
        self.sent_at = time.perf_counter()
        assert self.transport is not None
        self.transport.write(head + body)

    def data_received(self, data: bytes) -> None:
        self.buffer += data
        end = self.response_end()
        if end is None:
            return
        now = time.perf_counter()
        if not self.buffer.startswith(b"HTTP/1.1 2"):
            self.stats.errors["status"] += 1
        self.stats.latencies.append(now - self.sent_at)
        self.stats.bytes += end
        del self.buffer[:end]
        if now >= self.deadline:
            self.done.set_result(None)
            assert self.transport is not None
            self.transport.close()
        else:
            self.send()

    def response_end(self) -> Optional[int]:
        head_end = self.buffer.find(b"\r\n\r\n")
        if head_end < 0:
            return None
        head = bytes(self.buffer[:head_end]).lower()
        marker = head.find(b"\r\ncontent-length:")
        if marker >= 0:
            length = int(head[marker + 17 :].split(b"\r\n", 1)[0])
            total = head_end + 4 + length
            return total if len(self.buffer) >= total else None
        # Chunked: SSE payloads end in "\n\n", so "\r\n0\r\n\r\n" can only be the last chunk.
        terminator = self.buffer.find(b"\r\n0\r\n\r\n", head_end)
        return terminator + 7 if terminator >= 0 else None


def percentile(sorted_values: List[float], fraction: float) -> float:
    if not sorted_values:
        return 0.0
    return sorted_values[min(len(sorted_values) - 1, int(fraction * len(sorted_values)))]


async def run(options: argparse.Namespace) -> dict:
    loop = asyncio.get_running_loop()
    stats = Stats()
    started = time.perf_counter()
    deadline = started + options.duration
    waits = []
    for number in range(options.connections):
        done = loop.create_future()
        try:
            await loop.create_connection(
                lambda: LoopClient(options, number, stats, deadline, done), options.host, options.port
            )
        except OSError:
            stats.errors["connect"] += 1
            continue
        waits.append(done)
    await asyncio.wait_for(asyncio.gather(*waits), options.duration + 30)
    elapsed = time.perf_counter() - started
    lat = sorted(stats.latencies)
    micro = [round(percentile(lat, f) * 1e6) for f in (0.5, 0.9, 0.99)]
    return {
        "requests": len(lat),
        "duration_us": round(elapsed * 1e6),
        "bytes": stats.bytes,
        "errors": stats.errors,
        "latency_us": {
            "mean": sum(lat) / max(len(lat), 1) * 1e6,
            "p50": micro[0],
            "p90": micro[1],
            "p99": micro[2],
            "max": round(lat[-1] * 1e6) if lat else 0,
        },
    }


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--host", default="127.0.0.1")
    parser.add_argument("--port", type=int, required=True)
    parser.add_argument("-c", "--connections", type=int, default=32)
    parser.add_argument("-d", "--duration", type=float, default=5.0, help="seconds")
    parser.add_argument("--stream", action="store_true")
    parser.add_argument("--chunks", type=int, default=200)
    parser.add_argument("--gap-ms", type=float, default=0.0)
    parser.add_argument("--nonce", default="0")
    result = asyncio.run(run(parser.parse_args()))
    print("BENCH_JSON " + json.dumps(result), flush=True)


if __name__ == "__main__":
    main()
