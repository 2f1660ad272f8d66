"""Benchmark chatproxy against a direct connection and nginx, on loopback, in one command.

    python scripts/bench.py            # full run, about 10 minutes
    python scripts/bench.py --quick    # under a minute, one round of short runs
    python scripts/bench.py --json     # the same, as JSON on stdout (progress stays on stderr)
    python scripts/bench.py --profile DIR [--quick]   # py-spy profiles of chatproxy under load instead

What runs (all on 127.0.0.1, each in its own process; with `nginx` and `wrk` installed):
- scripts/bench_upstream.py: a canned OpenAI-compatible backend (asyncio Protocol writing prepared
  bytes): chat.completion JSON, or SSE with N events G ms apart (one write per event).
- chatproxy: `python -m chatproxy --target UPSTREAM --port 0 --datasets TMP`, recording on (the
  default) unless a row says otherwise. A fresh proxy and dataset folder for every measurement.
- nginx, `worker_processes 1` (one core, like chatproxy; `--nginx-workers auto` to change): a plain
  reverse proxy with upstream keepalive, proxy_buffering and proxy_request_buffering off.
- scripts/bench_floor.py: the least relay built the way chatproxy is (asyncio streams, h11 on both
  sides, kept-alive upstream connections) and nothing else, measured at c=32 in the same rounds: what
  pure-Python HTTP/1.1 costs on this machine, the floor under chatproxy's figures.
- load: wrk with scripts/bench_wrk.lua (every request a distinct chat, so each one is recorded);
  without wrk, scripts/bench_client.py (asyncio, one process: then the client may be the limit).

Direct, chatproxy and nginx (and, at c=32, chatproxy --no-record) are measured in turn within each
round (the order rotates per round); the table shows medians over rounds, and beside each throughput
figure its lowest and highest over the rounds with what else the machine did meanwhile: the median
share of all CPUs that other processes took, the share the hypervisor stole, and how long a fixed
1M-step Python loop took just before each run (a virtual CPU's speed changes over minutes, with
nothing else running). The figures:
- requests/s: non-streaming chat completions, closed loop at 1, 32 and 256 keep-alive connections;
  at 32 also as a share of nginx's taken round by round, and the least h11 relay's beside them.
- added latency p50/p99: chatproxy's (or nginx's) latency percentile minus direct's, one request at a
  time on one keep-alive connection, timed by this script (every sample kept). wrk's own percentiles
  are not used for this: wrk 4 "corrects" its histogram by adding synthetic samples for every reply
  slower than the average interval, so one 4 ms stall at 20,000 req/s becomes ~1% of all samples.
- chunks/s: SSE events delivered per second at 32 connections, 200-event replies sent without pauses.
- time to first byte added: from sending a streaming request to the first `data:` byte, minus direct's
  (median, timed like the latency).
- RSS: chatproxy's memory is that of two processes, the proxy and its recorder process (a child that
  parses and stores the records; none with --no-record), and every RSS figure is their sum, targets
  included; the notes split it. RSS idle: just started. RSS with 1,000 streams: the peak while 1,000
  connections each receive one SSE event a second, as the sum of each process's own peak (VmHWM;
  at least the peak of the sum). nginx: master plus worker(s), its peak from samples every 0.2 s.
- recording cost: requests/s at 32 connections with recording on (the c=32 row itself) vs
  `--no-record` in the same rounds, taken round by round (each round's pair minutes apart at most),
  and, for information, the added latency and time to first byte of both.
- paired runs (the verdicts on recording cost and on the share of nginx's req/s, when they ran): c=32
  runs of chatproxy, --no-record, a recording chatproxy whose recorder process is stopped (SIGSTOP),
  nginx, the least h11 relay and scripts/bench_floor.py --callbacks (the same relay with no coroutine),
  one after the other, cycle after cycle (8 cycles of 2 s runs), each ratio taken within a cycle:
  runs seconds apart, where the rounds' are minutes apart, and a virtual CPU's speed drifts by tens of
  percent within minutes. The stopped recorder tells what recording costs the relay's own work (the
  copies, pickling, the pipe) from what a second busy process beside it costs.
- growth: time per request at 1 connection (wrk's run time / requests) after resuming a session whose
  journal already holds 0 / 1,000 / 20,000 conversations (written in the journal format, resumed with
  `--session`); its start-up time and RSS (proxy + recorder) after the run are shown beside it.
- journal bytes: the session journal after one 200-turn chat (each request carrying the whole
  history, as frontends send it) over the UTF-8 bytes of that chat's message texts.
- start-up: spawn until the port accepts a connection (a fresh, empty dataset folder).

Everything shares the machine's CPUs (no pinning); the header line says how much CPU other processes
took during the run, since that moves every figure. "Other" is everything but this script and what it
started: chatproxy's recorder processes count as chatproxy's (a proxy reaps its recorder; should a
proxy have to be killed, this script adopts and reaps the orphan). Each figure with a target is
printed next to it with met / NOT met. Lines the proxy logged besides start-up and per-record lines (warnings, errors)
are listed under the table, with failed requests as the load generators counted them.

--profile DIR runs chatproxy under 32-connection non-streaming load (recording on, then --no-record)
and streaming load, samples it with py-spy (pip install py-spy), keeps the folded stacks in DIR
(viewable in speedscope) and prints the hot spots: self and total share of the busy samples. With
recording on, the recorder process is sampled too, into NAME-recorder.folded.
"""

from __future__ import annotations

import argparse
import dataclasses
import json
import os
import re
import resource
import shutil
import signal
import subprocess
import sys
import tempfile
import time
import uuid
from pathlib import Path
from typing import Any, Callable, Dict, List, Optional, Tuple

import bench_load as load
import bench_profile
from bench_procs import (
    REPO,
    ChatProxy,
    Floor,
    Nginx,
    Upstream,
    become_subreaper,
    children,
    cpu_of,
    free_port,
    loop_ms,
    machine_cpu,
    reap_adopted,
)

sys.path.insert(0, str(REPO))
import chatproxy  # noqa: E402
from chatproxy.recorder.journal import JOURNAL_VERSION, encode_record  # noqa: E402


@dataclasses.dataclass(frozen=True)
class Settings:
    rounds: int
    seconds: int  # each measured load run
    warmup: int  # seconds of load before each measured run (opens pools, warms caches)
    probe_samples: int  # requests timed one at a time, for latency and time to first byte
    slow_streams: int
    slow_chunks: int  # events per slow stream, one a second
    growth_sizes: Tuple[int, ...]
    growth_seconds: int
    turns: int
    startups: int
    cycles: int  # of the paired scenario: each measures every c=32 target once, seconds apart
    cycle_seconds: int  # each run of a cycle


QUICK = Settings(
    rounds=1,
    seconds=1,
    warmup=1,
    probe_samples=500,
    slow_streams=1000,
    slow_chunks=3,
    growth_sizes=(0, 1000, 20000),
    growth_seconds=1,
    turns=200,
    startups=3,
    cycles=2,
    cycle_seconds=1,
)
FULL = Settings(
    rounds=3,
    seconds=5,
    warmup=1,
    probe_samples=3000,
    slow_streams=1000,
    slow_chunks=10,
    growth_sizes=(0, 1000, 20000),
    growth_seconds=5,
    turns=200,
    startups=10,
    cycles=8,
    cycle_seconds=2,
)
NO_RECORD = "no-record"  # chatproxy --no-record, a target of the c=32 cell
FLOOR = "floor"  # scripts/bench_floor.py, the least h11 relay: a target of the c=32 cell
CALLBACKS = "floor-callbacks"  # scripts/bench_floor.py --callbacks: a target of the paired runs
FROZEN = "frozen-recorder"  # chatproxy recording, its recorder process stopped: a target of the paired runs
LOAD_CELLS = (("c1", 1, False), ("c32", 32, False), ("c256", 256, False), ("stream32", 32, True))
STREAM_CHUNKS = 200
REPLY_CHARS = 600


