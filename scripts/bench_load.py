"""The clients of scripts/bench.py: closed-loop load (wrk, else bench_client.py), time to first byte,
many slow streams held open at once, and one long chat."""

from __future__ import annotations

import asyncio
import http.client
import json
import shutil
import socket
import subprocess
import sys
import time
from typing import Any, Callable, Dict, List, Tuple

from bench_procs import SCRIPTS

WRK = shutil.which("wrk")
_nonce = 0


def next_nonce() -> str:
    """Distinct per load run, so no two runs against one proxy send the same chat."""
    global _nonce
    _nonce += 1
    return f"{time.time_ns() % 10**9:x}{_nonce}"


def run_load(
    port: int, connections: int, seconds: int, stream: bool = False, chunks: int = 200, gap_ms: float = 0
) -> Dict[str, Any]:
    """Closed loop for `seconds`: counts, errors, latency in microseconds, and requests/s."""
    mode = "stream" if stream else "json"
    if WRK:
        threads = 1 if connections < 8 else 2
        cmd = [
            WRK,
            f"-t{threads}",
            f"-c{connections}",
            f"-d{seconds}s",
            "--timeout",
            "30s",
            "-s",
            str(SCRIPTS / "bench_wrk.lua"),
            f"http://127.0.0.1:{port}",
            "--",
            mode,
            next_nonce(),
            str(chunks),
            str(gap_ms),
        ]
    else:
        cmd = [
            sys.executable,
            str(SCRIPTS / "bench_client.py"),
            "--port",
            str(port),
            "-c",
            str(connections),
            "-d",
            str(seconds),
            "--nonce",
            next_nonce(),
            "--chunks",
            str(chunks),
            "--gap-ms",
            str(gap_ms),
        ]
        cmd += ["--stream"] if stream else []
    done = subprocess.run(cmd, capture_output=True, text=True, timeout=seconds + 120)
    line = next((text for text in done.stdout.splitlines() if text.startswith("BENCH_JSON ")), None)
    if line is None:
        raise RuntimeError(f"load generator failed ({done.returncode}): {done.stdout[-2000:]} {done.stderr[-2000:]}")
    result = json.loads(line[len("BENCH_JSON ") :])
    result["rps"] = result["requests"] / (result["duration_us"] / 1e6)
    result["error_count"] = sum(result["errors"].values())
    return result


def chat_request(port: int, messages: List[Dict[str, str]], stream: bool = False, extra: str = "") -> bytes:
    body = json.dumps({"model": "bench-model", "stream": stream, "messages": messages}).encode()
    head = (
        f"POST /v1/chat/completions HTTP/1.1\r\nHost: 127.0.0.1:{port}\r\nContent-Type: application/json\r\n"
        f"Authorization: Bearer sk-bench\r\n{extra}Content-Length: {len(body)}\r\n\r\n"
    )
    return head.encode() + body


def question(tag: str) -> List[Dict[str, str]]:
    return [{"role": "user", "content": f"Question {tag}: how long does a proxy take?"}]


def _read_response(sock: socket.socket, stream: bool, sent: float) -> float:
    """Read one whole response; the time its first body byte (JSON) or first `data:` (SSE) arrived."""
    buffer, first = b"", 0.0
    while True:
        data = sock.recv(65536)
        if not data:
            raise RuntimeError("connection closed in the middle of a response")
        buffer += data
        if not first and (b"data:" in buffer if stream else b"\r\n\r\n{" in buffer):
            first = time.perf_counter()
        if stream and buffer.endswith(b"\r\n0\r\n\r\n"):
            return first - sent
        head_end = buffer.find(b"\r\n\r\n")
        if not stream and head_end >= 0:
            length = int(buffer.lower().split(b"content-length:", 1)[1].split(b"\r\n", 1)[0])
            if len(buffer) >= head_end + 4 + length:
                return first - sent


