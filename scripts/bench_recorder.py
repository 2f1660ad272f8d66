"""The recorder's CPU time per exchange, replayed in this process: no relay, no pipe, no other process.

    python scripts/bench_recorder.py                       # every shape, this checkout
    python scripts/bench_recorder.py --repo ../other       # the same exchanges through another checkout
    python scripts/bench_recorder.py --only fresh --profile 25   # and cProfile's 25 costliest functions

The exchanges are what scripts/bench.py's runs hand the recorder, built the way the relay builds them
(recorder/capture.py) from scripts/bench_upstream.py's replies, then framed and unframed as the pipe
does. They are placed in batches and committed the way the recorder process does it between reads
(recorder/worker.py: place_all, then write), into a fresh session in a temporary folder: journal
fsyncs and live-file rewrites included. The figure is this process's CPU time (user + system) over
the exchanges, the median of --rounds runs after one warm-up; it does not move with what else the
machine does as much as req/s does, but the CPU's speed still moves it: compare two checkouts by
running this twice in a row, or by the ratio of their figures.

The shapes:
- fresh: every exchange a new two-message chat, as bench.py's wrk load sends (bench_wrk.lua);
- growing: 100 chats of 20 turns each, every request carrying the whole history, as frontends send it;
- stream: fresh chats answered as SSE streams of 200 events, as bench.py's streaming runs.
"""

from __future__ import annotations

import argparse
import cProfile
import importlib
import pstats
import statistics
import sys
import tempfile
import time
from pathlib import Path
from typing import Any, Callable, Dict, Iterator, List, Optional

SCRIPTS = Path(__file__).resolve().parent
QUESTION = "Tell me more about benchmarks. " * 5
SYSTEM = {"role": "system", "content": "You are a helpful assistant."}
BATCH = 40  # exchanges per place_all + write: about what 20 ms of c=32 load brings the recorder process


def chat_body(messages: List[Dict[str, str]], stream: bool) -> bytes:
    import json

    return json.dumps({"model": "bench-model", "stream": stream, "messages": messages}).encode()


def captured(modules: Dict[str, Any], body: bytes, stream: bool) -> Any:
    """An Exchange as the relay hands it over: through ExchangeCapture, and through the pipe's framing."""
    upstream, capture, pipe = modules["upstream"], modules["capture"], modules["pipe"]
    fields = [(b"Content-Type", b"content-type", b"application/json")]
    copy = capture.ExchangeCapture("chat.completions", "/v1/chat/completions", fields, 64 << 20)
    copy.request_chunk(body)
    if stream:
        copy.response_head(200, [(b"Content-Type", b"content-type", b"text/event-stream")])
        for event in upstream.sse_events(200):
            copy.response_chunk(_unchunked(event))
        copy.response_chunk(_unchunked(upstream.SSE_END))
    else:
        copy.response_head(200, fields)
        copy.response_chunk(modules["reply"])
    exchange = copy.finish(True)
    (message,) = pipe.FrameReader().feed(pipe.frame(("exchange", pipe.exchange_fields(exchange))))
    return pipe.exchange_from(message[1])


def _unchunked(data: bytes) -> bytes:
    """The payloads of HTTP chunks (bench_upstream writes one chunk per event)."""
    out = b""
    while data:
        size, _, rest = data.partition(b"\r\n")
        length = int(size, 16)
        out, data = out + rest[:length], rest[length + 2 :]
    return out


def fresh(modules: Dict[str, Any], count: int, tag: str, stream: bool = False) -> Iterator[Any]:
    for number in range(count):
        user = {"role": "user", "content": f"Question {tag}-{number}. {QUESTION}"}
        yield captured(modules, chat_body([SYSTEM, user], stream), stream)


def growing(modules: Dict[str, Any], count: int, tag: str) -> Iterator[Any]:
    import json

    answer = json.loads(modules["reply"])["choices"][0]["message"]["content"]
    chats = 100
    turns = max(1, count // chats)
    histories = [[SYSTEM] for _ in range(chats)]
    for turn in range(turns):  # the chats interleave, as many users' would
        for number, history in enumerate(histories):
            history.append({"role": "user", "content": f"Chat {tag}-{number}, turn {turn}. {QUESTION}"})
            yield captured(modules, chat_body(history, False), False)
            history.append({"role": "assistant", "content": answer})


SHAPES: Dict[str, Callable[[Dict[str, Any], int, str], Iterator[Any]]] = {
    "fresh": fresh,
    "growing": growing,
    "stream": lambda modules, count, tag: fresh(modules, count, tag, stream=True),
}


def load(repo: Path) -> Dict[str, Any]:
    sys.path[:0] = [str(repo), str(SCRIPTS)]
    names = {
        "core": "chatproxy.recorder.core",
        "capture": "chatproxy.recorder.capture",
        "pipe": "chatproxy.recorder.pipe",
        "config": "chatproxy.config",
        "upstream": "bench_upstream",
    }
    modules = {key: importlib.import_module(name) for key, name in names.items()}
    modules["reply"] = modules["upstream"].json_response(600).split(b"\r\n\r\n", 1)[1]
    return modules


def replay(modules: Dict[str, Any], exchanges: List[Any], profile: Optional[cProfile.Profile]) -> float:
    """CPU seconds per exchange to place, commit and show them, into a new session."""
    with tempfile.TemporaryDirectory(prefix="bench-recorder-") as folder:
        book = modules["core"].RecordBook(Path(folder), "bench", modules["config"].RecordOptions())
        book.open_session("bench")
        started = time.process_time()
        if profile is not None:
            profile.enable()
        for start in range(0, len(exchanges), BATCH):
            book.place_all(exchanges[start : start + BATCH])
            book.write()
        book.write(final=True)
        if profile is not None:
            profile.disable()
        spent = time.process_time() - started
        book.close()
    return spent / len(exchanges)


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--repo", type=Path, default=SCRIPTS.parent, help="the chatproxy checkout to run")
    parser.add_argument("--only", default=",".join(SHAPES), help=f"comma-separated, of: {', '.join(SHAPES)}")
    parser.add_argument("--exchanges", type=int, default=4000, help="per run (default 4000)")
    parser.add_argument("--rounds", type=int, default=3, help="measured runs per shape (default 3)")
    parser.add_argument("--profile", type=int, metavar="N", help="print cProfile's N costliest functions")
    args = parser.parse_args()
    modules = load(args.repo.resolve())
    for shape in args.only.split(","):
        make = SHAPES[shape]
        replay(modules, list(make(modules, args.exchanges // 4, "warm-up")), None)
        figures = []
        for number in range(args.rounds):
            exchanges = list(make(modules, args.exchanges, f"{time.time()}-{number}"))
            figures.append(replay(modules, exchanges, None) * 1e6)
        spread = f"{min(figures):.0f}–{max(figures):.0f}"
        print(f"{shape:8s} {statistics.median(figures):7.1f} µs CPU per exchange (runs {spread}, {args.repo})")
        if args.profile:
            profile = cProfile.Profile()
            replay(modules, list(make(modules, args.exchanges, f"profiled-{time.time()}")), profile)
            pstats.Stats(profile).sort_stats("tottime").print_stats(args.profile)


if __name__ == "__main__":
    main()