def progress(message: str) -> None:
    print(f"[bench {time.strftime('%H:%M:%S')}] {message}", file=sys.stderr, flush=True)


class Bench:
    """The shared processes and the collected raw results."""

    def __init__(self, settings: Settings, workdir: Path, nginx_workers: Optional[str]) -> None:
        self.settings = settings
        self.workdir = workdir
        self.upstream = Upstream(workdir, REPLY_CHARS)
        self.nginx = Nginx(self.upstream, workdir, nginx_workers) if nginx_workers else None
        self.floor = Floor(self.upstream, workdir)
        self.callbacks: Optional[Floor] = None  # started by the paired runs
        self.targets = ["direct", "chatproxy"] + (["nginx"] if self.nginx else [])
        self.raw: Dict[str, Any] = {}
        self.problems: List[str] = []
        self.checks: List[Dict[str, Any]] = []  # every target's verdict, filled in as the table is built

    def close(self) -> None:
        if self.nginx:
            self.nginx.stop()
        self.floor.stop()
        if self.callbacks is not None:
            self.callbacks.stop()
        self.upstream.stop()

    def fresh_proxy(
        self, extra: Tuple[str, ...] = (), datasets: Optional[Path] = None, port: int = 0, ready_within: float = 30.0
    ) -> ChatProxy:
        datasets = datasets or Path(tempfile.mkdtemp(prefix="datasets-", dir=self.workdir))
        return ChatProxy(self.upstream, datasets, self.workdir, extra, port, ready_within)

    def finish(self, proxy: ChatProxy, what: str, within: float = 20.0) -> None:
        proxy.stop(within)
        self.problems += [f"{what}: {line}" for line in proxy.problems()]

    def with_target(self, target: str, what: str, measure: Callable[[int, Optional[ChatProxy]], Any]) -> Any:
        """Run `measure(port, proxy)` against direct, nginx, or a fresh chatproxy."""
        if target == "direct":
            return measure(self.upstream.port, None)
        if target == "nginx":
            assert self.nginx is not None
            return measure(self.nginx.port, None)
        if target == FLOOR:
            return measure(self.floor.port, None)
        proxy = self.fresh_proxy(("--no-record",) if target == NO_RECORD else ())
        try:
            return measure(proxy.port, proxy)
        finally:
            self.finish(proxy, what)

    def watched_pids(self, proxy: Optional[ChatProxy]) -> List[int]:
        """The processes a measured run is made of, besides this script and its load generator."""
        pids = [self.upstream.proc.pid, self.floor.proc.pid]
        if self.callbacks is not None:
            pids.append(self.callbacks.proc.pid)
        if proxy is not None:
            pids += [proxy.pid, *proxy.recorder_pids()]
        if self.nginx is not None:
            pids += [self.nginx.proc.pid, *children(self.nginx.proc.pid)]
        return pids

    def relay_pids(self, port: int, proxy: Optional[ChatProxy]) -> Tuple[List[int], List[int]]:
        """The processes doing the relaying on `port`, and chatproxy's recorder processes."""
        if proxy is not None:
            return [proxy.pid], proxy.recorder_pids()
        if self.nginx is not None and port == self.nginx.port:
            return [self.nginx.proc.pid, *children(self.nginx.proc.pid)], []
        for floor in (self.floor, self.callbacks):
            if floor is not None and port == floor.port:
                return [floor.proc.pid], []
        return [self.upstream.proc.pid], []

    def record(self, key: str, target: str, value: Any) -> None:
        self.raw.setdefault(key, {}).setdefault(target, []).append(value)


# -- the scenarios ---------------------------------------------------------------------------------


def measure_load(
    bench: Bench, connections: int, stream: bool, seconds: Optional[int] = None, warm: bool = True
) -> Callable[[int, Optional[ChatProxy]], Dict[str, Any]]:
    """A measured closed-loop run; a fresh chatproxy gets a warm-up run first (direct and nginx stay up)."""

    def measure(port: int, proxy: Optional[ChatProxy]) -> Dict[str, Any]:
        if proxy is not None and warm:
            load.run_load(port, connections, bench.settings.warmup, stream, STREAM_CHUNKS)
        before = bench.upstream.stats()
        watch = CpuWatch(bench.watched_pids(proxy))
        relay, recorder = bench.relay_pids(port, proxy)
        spent = [sum(cpu_of(pid) for pid in pids) for pids in (relay, recorder)]
        result = load.run_load(port, connections, seconds or bench.settings.seconds, stream, STREAM_CHUNKS)
        result.update(watch.shares())
        # CPU per request: unlike req/s, it does not move with what else the machine's CPUs were doing.
        for name, pids, was in (("relay_cpu_us", relay, spent[0]), ("recorder_cpu_us", recorder, spent[1])):
            result[name] = (sum(cpu_of(pid) for pid in pids) - was) / max(result["requests"], 1) * 1e6
        result["upstream_connections"] = bench.upstream.stats()["connections"] - before["connections"]
        if proxy is not None:
            result.update(kb_fields("rss_kb_after", proxy.memory_kb()))
        return result

    return measure


class CpuWatch:
    """Where the machine's CPU went during one measured run: the share of all its CPUs' time that other
    processes took (neither this script, its load generator, nor the processes measured), and the share
    the hypervisor stole. Either one moves every figure of that run."""

    def __init__(self, pids: List[int]) -> None:
        self.loop_ms = loop_ms()
        self.started = time.perf_counter()
        self.machine, self.steal = machine_cpu()
        self.own = own_cpu()
        self.theirs = {pid: cpu_of(pid) for pid in pids}

    def shares(self) -> Dict[str, float]:
        capacity = (time.perf_counter() - self.started) * (os.cpu_count() or 1)
        machine, steal = machine_cpu()
        known = own_cpu() - self.own + sum(max(0.0, cpu_of(pid) - was) for pid, was in self.theirs.items())
        other = machine - self.machine - known
        return {
            "other_cpu_share": max(0.0, other) / capacity,
            "steal_share": (steal - self.steal) / capacity,
            "loop_ms": self.loop_ms,
        }


def measure_probe(bench: Bench) -> Callable[[int, Optional[ChatProxy]], Dict[str, float]]:
    """Latency of non-streaming requests and time to the first streamed byte, one request at a time."""

    def measure(port: int, proxy: Optional[ChatProxy]) -> Dict[str, float]:
        plain = load.timed_requests(port, bench.settings.probe_samples, stream=False)["total"]
        first = load.timed_requests(port, bench.settings.probe_samples, stream=True)["first"]
        return {
            "latency_p50_us": load.median(plain) * 1e6,
            "latency_p99_us": load.percentile(plain, 0.99) * 1e6,
            "ttfb_p50_us": load.median(first) * 1e6,
            "ttfb_p99_us": load.percentile(first, 0.99) * 1e6,
        }

    return measure


def run_rounds(bench: Bench) -> None:
    """The direct / chatproxy / nginx comparison: every cell, every target, in rotating order."""
    for number in range(bench.settings.rounds):
        order = rotated(bench.targets, number)
        for cell, connections, stream in LOAD_CELLS:
            # c=32 --no-record too, in the same rotation: the recording cost from the very runs of the c=32 row.
            targets = order if cell != "c32" else rotated(bench.targets + [NO_RECORD, FLOOR], number)
            for target in targets:
                progress(f"round {number + 1}: {cell} via {target}")
                result = bench.with_target(target, cell, measure_load(bench, connections, stream))
                bench.record(cell, target, result)
        for target in order:
            progress(f"round {number + 1}: latency and time to first byte via {target}")
            bench.record("probe", target, bench.with_target(target, "probe", measure_probe(bench)))


def rotated(targets: List[str], number: int) -> List[str]:
    return targets[number % len(targets) :] + targets[: number % len(targets)]