def timed_requests(port: int, samples: int, stream: bool, warmup: int = 100) -> Dict[str, List[float]]:
    """One keep-alive connection, one request at a time, every sample kept (no correction applied).

    "total": seconds from sending to the whole response; "first": to the first body byte, or for a
    stream the first `data:` byte. Streams are 5 events sent without pauses.
    """
    nonce = next_nonce()
    sock = socket.create_connection(("127.0.0.1", port))
    sock.setsockopt(socket.IPPROTO_TCP, socket.TCP_NODELAY, 1)
    extra = "X-Bench-Chunks: 5\r\nX-Bench-Gap-Ms: 0\r\n" if stream else ""
    times: Dict[str, List[float]] = {"first": [], "total": []}
    try:
        for number in range(warmup + samples):
            request = chat_request(port, question(f"timed-{nonce}-{number}"), stream=stream, extra=extra)
            sent = time.perf_counter()
            sock.sendall(request)
            first = _read_response(sock, stream, sent)
            if number >= warmup:
                times["first"].append(first)
                times["total"].append(time.perf_counter() - sent)
    finally:
        sock.close()
    return times


async def _one_stream(
    port: int, tag: str, chunks: int, gap_ms: float, gate: asyncio.Semaphore, live: Dict[str, int]
) -> None:
    async with gate:  # connects in flight are limited, as a frontend's users arrive over time
        reader, writer = await asyncio.open_connection("127.0.0.1", port)
        writer.write(
            chat_request(
                port, question(tag), stream=True, extra=f"X-Bench-Chunks: {chunks}\r\nX-Bench-Gap-Ms: {gap_ms}\r\n"
            )
        )
        head = await reader.readuntil(b"\r\n\r\n")
    if not head.startswith(b"HTTP/1.1 200"):
        raise RuntimeError(head.split(b"\r\n", 1)[0].decode())
    live["now"] += 1
    live["peak"] = max(live["peak"], live["now"])
    try:
        await reader.readuntil(b"\r\n0\r\n\r\n")
    finally:
        live["now"] -= 1
        writer.close()


async def _hold(port: int, count: int, chunks: int, gap_ms: float, sample: Callable[[], None]) -> Dict[str, Any]:
    nonce, gate, live = next_nonce(), asyncio.Semaphore(100), {"now": 0, "peak": 0}
    tasks = [
        asyncio.ensure_future(_one_stream(port, f"slow-{nonce}-{i}", chunks, gap_ms, gate, live)) for i in range(count)
    ]
    while not all(t.done() for t in tasks):
        sample()
        await asyncio.sleep(0.2)
    failures = [t.exception() for t in tasks if t.exception() is not None]
    return {
        "streams": count,
        "peak_concurrent": live["peak"],
        "failed": len(failures),
        "first_failure": repr(failures[0]) if failures else None,
    }


def hold_streams(port: int, count: int, chunks: int, gap_ms: float, sample: Callable[[], None]) -> Dict[str, Any]:
    """`count` streams open at once, `chunks` events `gap_ms` apart; `sample()` runs every 0.2 s meanwhile."""
    return asyncio.run(_hold(port, count, chunks, gap_ms, sample))


def long_chat(port: int, turns: int) -> Tuple[List[Dict[str, str]], List[float]]:
    """One chat of `turns` exchanges, each request carrying the whole history; messages and seconds per turn."""
    connection = http.client.HTTPConnection("127.0.0.1", port, timeout=60)
    messages: List[Dict[str, str]] = [{"role": "system", "content": "You are a helpful assistant."}]
    seconds: List[float] = []
    nonce = next_nonce()
    for turn in range(turns):
        messages.append(
            {
                "role": "user",
                "content": f"Turn {turn} of chat {nonce}: " + "please go on with the story, and add detail. " * 3,
            }
        )
        body = json.dumps({"model": "bench-model", "messages": messages})
        started = time.perf_counter()
        connection.request("POST", "/v1/chat/completions", body, {"Content-Type": "application/json"})
        answer = connection.getresponse()
        reply = json.loads(answer.read())
        seconds.append(time.perf_counter() - started)
        if answer.status != 200:
            raise RuntimeError(f"turn {turn}: HTTP {answer.status}")
        messages.append(reply["choices"][0]["message"])
    connection.close()
    return messages, seconds


def median(values: List[float]) -> float:
    ordered = sorted(values)
    if not ordered:
        raise ValueError("median of no values")
    middle = len(ordered) // 2
    return ordered[middle] if len(ordered) % 2 else (ordered[middle - 1] + ordered[middle]) / 2


def percentile(values: List[float], fraction: float) -> float:
    ordered = sorted(values)
    return ordered[min(len(ordered) - 1, int(fraction * len(ordered)))]