def run_recording_cost(bench: Bench) -> None:
    """Latency and time to first byte with recording on and off; c=32 too, unless the rounds measured it."""
    load_too = NO_RECORD not in bench.raw.get("c32", {})
    for number in range(bench.settings.rounds):
        for label, extra in (("record", ()), ("no-record", ("--no-record",)))[:: 1 if number % 2 == 0 else -1]:
            progress(f"round {number + 1}: {'c32, ' if load_too else ''}latency, time to first byte; chatproxy {label}")
            proxy = bench.fresh_proxy(extra)
            try:
                if load_too:
                    bench.record("recording_c32", label, measure_load(bench, 32, False)(proxy.port, proxy))
                bench.record("recording_probe", label, measure_probe(bench)(proxy.port, proxy))
            finally:
                bench.finish(proxy, label)


def run_paired(bench: Bench) -> None:
    """c=32 runs of chatproxy, --no-record, nginx and the least h11 relay, one after the other seconds apart,
    cycle after cycle. A virtual CPU's speed drifts by tens of percent within a minute: in the rounds, the
    two runs a ratio compares are minutes apart, here seconds. One proxy of each kind serves every cycle
    (warmed up once), so the recording one's session grows by each run's chats.

    A third chatproxy records with its recorder process stopped (SIGSTOP) after the warm-up: its relay
    does all of recording's work (copies, pickling, the pipe) while no second process works beside it.
    What it hands over waits in its memory (well under --recorder-memory for these runs) and is
    recorded once the recorder is let go, before the proxy stops."""
    proxies = {
        "chatproxy": bench.fresh_proxy(),
        NO_RECORD: bench.fresh_proxy(("--no-record",)),
        FROZEN: bench.fresh_proxy(),
    }
    ports = {name: proxy.port for name, proxy in proxies.items()}
    ports[FLOOR] = bench.floor.port
    bench.callbacks = bench.callbacks or Floor(bench.upstream, bench.workdir, callbacks=True)
    ports[CALLBACKS] = bench.callbacks.port
    if bench.nginx is not None:
        ports["nginx"] = bench.nginx.port
    frozen = []
    try:
        for proxy in proxies.values():
            load.run_load(proxy.port, 32, bench.settings.warmup)
        frozen = proxies[FROZEN].recorder_pids()
        for pid in frozen:
            os.kill(pid, signal.SIGSTOP)
        measure = measure_load(bench, 32, False, bench.settings.cycle_seconds, warm=False)
        for number in range(bench.settings.cycles):
            for target in rotated(list(ports), number):
                progress(f"cycle {number + 1}: c32 via {target}")
                bench.record("paired", target, measure(ports[target], proxies.get(target)))
    finally:
        for pid in frozen:
            os.kill(pid, signal.SIGCONT)
        for name, proxy in proxies.items():
            bench.finish(proxy, f"paired {name}", within=60.0)


def run_memory(bench: Bench) -> None:
    settings = bench.settings
    for target in [t for t in bench.targets if t != "direct"]:
        progress(f"{settings.slow_streams} slow streams via {target}")
        proxy = bench.fresh_proxy() if target == "chatproxy" else None
        rss = proxy.rss_kb if proxy else bench.nginx.rss_kb  # type: ignore[union-attr]
        port = proxy.port if proxy else bench.nginx.port  # type: ignore[union-attr]
        # chatproxy's figures come with their parts (proxy, recorder); nginx's as the total only.
        measured = (lambda name: kb_fields(name, proxy.memory_kb())) if proxy else (lambda name: {name: rss()})
        try:
            time.sleep(0.5)
            idle = measured("idle_kb")
            if proxy:
                idle["idle_recorder_private_kb"] = proxy.recorder_private_kb()
                idle.update(kb_fields("idle_pss_kb", proxy.pss_kb()))
            samples: List[int] = []
            pss_samples: List[Dict[str, int]] = []

            def sample() -> None:
                samples.append(rss())
                if proxy:
                    pss_samples.append(proxy.pss_kb())

            held = load.hold_streams(port, settings.slow_streams, settings.slow_chunks, 1000, sample)
            time.sleep(1.0)
            held.update(idle, peak_sampled_kb=max(samples, default=0), **measured("after_kb"))
            if proxy:
                held.update(kb_fields("peak_hwm_kb", proxy.memory_kb("VmHWM")))
                # PSS has no kernel-kept peak: the highest sample of each process.
                peaks = {who: max((s[who] for s in pss_samples), default=0) for who in ("proxy", "recorder")}
                held.update(kb_fields("peak_pss_kb", peaks))
            bench.record("memory", target, held)
        finally:
            if proxy:
                bench.finish(proxy, "slow streams")


def kb_fields(name: str, parts: Dict[str, int]) -> Dict[str, int]:
    """`name` for the sum of the parts, with each part beside it: rss_kb_after, rss_proxy_kb_after, ..."""
    fields = {name: sum(parts.values())}
    fields.update({name.replace("_kb", f"_{part}_kb", 1): kb for part, kb in parts.items()})
    return fields


def journal_lines(count: int) -> bytes:
    """`count` one-exchange chats as resume reads them (see chatproxy/journal.py)."""
    reply = {"role": "assistant", "content": ("the quick brown fox jumps over a lazy dog " * 15)[:REPLY_CHARS]}
    lines = []
    for number in range(count):
        record = {
            "v": JOURNAL_VERSION,
            "id": uuid.uuid4().hex[:16],
            "parent": None,
            "base": 0,
            "messages": [
                {"role": "system", "content": "You are a helpful assistant."},
                {"role": "user", "content": f"Earlier question {number}: " + "Tell me more about benchmarks. " * 5},
                reply,
            ],
            "meta": {
                "time": "2025-01-01T00:00:00.000Z",
                "model": "bench-model",
                "endpoint": "/v1/chat/completions",
                "stream": False,
                "finish_reason": "stop",
                "usage": {"prompt_tokens": 20, "completion_tokens": 150, "total_tokens": 170},
                "tags": [],
                "complete": True,
                "choice": 0,
                "response_id": "chatcmpl-bench",
            },
        }
        lines.append(encode_record(record))
    return b"".join(lines)


def run_growth(bench: Bench) -> None:
    for number in range(bench.settings.rounds):
        for size in bench.settings.growth_sizes:
            progress(f"round {number + 1}: growth, resuming {size:,} conversations")
            datasets = Path(tempfile.mkdtemp(prefix=f"growth-{size}-", dir=bench.workdir))
            write_journal(datasets / "bench-growth.jsonl", size)
            bench.record("growth", str(size), measure_growth(bench, datasets, size))
            shutil.rmtree(datasets, ignore_errors=True)  # 200,000 conversations are 250 MB of journal alone


def write_journal(path: Path, count: int, batch: int = 10000) -> None:
    with open(path, "wb") as journal:
        for start in range(0, count, batch):
            journal.write(journal_lines(min(batch, count - start)))


def measure_growth(bench: Bench, datasets: Path, size: int) -> Dict[str, Any]:
    """Start on a journal of `size` conversations (nothing else: as after an upgrade), stop, start again
    (a restart after a clean exit), then load at c=1: time per request, memory (RSS and PSS of both
    processes, after resuming and after the run), and what the recorder wrote per new record."""
    journal = datasets / "bench-growth.jsonl"
    # Resuming a large session is what is measured: it may take long (the rows say how long).
    extra = ("--session", "bench-growth")
    first = bench.fresh_proxy(extra, datasets, port=free_port(), ready_within=900)
    started = time.perf_counter()
    bench.finish(first, f"growth {size}, first start", within=900)
    result: Dict[str, Any] = {"first_start_s": first.startup, "first_stop_s": time.perf_counter() - started}
    journal_before = journal.stat().st_size
    proxy = bench.fresh_proxy(extra, datasets, port=free_port(), ready_within=900)
    try:
        time.sleep(1.0)  # the live dataset's first write after resuming, if it is due, starts meanwhile
        result.update(kb_fields("rss_kb_start", proxy.memory_kb()))
        result.update(kb_fields("pss_kb_start", proxy.pss_kb()))
        warmup = load.run_load(proxy.port, 1, bench.settings.warmup)
        watch = CpuWatch(bench.watched_pids(proxy))
        result.update(load.run_load(proxy.port, 1, bench.settings.growth_seconds))
        result.update(watch.shares())
        time.sleep(1.5)  # one more rewrite of the live dataset, due a second after the last record
        result.update(
            startup_s=proxy.startup,
            recorder_written=proxy.recorder_written(),
            records=warmup["requests"] + result["requests"],
            **kb_fields("rss_kb_after", proxy.memory_kb()),
            **kb_fields("pss_kb_after", proxy.pss_kb()),
        )
        result["journal_added"] = journal.stat().st_size - journal_before
    finally:
        bench.finish(proxy, f"growth {size}", within=900)
    result["conversations_after"] = after = count_conversations(datasets / "bench-growth.json")
    if after is None or after < size:
        bench.problems.append(f"growth {size}: the dataset holds {after} conversations after resuming {size}")
    return result


def count_conversations(dataset: Path) -> Optional[int]:
    """Conversations in a live dataset: one JSON array, or a folder of them (its parts)."""
    try:
        files = sorted(dataset.glob("*.json")) if dataset.is_dir() else [dataset]
        return sum(len(json.loads(path.read_bytes())) for path in files)
    except (OSError, ValueError):
        return None


def run_long_chat(bench: Bench) -> None:
    progress(f"one {bench.settings.turns}-turn chat via chatproxy and direct")
    datasets = Path(tempfile.mkdtemp(prefix="chat-", dir=bench.workdir))
    proxy = bench.fresh_proxy(("--session", "bench-chat"), datasets)
    try:
        messages, seconds = load.long_chat(proxy.port, bench.settings.turns)
    finally:
        bench.finish(proxy, "long chat")
    _, direct_seconds = load.long_chat(bench.upstream.port, bench.settings.turns)
    text = sum(len(m.get("content", "").encode()) for m in messages)
    bench.raw["long_chat"] = {
        "turns": bench.settings.turns,
        "text_bytes": text,
        "journal_bytes": (datasets / "bench-chat.jsonl").stat().st_size,
        "snapshot_bytes": dataset_bytes(datasets / "bench-chat.json"),
        "last10_ms": {"chatproxy": sum(seconds[-10:]) * 100, "direct": sum(direct_seconds[-10:]) * 100},
        "first10_ms": {"chatproxy": sum(seconds[:10]) * 100, "direct": sum(direct_seconds[:10]) * 100},
    }


def dataset_bytes(dataset: Path) -> int:
    return sum(path.stat().st_size for path in dataset.glob("*.json")) if dataset.is_dir() else dataset.stat().st_size


def run_startup(bench: Bench) -> None:
    progress(f"start-up to listening, {bench.settings.startups} times")
    for _ in range(bench.settings.startups):
        proxy = bench.fresh_proxy(port=free_port())
        bench.record("startup", "chatproxy", proxy.startup)
        bench.finish(proxy, "start-up")


# -- the table -------------------------------------------------------------------------------------


def med(bench: Bench, key: str, target: str, pick: Callable[[Any], float]) -> Optional[float]:
    """The median over rounds of one figure, None if it was not measured."""
    runs = bench.raw.get(key, {}).get(target)
    return load.median([pick(run) for run in runs]) if runs else None


def spread(bench: Bench, key: str, target: str, pick: Callable[[Any], float], scale: float = 1) -> str:
    """The lowest and highest of a figure over the rounds, with the median share of the machine's CPU
    that other processes and the hypervisor (steal) took during those runs."""
    runs = bench.raw.get(key, {}).get(target) or []
    if not runs:
        return ""
    values = [pick(run) * scale for run in runs]
    text = f"{min(values):,.0f}–{max(values):,.0f}" if len(values) > 1 else f"{values[0]:,.0f}"
    others = [run["other_cpu_share"] for run in runs if "other_cpu_share" in run]
    steals = [run["steal_share"] for run in runs if "steal_share" in run]
    loops = [run["loop_ms"] for run in runs if "loop_ms" in run]
    if others:
        text += f" (other {load.median(others):.0%}, steal {load.median(steals):.0%}"
        text += f", loop {min(loops):.0f}–{max(loops):.0f} ms)" if loops else ")"
    return text


def round_ratios(bench: Bench, key: str, target: str, other: str) -> List[float]:
    """`target`'s req/s over `other`'s, round by round (each round measured both minutes apart at most)."""
    runs = bench.raw.get(key, {})
    return [a["rps"] / b["rps"] for a, b in zip(runs.get(target, []), runs.get(other, [])) if b["rps"]]


def ratio_note(ratios: List[float], over: str = "rounds") -> str:
    if not ratios:
        return "-"
    text = f"{load.median(ratios):.1%}"
    return text + (f" ({over} {min(ratios):.1%}–{max(ratios):.1%})" if len(ratios) > 1 else "")


def paired(bench: Bench, target: str, other: str) -> List[float]:
    """`target`'s req/s over `other`'s, cycle by cycle of the paired scenario (seconds apart)."""
    return round_ratios(bench, "paired", target, other)


def verdict_unless_paired(bench: Bench, figure: str, value: Optional[float], ok: Callable[[float], bool]) -> str:
    """The rounds' verdict, or, when the paired scenario ran, a pointer to its verdict: it judges the same
    target from runs seconds apart rather than minutes."""
    if "paired" in bench.raw:
        return "paired row"
    return verdict(bench, figure, value, ok)


def cpu_per_request(bench: Bench, key: str) -> Callable[[str, str], Optional[float]]:
    """The median CPU µs per request of a target's relay or recorder ("relay", "recorder") in `key`'s runs."""
    return lambda target, part: med(bench, key, target, lambda r: r.get(f"{part}_cpu_us", 0.0))


def cpu_cell(cpu: Callable[[str, str], Optional[float]]) -> str:
    """chatproxy's cell: --no-record's relay, then (recording on) its relay + its recorder."""
    on = f"{fmt(cpu('chatproxy', 'relay'))} + {fmt(cpu('chatproxy', 'recorder'))} recording"
    return f"{fmt(cpu(NO_RECORD, 'relay'))} ({on})"


def paired_rows(bench: Bench) -> List[List[str]]:
    runs = bench.raw["paired"]
    rps = lambda target: med(bench, "paired", target, lambda r: r["rps"])  # noqa: E731
    cpu = cpu_per_request(bench, "paired")
    costs = [(1 - ratio) * 100 for ratio in paired(bench, "chatproxy", NO_RECORD)]
    cost = load.median(costs) if costs else None
    alone = [(1 - ratio) * 100 for ratio in paired(bench, FROZEN, NO_RECORD)]
    frozen = load.median(alone) if alone else None
    shares = paired(bench, "chatproxy", "nginx")
    share = load.median(shares) * 100 if shares else None
    cycles = len(runs.get("chatproxy", []))
    return [
        [
            "req/s c=32, paired runs seconds apart",
            "",
            f"{fmt(rps('chatproxy'))} / {fmt(rps(NO_RECORD))}",
            fmt(rps("nginx")),
            f"recording on / --no-record; the least h11 relay {fmt(rps(FLOOR))}; "
            f"{cycles} cycles of {bench.settings.cycle_seconds} s runs, one proxy of each kind for all",
            "",
            "",
        ],
        [
            "  recording cost, cycle by cycle",
            "",
            fmt(cost, "%", 1) + (f" (cycles {min(costs):.1f} to {max(costs):.1f}%)" if len(costs) > 1 else ""),
            "",
            "req/s recording on against --no-record in the same cycle",
            "≤ 10% cost",
            verdict(bench, "recording cost, % of c=32 req/s, paired runs", cost, lambda v: v <= 10),
        ],
        [
            "  of which the relay's side (recorder stopped)",
            "",
            fmt(frozen, "%", 1) + (f" (cycles {min(alone):.1f} to {max(alone):.1f}%)" if len(alone) > 1 else ""),
            "",
            f"a recording proxy whose recorder process is stopped: {fmt(rps(FROZEN))} req/s against --no-record",
            "",
            "",
        ],
        [
            "  share of nginx's req/s, cycle by cycle",
            "",
            ratio_note(shares, "cycles"),
            "",
            f"--no-record {ratio_note(paired(bench, NO_RECORD, 'nginx'), 'cycles')}; "
            f"the least h11 relay {ratio_note(paired(bench, FLOOR, 'nginx'), 'cycles')}, "
            f"with callbacks only {ratio_note(paired(bench, CALLBACKS, 'nginx'), 'cycles')}",
            "≥ 10%",
            verdict(bench, "c=32 req/s, % of nginx's, paired runs", share, lambda v: v >= 10),
        ],
        [
            "  CPU per request, µs: relay + recorder",
            "",
            cpu_cell(cpu),
            fmt(cpu("nginx", "relay")),
            f"--no-record (recording on); recorder stopped {fmt(cpu(FROZEN, 'relay'))}; "
            f"the least h11 relay {fmt(cpu(FLOOR, 'relay'))}, with callbacks only {fmt(cpu(CALLBACKS, 'relay'))}",
            "",
            "",
        ],
    ]


def floor_rows(bench: Bench) -> List[List[str]]:
    """chatproxy against nginx round by round, and against the least relay h11 and asyncio allow."""
    if FLOOR not in bench.raw.get("c32", {}):
        return []
    versus_nginx = round_ratios(bench, "c32", "chatproxy", "nginx")
    share = load.median(versus_nginx) * 100 if versus_nginx else None
    floor_of_nginx = round_ratios(bench, "c32", FLOOR, "nginx")
    cpu = cpu_per_request(bench, "c32")
    runs = bench.raw["c32"]
    pairs = [
        (a.get("relay_cpu_us", 0.0), b.get("relay_cpu_us", 0.0))
        for a, b in zip(runs.get("nginx", []), runs.get(NO_RECORD, []))
        if b.get("relay_cpu_us")
    ]
    return [
        [
            "  c=32 req/s as a share of nginx's, round by round",
            "",
            ratio_note(versus_nginx),
            "",
            f"the least h11 relay: {ratio_note(floor_of_nginx)} of nginx",
            "≥ 10%",
            verdict_unless_paired(bench, "c=32 req/s, % of nginx's in the same round", share, lambda v: v >= 10),
        ],
        [
            "  c=32 CPU per request, µs: relay + recorder",
            "",
            cpu_cell(cpu),
            fmt(cpu("nginx", "relay")),
            f"--no-record (recording on); the least h11 relay {fmt(cpu(FLOOR, 'relay'))}; "
            f"nginx's over chatproxy's --no-record: {ratio_note([a / b for a, b in pairs])}",
            "",
            "",
        ],
        [
            "  c=32 req/s of the least h11 relay (bench_floor.py)",
            "",
            fmt(med(bench, "c32", FLOOR, lambda r: r["rps"])),
            "",
            f"chatproxy {ratio_note(round_ratios(bench, 'c32', 'chatproxy', FLOOR))} of it, --no-record "
            f"{ratio_note(round_ratios(bench, 'c32', NO_RECORD, FLOOR))}; rounds: "
            + spread(bench, "c32", FLOOR, lambda r: r["rps"]),
            "",
            "",
        ],
    ]


def verdict(bench: Bench, figure: str, value: Optional[float], ok: Callable[[float], bool]) -> str:
    """ "met" / "NOT met", noted in bench.checks with the unformatted value for --json."""
    met = None if value is None else ok(value)
    bench.checks.append({"figure": figure, "chatproxy": value, "met": met})
    return "-" if met is None else ("met" if met else "NOT met")


def fmt(value: Optional[float], unit: str = "", digits: int = 0) -> str:
    if value is None:
        return "-"
    return f"{value:,.{digits}f}{unit}"


def spread_note(bench: Bench, cell: str, scale: float) -> str:
    """chatproxy's and nginx's lowest–highest over the rounds (with more than one round)."""
    if bench.settings.rounds < 2:
        return ""
    pick = lambda r: r["rps"]  # noqa: E731
    parts = [
        f"{name} {spread(bench, cell, name, pick, scale)}" for name in ("chatproxy", "nginx") if name in bench.targets
    ]
    return "rounds: " + ", ".join(parts)


def throughput_rows(bench: Bench) -> List[List[str]]:
    rows = []
    for cell, label in (
        ("c1", "req/s, non-streaming, c=1"),
        ("c32", "req/s, non-streaming, c=32"),
        ("c256", "req/s, non-streaming, c=256"),
        ("stream32", "chunks/s streamed, c=32, 200-chunk replies"),
    ):
        scale = STREAM_CHUNKS if cell == "stream32" else 1
        values = {t: med(bench, cell, t, lambda r: r["rps"] * scale) for t in bench.targets}
        mine, theirs = values["chatproxy"], values.get("nginx")
        ratio = mine / theirs if mine is not None and theirs else None
        target, ok = "", ""
        if cell == "c32":
            target, ok = "≥ 3,000", verdict(bench, label, mine, lambda v: v >= 3000)
        elif cell == "stream32":
            target, ok = "≥ 50,000", verdict(bench, label, mine, lambda v: v >= 50000)
        rows.append(
            [
                label,
                fmt(values["direct"]),
                fmt(values["chatproxy"]),
                fmt(values.get("nginx")),
                "; ".join(
                    filter(
                        None,
                        [fmt(ratio and ratio * 100, "% of nginx") if ratio else "", spread_note(bench, cell, scale)],
                    )
                ),
                target,
                ok,
            ]
        )
        if cell == "c32":
            rows += floor_rows(bench)
    opened = {t: med(bench, "c256", t, lambda r: r["upstream_connections"]) for t in bench.targets}
    rows.append(
        [
            "  upstream connections opened in the c=256 run",
            fmt(opened["direct"]),
            fmt(opened["chatproxy"]),
            fmt(opened.get("nginx")),
            "",
            "",
            "",
        ]
    )
    return rows


def added(bench: Bench, key: str, target: str, pick: Callable[[Any], float]) -> Optional[float]:
    mine, direct = med(bench, key, target, pick), med(bench, key, "direct", pick)
    return None if mine is None or direct is None else (mine - direct) / 1000


def latency_rows(bench: Bench) -> List[List[str]]:
    rows = []
    for label, field, limit in (
        ("added latency p50, c=1", "latency_p50_us", 0.5),
        ("added latency p99, c=1", "latency_p99_us", 2.0),
        ("time to first byte added (median)", "ttfb_p50_us", 0.5),
    ):
        pick = lambda r, f=field: r[f]  # noqa: E731
        mine = {t: added(bench, "probe", t, pick) for t in bench.targets if t != "direct"}
        direct = med(bench, "probe", "direct", pick)
        rows.append(
            [
                label,
                fmt(direct and direct / 1000, " ms abs", 3),
                fmt(mine["chatproxy"], " ms", 3),
                fmt(mine.get("nginx"), " ms", 3),
                "",
                f"≤ {limit} ms",
                verdict(bench, label, mine["chatproxy"], lambda v: v <= limit),
            ]
        )
    return rows


def parts_mb(bench: Bench, key: str, target: str, name: str) -> Optional[Tuple[float, float]]:
    """Medians of the proxy's and the recorder's share of the kB figure `name` (see kb_fields), in MB."""
    part = lambda who: med(bench, key, target, lambda r: r[name.replace("_kb", f"_{who}_kb", 1)] / 1024)  # noqa: E731
    proxy, recorder = part("proxy"), part("recorder")
    return None if proxy is None or recorder is None else (proxy, recorder)


def split(parts: Optional[Tuple[float, float]]) -> str:
    """ "proxy 21.0 + recorder 14.2 MB"; a missing recorder said outright, since the sum would hide it."""
    if parts is None:
        return "-"
    if not parts[1]:
        return f"proxy {parts[0]:.1f} MB, no recorder process found"
    return f"proxy {parts[0]:.1f} + recorder {parts[1]:.1f} MB"


def memory_rows(bench: Bench) -> List[List[str]]:
    mb = lambda kb: kb / 1024  # noqa: E731
    idle = {t: med(bench, "memory", t, lambda r: mb(r["idle_kb"])) for t in ("chatproxy", "nginx")}
    peak = {
        "chatproxy": med(bench, "memory", "chatproxy", lambda r: mb(max(r["peak_hwm_kb"], r["peak_sampled_kb"]))),
        "nginx": med(bench, "memory", "nginx", lambda r: mb(r["peak_sampled_kb"])),
    }
    left = med(bench, "memory", "chatproxy", lambda r: mb(r["after_kb"]))
    runs = bench.raw.get("memory", {}).get("chatproxy", [{}])
    streams = f"RSS, {bench.settings.slow_streams} slow streams (peak {runs[-1].get('peak_concurrent', '?')} open)"
    after = med(bench, "c32", "chatproxy", lambda r: mb(r["rss_kb_after"]))
    recorded = med(bench, "c32", "chatproxy", lambda r: r["requests"])
    parts = {
        name: split(parts_mb(bench, key, "chatproxy", name))
        for key, name in (
            ("memory", "idle_kb"),
            ("memory", "peak_hwm_kb"),
            ("c32", "rss_kb_after"),
            ("memory", "idle_pss_kb"),
            ("memory", "peak_pss_kb"),
        )
    }
    pss = {
        which: med(bench, "memory", "chatproxy", lambda r, w=which: mb(r[f"{w}_pss_kb"])) for which in ("idle", "peak")
    }
    own = med(bench, "memory", "chatproxy", lambda r: mb(r.get("idle_recorder_private_kb", 0)))
    if own:  # the rest of the recorder's RSS is the interpreter's files, the same pages as the proxy's
        parts["idle_kb"] += f" ({own:.1f} MB its own)"
    return [
        [
            "RSS idle (proxy + recorder)",
            "",
            fmt(idle["chatproxy"], " MB", 1),
            fmt(idle.get("nginx"), " MB", 1),
            parts["idle_kb"],
            "≤ 30 MB",
            verdict(bench, "RSS idle, proxy + recorder (MB)", idle["chatproxy"], lambda v: v <= 30),
        ],
        [
            streams,
            "",
            fmt(peak["chatproxy"], " MB", 1),
            fmt(peak.get("nginx"), " MB", 1),
            f"peak of each: {parts['peak_hwm_kb']}; {fmt(left, ' MB', 1)} 1 s after they ended",
            "≤ 100 MB",
            verdict(bench, streams + ", sum of peaks (MB)", peak["chatproxy"], lambda v: v <= 100),
        ],
        [
            "  PSS idle / with the streams (peak)",
            "",
            f"{fmt(pss['idle'], ' MB', 1)} / {fmt(pss['peak'], ' MB', 1)}",
            "",
            f"idle: {parts['idle_pss_kb']}; peak of each: {parts['peak_pss_kb']}",
            "",
            "",
        ],
        [
            "  RSS after the c=32 run",
            "",
            fmt(after, " MB", 1),
            "",
            f"{parts['rss_kb_after']}; {fmt(recorded)} chats recorded (+ warm-up)",
            "",
            "",
        ],
    ]


def recording_rows(bench: Bench) -> List[List[str]]:
    # The rounds' own c=32 runs (recording on is the c=32 row itself), else the recording scenario's.
    key, on_label = ("c32", "chatproxy") if NO_RECORD in bench.raw.get("c32", {}) else ("recording_c32", "record")
    runs_on = bench.raw.get(key, {}).get(on_label, [])
    runs_off = bench.raw.get(key, {}).get(NO_RECORD, [])
    on, off = (med(bench, key, label, lambda r: r["rps"]) for label in (on_label, NO_RECORD))
    # Round by round (each round's two runs were minutes apart at most), then the median of those.
    costs = [(1 - a["rps"] / b["rps"]) * 100 for a, b in zip(runs_on, runs_off) if b["rps"]]
    cost = load.median(costs) if costs else None
    notes = fmt(cost, "% cost", 1)
    if len(costs) > 1:
        notes += f" (rounds {min(costs):.1f} to {max(costs):.1f}%); " + "; ".join(
            f"{name} {spread(bench, key, label, lambda r: r['rps'])}"
            for name, label in (("on", on_label), ("off", NO_RECORD))
        )
    rows = [
        [
            "req/s c=32 recording on / --no-record",
            "",
            f"{fmt(on)} / {fmt(off)}",
            "",
            notes,
            "≤ 10% cost",
            verdict_unless_paired(bench, "recording cost, % of c=32 req/s", cost, lambda v: v <= 10),
        ]
    ]
    for label, field in (
        ("added latency p50, c=1", "latency_p50_us"),
        ("added latency p99, c=1", "latency_p99_us"),
        ("time to first byte added", "ttfb_p50_us"),
    ):
        pick = lambda r, f=field: r[f]  # noqa: E731
        direct = med(bench, "probe", "direct", pick)
        on, off = (med(bench, "recording_probe", which, pick) for which in ("record", "no-record"))
        show = lambda v: fmt(None if v is None or direct is None else (v - direct) / 1000, " ms", 3)  # noqa: E731
        rows.append([f"  {label}: recording on / off", "", f"{show(on)} / {show(off)}", "", "", "", ""])
    return rows


def growth_rows(bench: Bench) -> List[List[str]]:
    sizes = bench.settings.growth_sizes
    if not bench.raw.get("growth"):
        return []
    per = {s: med(bench, "growth", str(s), lambda r: 1e6 / r["rps"]) for s in sizes}
    base = per[sizes[0]]
    rows = []
    for size in sizes:
        start = med(bench, "growth", str(size), lambda r: r["startup_s"] * 1000)
        rss = med(bench, "growth", str(size), lambda r: r["rss_kb_after"] / 1024)
        pss = med(bench, "growth", str(size), lambda r: r["pss_kb_after"] / 1024)
        parts = parts_mb(bench, "growth", str(size), "rss_kb_after")
        pss_parts = parts_mb(bench, "growth", str(size), "pss_kb_after")
        rss_note = fmt(rss, " MB", 1) + (f" ({parts[0]:.1f} + {parts[1]:.1f})" if parts else "")
        pss_note = fmt(pss, " MB", 1) + (f" ({pss_parts[0]:.1f} + {pss_parts[1]:.1f})" if pss_parts else "")
        value = per[size]
        growth = value / base * 100 - 100 if value is not None and base else None
        label = f"time/request c=1 after {size:,} conversations"
        last = size == sizes[-1]
        ok = verdict(bench, label + ", % over 0", growth, lambda v: v <= 10) if last else ""
        rows.append(
            [
                label,
                "",
                fmt(value, " µs"),
                "",
                f"{fmt(growth, '%', 1)}; rounds {spread(bench, 'growth', str(size), lambda r: 1e6 / r['rps'])} µs; "
                f"start {fmt(start, ' ms')}; RSS {rss_note}; PSS {pss_note}",
                "≤ +10% vs 0" if last else "",
                ok,
            ]
        )
    return rows + resume_rows(bench) + per_conversation_rows(bench) + written_rows(bench)


def long_chat_rows(bench: Bench) -> List[List[str]]:
    rows: List[List[str]] = []
    chat = bench.raw.get("long_chat")
    if chat:
        ratio = chat["journal_bytes"] / chat["text_bytes"]
        rows.append(
            [
                f"journal bytes, one {chat['turns']}-turn chat / its text",
                "",
                f"{chat['journal_bytes']:,} / {chat['text_bytes']:,}",
                "",
                f"{ratio:.2f}×",
                "≤ 2×",
                verdict(bench, "journal bytes / chat text", ratio, lambda v: v <= 2),
            ]
        )
        rows.append(
            [
                f"time/turn at turns {chat['turns'] - 9}-{chat['turns']} (whole history each)",
                fmt(chat["last10_ms"]["direct"], " ms", 2),
                fmt(chat["last10_ms"]["chatproxy"], " ms", 2),
                "",
                f"turns 1-10: {chat['first10_ms']['chatproxy']:.2f} ms",
                "",
                "",
            ]
        )
    return rows


def resume_rows(bench: Bench) -> List[List[str]]:
    rows = []
    for size in [s for s in bench.settings.growth_sizes if s]:
        seconds = med(bench, "growth", str(size), lambda r: r["startup_s"])
        first = med(bench, "growth", str(size), lambda r: r["first_start_s"])
        stop = med(bench, "growth", str(size), lambda r: r["first_stop_s"])
        label = f"resume of {size:,} conversations after a clean exit"
        last = size == max(bench.settings.growth_sizes)
        rows.append(
            [
                label,
                "",
                fmt(seconds, " s", 2),
                "",
                f"spawn to listening; from the journal alone {fmt(first, ' s', 2)}, its stop {fmt(stop, ' s', 2)}",
                "≤ 5 s" if last else "",
                verdict(bench, label + " (s)", seconds, lambda v: v <= 5) if last else "",
            ]
        )
    return rows


def per_conversation_rows(bench: Bench) -> List[List[str]]:
    """The recorder's memory per resumed conversation: its RSS (and PSS) after the run at each size, less at 0."""
    sizes = bench.settings.growth_sizes
    rows = []
    for size in [s for s in sizes if s]:
        figures = {}
        for measure in ("rss_kb", "pss_kb"):
            pick = lambda r, m=measure: r[f"{m.replace('_kb', '_recorder_kb')}_after"]  # noqa: E731
            now, empty = med(bench, "growth", str(size), pick), med(bench, "growth", str(sizes[0]), pick)
            figures[measure] = None if now is None or empty is None else (now - empty) * 1024 / size
        start = med(bench, "growth", str(size), lambda r: r["rss_recorder_kb_start"])
        empty_start = med(bench, "growth", str(sizes[0]), lambda r: r["rss_recorder_kb_start"])
        at_start = None if start is None or empty_start is None else (start - empty_start) * 1024 / size
        label = f"recorder memory per conversation at {size:,}"
        rows.append(
            [
                label,
                "",
                fmt(figures["rss_kb"], " B"),
                "",
                f"RSS over the {sizes[0]:,} run's, after the run; PSS {fmt(figures['pss_kb'], ' B')}; "
                f"just after resuming {fmt(at_start, ' B')}",
                "≤ 1 KB",
                verdict(bench, label + " (bytes of RSS)", figures["rss_kb"], lambda v: v <= 1024),
            ]
        )
    return rows


def written_rows(bench: Bench) -> List[List[str]]:
    """Bytes the recorder wrote (journal, live dataset, its replies to the proxy) per new record, over the
    journal line of one: from resuming to 1.5 s after the run, the final write on exit aside."""
    rows = []
    for size in bench.settings.growth_sizes:
        per_record = med(bench, "growth", str(size), lambda r: r["recorder_written"] / max(r["records"], 1))
        line = med(bench, "growth", str(size), lambda r: r["journal_added"] / max(r["records"], 1))
        ratio = per_record / line if per_record is not None and line else None
        label = f"bytes written per new record after {size:,}"
        rows.append(
            [
                label,
                "",
                fmt(per_record, " B"),
                "",
                f"{fmt(ratio, '×', 1)} its journal line ({fmt(line, ' B')})",
                "≤ 4×",
                verdict(bench, label + " / journal line", ratio, lambda v: v <= 4),
            ]
        )
    return rows


def startup_rows(bench: Bench) -> List[List[str]]:
    runs = [seconds * 1000 for seconds in bench.raw.get("startup", {}).get("chatproxy", [])]
    value = load.median(runs) if runs else None
    worst = max(runs) if runs else None
    return [
        [
            "start-up to listening (median)",
            "",
            fmt(value, " ms"),
            "",
            f"max {fmt(worst, ' ms')}",
            "≤ 300 ms",
            verdict(bench, "start-up to listening (ms)", value, lambda v: v <= 300),
        ]
    ]


def all_rows(bench: Bench) -> List[List[str]]:
    """The rows of the scenarios that ran (see --only)."""
    sections = (
        ("c32", throughput_rows),
        ("probe", latency_rows),
        ("memory", memory_rows),
        ("recording_probe", recording_rows),
        ("paired", paired_rows),
        ("growth", growth_rows),
        ("long_chat", long_chat_rows),
        ("startup", startup_rows),
    )
    return [row for key, rows in sections if key in bench.raw for row in rows(bench)]


HEADER = ["figure", "direct", "chatproxy", "nginx", "ratio / notes", "target", "verdict"]


def render_table(rows: List[List[str]]) -> str:
    widths = [max(len(row[i]) for row in [HEADER] + rows) for i in range(len(HEADER))]
    line = lambda row: "  ".join(cell.ljust(width) for cell, width in zip(row, widths)).rstrip()  # noqa: E731
    return "\n".join([line(HEADER), line(["-" * w for w in widths])] + [line(row) for row in rows])


def error_lines(bench: Bench) -> List[str]:
    """Failed requests seen by the load generator, per scenario and target."""
    lines = []
    for key, per_target in bench.raw.items():
        if not isinstance(per_target, dict):
            continue
        for target, runs in per_target.items():
            for run in runs if isinstance(runs, list) else []:
                if isinstance(run, dict) and (run.get("error_count") or run.get("failed")):
                    lines.append(f"{key} via {target}: {run.get('errors') or run}")
    return lines


def cpu_seconds() -> Tuple[float, float]:
    """Busy CPU seconds of the whole machine (/proc/stat, steal included), and of this script with its
    finished children (every process it started has been waited for when this is read at the end)."""
    return machine_cpu()[0], own_cpu()


def own_cpu() -> float:
    """CPU seconds of this script and of its children that have ended (wrk, once each run is over)."""
    return float(
        sum(
            getattr(resource.getrusage(who), field)
            for who in (resource.RUSAGE_SELF, resource.RUSAGE_CHILDREN)
            for field in ("ru_utime", "ru_stime")
        )
    )


def chatproxy_version() -> str:
    """The package version, and the checkout's commit when it is a git checkout (+ if chatproxy/ has edits)."""
    version = f"chatproxy {chatproxy.__version__}"
    try:
        commit = subprocess.run(
            ["git", "rev-parse", "--short", "HEAD"], cwd=REPO, capture_output=True, text=True, timeout=10
        )
        edits = subprocess.run(
            ["git", "status", "--porcelain", "--", "chatproxy"], cwd=REPO, capture_output=True, text=True, timeout=10
        )
    except (OSError, subprocess.SubprocessError):
        return version
    if commit.returncode != 0:
        return version
    return f"{version} at {commit.stdout.strip()}{'+' if edits.stdout.strip() else ''}"


def python_speed() -> float:
    """Seconds of CPU for ten million steps of a Python loop: how fast this machine runs Python right now
    (a shared machine runs it several times slower than an idle one), to compare runs by."""
    started, total = time.process_time(), 0
    for step in range(10_000_000):
        total += step
    return time.process_time() - started


def environment(settings: Settings, nginx_workers: Optional[str]) -> Dict[str, Any]:
    return {
        "python_loop_s": python_speed(),
        "chatproxy": chatproxy_version(),
        "cpus": os.cpu_count(),
        "load_average_at_start": os.getloadavg(),
        "python": sys.version.split()[0],
        "load_generator": "wrk " + (load.WRK or "") if load.WRK else "scripts/bench_client.py",
        "nginx": f"worker_processes {nginx_workers}" if nginx_workers else "not run",
        "settings": dataclasses.asdict(settings),
    }


def print_report(bench: Bench, env: Dict[str, Any], as_json: bool) -> None:
    rows = all_rows(bench)
    if as_json:
        keyed = [dict(zip(HEADER, row)) for row in rows]
        json.dump(
            {
                "environment": env,
                "targets": bench.checks,
                "rows": keyed,
                "errors": error_lines(bench),
                "proxy_log": bench.problems,
                "raw": bench.raw,
            },
            sys.stdout,
            indent=1,
            default=str,
        )
        print()
        return
    print(
        f"{env['chatproxy']} benchmark: {env['cpus']} CPUs, "
        f"load average {env['load_average_at_start'][0]:.2f} at start, "
        f"{env['load_average_at_end'][0]:.2f} at end; other processes used {env['other_processes_cpu_share']:.0%} "
        "of the CPUs meanwhile; "
        f"Python {env['python']} (10M-step loop: {env['python_loop_s']:.2f} s of CPU), "
        f"load by {env['load_generator']}, nginx {env['nginx']}, "
        f"{bench.settings.rounds} round(s) of {bench.settings.seconds} s runs; medians over rounds, "
        "with the lowest–highest, the other processes' and steal's median share of the CPUs in those runs, "
        "and how long a 1M-step Python loop took just before each (the CPU's speed then)"
    )
    print(render_table(rows))
    errors = error_lines(bench)
    print("\nfailed requests: " + ("none" if not errors else ""))
    for line in errors:
        print("  " + line)
    print("chatproxy log lines besides start-up and records: " + ("none" if not bench.problems else ""))
    for line in summarise_problems(bench.problems):
        print("  " + line)


_ADDRESS = re.compile(r"\b\d+\.\d+\.\d+\.\d+:\d+\b")
# wrk ends a run by closing its connections, requests in flight included: one such line per connection.
_RUN_END = "client went away"


def summarise_problems(lines: List[str], limit: int = 20) -> List[str]:
    """Identical lines (client address aside) counted once; the expected end-of-run lines explained."""
    counts: Dict[str, int] = {}
    for line in lines:
        line = _ADDRESS.sub("ADDR", line)
        counts[line] = counts.get(line, 0) + 1
    shown = [
        f"{count}× {line}" + (" (expected when a run ends)" if _RUN_END in line else "")
        for line, count in sorted(counts.items(), key=lambda item: (_RUN_END in item[0], -item[1]))
    ]
    return shown[:limit] + ([f"... and {len(shown) - limit} more distinct lines"] if len(shown) > limit else [])


# -- profiling ---------------------------------------------------------------------------------------


def run_profile(bench: Bench, output: Path) -> None:
    py_spy = bench_profile.find_py_spy()
    if py_spy is None:
        sys.exit("py-spy not found: pip install py-spy")
    output.mkdir(parents=True, exist_ok=True)
    seconds = 5 if bench.settings.rounds == 1 else 15
    for name, stream, extra in (
        ("c32-json", False, ()),
        ("c32-json-no-record", False, ("--no-record",)),
        ("c32-stream", True, ()),
    ):
        proxy = bench.fresh_proxy(extra)
        try:
            load.run_load(proxy.port, 32, 1, stream=stream, chunks=STREAM_CHUNKS)
            # The proxy, and its recorder process where there is one (not with --no-record).
            sampled = {name: proxy.pid, **{f"{name}-recorder": pid for pid in proxy.recorder_pids()}}
            progress(f"profiling {' and '.join(sampled)} for {seconds} s")
            samplers = [
                bench_profile.record(py_spy, pid, seconds, output / f"{file}.folded") for file, pid in sampled.items()
            ]
            result = load.run_load(proxy.port, 32, seconds + 2, stream=stream, chunks=STREAM_CHUNKS)
            for sampler in samplers:
                sampler.join()
        finally:
            bench.finish(proxy, f"profile {name}")
        rate = f"{result['rps'] * STREAM_CHUNKS:,.0f} chunks/s" if stream else f"{result['rps']:,.0f} req/s"
        for file in sampled:
            print(
                bench_profile.report(
                    f"{file} ({rate} while sampled)", bench_profile.summarise(output / f"{file}.folded")
                )
            )
            print()


SCENARIOS: Dict[str, Callable[[Bench], None]] = {
    "startup": run_startup,
    "rounds": run_rounds,
    "recording": run_recording_cost,
    "paired": run_paired,
    "memory": run_memory,
    "growth": run_growth,
    "long-chat": run_long_chat,
}


def main(argv: Optional[List[str]] = None) -> int:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--quick", action="store_true", help="one round of short runs, under a minute")
    parser.add_argument("--json", action="store_true", help="print JSON instead of the table")
    parser.add_argument("--profile", metavar="DIR", type=Path, help="profile chatproxy with py-spy instead")
    parser.add_argument("--nginx-workers", default="1", help="nginx worker_processes (default 1)")
    parser.add_argument(
        "--no-wrk", action="store_true", help="use the built-in load generator even if wrk is installed"
    )
    parser.add_argument("--no-nginx", action="store_true", help="leave nginx out even if it is installed")
    parser.add_argument("--keep", action="store_true", help="keep the work folder (logs, datasets)")
    parser.add_argument(
        "--only",
        type=lambda text: text.split(","),
        default=list(SCENARIOS),
        metavar="NAMES",
        help=f"run only these scenarios, comma-separated: {','.join(SCENARIOS)} (default: all)",
    )
    parser.add_argument(
        "--growth-sizes",
        type=lambda text: tuple(int(size) for size in text.split(",")),
        metavar="N,N,...",
        help="sessions resumed by the growth scenario, in conversations (default 0,1000,20000); "
        "the first is the baseline, e.g. 0,20000,200000 for the memory-per-conversation figures",
    )
    parser.add_argument("--growth-seconds", type=int, metavar="S", help="length of each growth run (default 1, 5 full)")
    args = parser.parse_args(argv)
    unknown = set(args.only) - set(SCENARIOS)
    if unknown:
        parser.error(f"unknown scenario(s) {', '.join(sorted(unknown))}: choose from {', '.join(SCENARIOS)}")
    if args.no_wrk:
        load.WRK = None
    use_nginx = shutil.which("nginx") is not None and not args.no_nginx
    settings = QUICK if args.quick else FULL
    if args.growth_sizes:
        settings = dataclasses.replace(settings, growth_sizes=args.growth_sizes)
    if args.growth_seconds:
        settings = dataclasses.replace(settings, growth_seconds=args.growth_seconds)
    workdir = Path(tempfile.mkdtemp(prefix="chatproxy-bench-"))
    env = environment(settings, args.nginx_workers if use_nginx else None)
    become_subreaper()
    started, cpu_before = time.perf_counter(), cpu_seconds()
    bench = Bench(settings, workdir, args.nginx_workers if use_nginx else None)
    try:
        if args.profile:
            run_profile(bench, args.profile)
            return 0
        for name, scenario in SCENARIOS.items():
            if name in args.only:
                scenario(bench)
    finally:
        bench.close()
        running = reap_adopted()  # before cpu_seconds(): an orphaned recorder's CPU is chatproxy's too
        if running:
            bench.problems.append(
                f"{running} process(es) still running 30 s after the end: their CPU counts as other processes'"
            )
        if args.keep:
            progress(f"work folder kept: {workdir}")
        else:
            shutil.rmtree(workdir, ignore_errors=True)
    machine, own = cpu_seconds()
    elapsed = time.perf_counter() - started
    env["load_average_at_end"] = os.getloadavg()
    others = (machine - cpu_before[0]) - (own - cpu_before[1])
    env["other_processes_cpu_share"] = max(0.0, others) / (elapsed * (os.cpu_count() or 1))
    print_report(bench, env, args.json)
    return 0


if __name__ == "__main__":
    sys.exit(main())
