"""Back-pressure without loss: a recorder that falls behind costs the proxy bounded memory and its clients nothing.

Past `--recorder-memory`, exchanges the recorder has not confirmed wait in SESSION.spool (recorder/spool.py).
The suites here are real: `python -m chatproxy` (or the proxy on a thread of this process) in front of the
fake backend, the recorder child frozen with SIGSTOP and killed with SIGKILL, the proxy's memory read from
/proc, a full disk from /dev/full, and the journal on disk counted at the end. The spool's format and its
bookkeeping get pure tests first.
"""

from __future__ import annotations

import asyncio
import json
import logging
import os
import signal
import statistics
import threading
import time
import zlib
from pathlib import Path
from typing import Dict, List, Optional, Tuple

import h11
import pytest
from hypothesis import given
from hypothesis import strategies as st
from test_recorder_process import cli_proxy, journal_file, running, status_of, the_recorder_of

from chatproxy.config import RecordOptions
from chatproxy.recorder.capture import Exchange
from chatproxy.recorder.pipe import exchange_fields, exchange_from, frame
from chatproxy.recorder.process import RecorderProcess
from chatproxy.recorder.spool import (
    KEPT,
    SPOOLED,
    Backlog,
    Segment,
    encode,
    handover,
    read_records,
)

from support_faults import post_chat, wait_until

FILLER = " ".join(f"word{i}" for i in range(60))  # about 400 bytes a turn: the spool fills in seconds
TURNS = 4  # per conversation: every request carries the history, so order within a chat shows in the records


# -- exchanges as the relay hands them over ------------------------------------------------------


def chat_exchange(text: str, history: Optional[List[dict]] = None) -> Exchange:
    """A finished non-streamed chat completion, as the relay hands it to the recorder."""
    messages = [*(history or []), {"role": "user", "content": text}]
    reply = {
        "id": "c1",
        "object": "chat.completion",
        "created": 1,
        "model": "fake-model",
        "choices": [
            {"index": 0, "message": {"role": "assistant", "content": "echo: " + text}, "finish_reason": "stop"}
        ],
    }
    return Exchange(
        endpoint="chat.completions",
        path="/v1/chat/completions",
        request_body=json.dumps({"model": "fake-model", "messages": messages}).encode(),
        started=time.time(),
        status=200,
        response_body=json.dumps(reply).encode(),
        complete=True,
    )


def exchange_frame(text: str) -> bytes:
    return frame(("exchange", exchange_fields(chat_exchange(text))))


def last_user_text(message: tuple) -> str:
    body = json.loads(exchange_from(message[1]).request_body)
    return str(body["messages"][-1]["content"])


# -- the format ----------------------------------------------------------------------------------


def test_a_spool_record_is_magic_crc_then_the_pipe_frame() -> None:
    """encode() writes b"CPS1", the CRC-32 of the frame (big-endian), then the frame as the pipe carries it."""
    data = exchange_frame("hello")
    record = encode([data])
    assert record[:4] == b"CPS1"
    assert int.from_bytes(record[4:8], "big") == zlib.crc32(data)
    assert record[8:] == data
    messages, used, problem = read_records(record, at_end=True)
    assert (used, problem) == (len(record), "")
    assert [last_user_text(m) for m in messages] == ["hello"]


def test_every_cut_of_a_spool_gives_the_whole_records_before_it() -> None:
    """A spool cut at any byte (a crash mid-append) reads back as exactly the records wholly before the cut,
    the rest reported as cut short; nothing after the cut is ever unpickled."""
    records = [encode([exchange_frame(f"chat {i}")]) for i in range(3)]
    data = b"".join(records)
    ends = [sum(len(r) for r in records[: i + 1]) for i in range(3)]
    for cut in range(len(data) + 1):
        messages, used, problem = read_records(data[:cut], at_end=True)
        whole = sum(1 for end in ends if end <= cut)
        assert [last_user_text(m) for m in messages] == [f"chat {i}" for i in range(whole)], f"cut at {cut}"
        assert used == (ends[whole - 1] if whole else 0)
        assert problem == ("" if used == cut else "cut short"), f"cut at {cut}"


@given(st.integers(min_value=0, max_value=2000), st.integers(min_value=0, max_value=255))
def test_a_damaged_byte_ends_the_reading_at_its_record(offset: int, value: int) -> None:
    """One byte changed anywhere: the records before the damaged one are read, the damaged one and what
    follows are not (its checksum, magic or length no longer fits)."""
    records = [encode([exchange_frame(f"chat {i}")]) for i in range(3)]
    data = bytearray(b"".join(records))
    offset %= len(data)
    if data[offset] == value:
        return
    data[offset] = value
    damaged = 0 if offset < len(records[0]) else 1 if offset < len(records[0]) + len(records[1]) else 2
    messages, used, problem = read_records(bytes(data), at_end=True)
    assert [last_user_text(m) for m in messages] == [f"chat {i}" for i in range(damaged)]
    assert used == sum(len(r) for r in records[:damaged]) and problem


def test_a_record_whose_pickle_names_a_class_is_refused() -> None:
    """The spool is a file: whatever it holds is unpickled without importing anything. A record with the
    right checksum whose pickle names a class (os.system here) is not an exchange, and is never run."""
    import pickle

    payload = pickle.dumps(("exchange", (os.system,)))
    data = len(payload).to_bytes(4, "big") + payload
    messages, used, problem = read_records(encode([data]), at_end=True)
    assert (messages, used, problem) == ([], 0, "not an exchange")


@pytest.mark.parametrize("fields", [(), ("chat.completions", "/v1/chat/completions"), tuple(range(40))])
def test_a_record_with_other_fields_than_an_exchange_is_refused(fields: tuple) -> None:
    """A record that pickles fine but does not hold this version's Exchange fields (another build's spool,
    garbage with a valid checksum) is not an exchange: the reading stops there rather than fail later."""
    data = frame(("exchange", fields))
    assert read_records(encode([data]), at_end=True) == ([], 0, "not an exchange")


def test_a_range_read_while_the_proxy_appends_stops_at_a_whole_record() -> None:
    """Reading the live spool (at_end False), a record not yet whole is left for the next read."""
    data = encode([exchange_frame("one"), exchange_frame("two")])
    first = len(encode([exchange_frame("one")]))
    messages, used, problem = read_records(data[:-5], at_end=False)
    assert ([last_user_text(m) for m in messages], used, problem) == (["one"], first, "")


# -- the bookkeeping -----------------------------------------------------------------------------


def test_backlog_holds_frames_up_to_its_bound_then_opens_a_segment() -> None:
    """Frames are held in memory while they fit the bound; the next goes into a segment for the spool,
    and so do those after it while that segment is still open."""
    backlog = Backlog(limit=300)
    frames = [bytes([i]) * 100 for i in range(5)]
    assert [backlog.add(f, 0.0) for f in frames[:3]] == frames[:3]
    segment = backlog.add(frames[3], 0.0)
    assert isinstance(segment, Segment) and segment.frames == [frames[3]]
    assert backlog.add(frames[4], 0.0) is None and segment.frames == frames[3:]
    assert (backlog.in_memory, backlog.in_memory_bytes, backlog.spooled, len(backlog)) == (5, 500, 0, 5)
    assert handover(segment) is None  # not handed over before it is on disk


def test_backlog_confirms_in_order_across_memory_and_spool() -> None:
    """Written, a segment's frames leave memory and count as spooled; confirmations pop exchanges in the
    order they came, a segment counting as many as it holds (partly confirmed, it stays)."""
    backlog = Backlog(limit=150)
    first = b"a" * 100
    backlog.add(first, 0.0)
    segment = backlog.add(b"b" * 100, 0.0)
    assert isinstance(segment, Segment)
    assert backlog.add(b"c" * 100, 0.0) is None
    assert backlog.next_write() is segment and backlog.next_write() is None
    backlog.written(segment, 0, 232)
    assert (backlog.in_memory, backlog.in_memory_bytes, backlog.spooled, backlog.spooled_bytes) == (1, 100, 2, 232)
    assert handover(backlog.items[0]) == [first]
    backlog.confirm(2)
    assert segment.confirmed == 1 and backlog.items[0] is segment and backlog.spooled == 2
    backlog.restart()
    assert segment.confirmed == 0  # a new recorder process reads the whole segment again
    backlog.confirm(2)
    assert len(backlog) == 0 and (backlog.in_memory_bytes, backlog.spooled_bytes) == (0, 0)


def test_once_spilling_newer_exchanges_follow_into_the_spool_until_the_recorder_catches_up() -> None:
    """After a segment is written, memory has room again, but newer exchanges still go to the spool while
    an older frame waits in memory (so memory only ever holds the oldest, which the recorder takes first)
    or the spool holds more than a quarter of the bound; then they are held in memory again."""
    backlog = Backlog(limit=800)
    backlog.add(b"a" * 800, 0.0)
    spilled = backlog.add(b"b" * 100, 0.0)
    assert isinstance(spilled, Segment) and backlog.next_write() is spilled
    backlog.written(spilled, 0, 116)
    later = backlog.add(b"c" * 10, 0.0)
    assert isinstance(later, Segment), "held in memory behind the spool"
    assert backlog.next_write() is later
    backlog.written(later, 116, 142)
    backlog.confirm(1)  # the frame held in memory is on disk; 142 bytes spooled, under a quarter of 800
    assert backlog.add(b"d" * 10, 0.0) == b"d" * 10
    assert [type(item).__name__ for item in backlog.items] == ["Segment", "Segment", "bytes"]


def test_a_failed_spool_write_keeps_its_exchanges_in_memory_for_a_while() -> None:
    """A write that fails keeps the segment's frames (and those waiting) in memory, handed over as frames;
    until the retry time, new exchanges stay in memory past the bound; after it, spooling is tried again."""
    backlog = Backlog(limit=100)
    backlog.add(b"a" * 100, 0.0)
    segment = backlog.add(b"b" * 100, 0.0)
    assert isinstance(segment, Segment) and backlog.next_write() is segment
    waiting = backlog.add(b"c" * 100, 0.0)
    assert isinstance(waiting, Segment)
    delay = backlog.write_failed(segment, "disk full", now=10.0)
    assert delay > 0 and segment.state == KEPT and waiting.state == KEPT
    assert handover(segment) == [b"b" * 100]
    assert (backlog.errors, backlog.error) == (1, "disk full")
    assert backlog.add(b"d" * 100, 10.0) == b"d" * 100  # past the bound, but the spool is failing
    assert isinstance(backlog.add(b"e" * 100, 10.0 + delay), Segment)
    assert backlog.in_memory_bytes == 500 and backlog.spooled == 0
    assert backlog.write_failed(backlog.next_write() or segment, "disk full", 20.0) > delay  # backing off
    written = backlog.add(b"f" * 100, 1000.0)
    assert isinstance(written, Segment) and backlog.next_write() is written
    backlog.written(written, 0, 116)
    assert written.state == SPOOLED and backlog.error is None


# -- what the status shows ------------------------------------------------------------------------


def test_the_status_line_shows_the_backlog_once_it_matters() -> None:
    """The terminal's status line adds the backlog while the recorder is behind (anything spooled, a
    failing spool, or a tenth of the bound held), and nothing while a few exchanges wait for a commit."""
    from chatproxy.cli import status_text

    base = {"requests": 9, "recorded": 5, "errors": 0, "backlog_limit_bytes": 2 << 20}
    quiet = dict(base, backlog_in_memory=3, backlog_in_memory_bytes=6000, backlog_spooled=0)
    assert status_text(quiet, Path("d/s.json")) == "[9 requests | 5 recorded | 0 errors] -> d/s.json"
    behind = dict(quiet, backlog_in_memory=800, backlog_in_memory_bytes=2 << 20, backlog_spooled=12000)
    behind["backlog_spooled_bytes"] = 30 << 20
    assert status_text(behind, Path("d/s.json")) == (
        "[9 requests | 5 recorded | 0 errors | behind: 800 in memory (2.0 MB), 12000 spooled (30.0 MB)] -> d/s.json"
    )
    failing = dict(quiet, backlog_in_memory_bytes=3 << 20, spool_errors=2, spool_error="disk full")
    assert status_text(failing, None) == (
        "[9 requests | 5 recorded | 2 errors | behind: 3 in memory (3.0 MB), 0 spooled (0.0 MB), spool failing]"
        " (not recording)"
    )


@pytest.mark.parametrize("in_process", [False, True], ids=["recorder-process", "in-process"])
def test_both_recorders_report_their_backlog(upstream, make_proxy, in_process):
    """/_chatproxy/status carries the backlog fields whichever recorder runs: the recorder process with
    its bound and spool, the in-process one with what it holds and no bound (it does not spool)."""
    proxy = make_proxy(upstream.url, record=RecordOptions(snapshot_interval=0.05, in_process=in_process))
    assert post_chat(proxy.port, "counted").status == 200
    proxy.flush()
    status = status_of(proxy.port)
    expected = {
        "backlog_in_memory": 0,
        "backlog_in_memory_bytes": 0,
        "backlog_spooled": 0,
        "backlog_spooled_bytes": 0,
        "backlog_limit_bytes": None if in_process else 64 << 20,
        "spool": None if in_process else str(proxy.datasets / "test-session.spool"),
        "spool_errors": 0,
        "spool_error": None,
    }
    assert {key: status[key] for key in expected} == expected
    assert status["pending_records"] == 0 and status["recorded"] == 1


# -- load through a real proxy --------------------------------------------------------------------


class Conversations:
    """Clients on keep-alive connections, from a thread of their own, at a steady pace: `workers`
    connections each sending `pace` requests a second, in conversations of TURNS turns (each request
    carries the history so far). Every reply is checked; `answered` has (sent at, seconds, user text)."""

    def __init__(self, port: int, workers: int, pace: float, filler: str = FILLER) -> None:
        self.port = port
        self.workers = workers
        self.pace = pace
        self.filler = filler
        self.answered: List[Tuple[float, float, str]] = []
        self.chats: List[List[str]] = []  # each conversation's user texts, in turn order
        self.failures: List[str] = []
        self._stop = threading.Event()
        self._thread = threading.Thread(target=lambda: asyncio.run(self._main()), daemon=True)

    def start(self) -> Conversations:
        self._thread.start()
        return self

    def stop(self) -> None:
        self._stop.set()
        self._thread.join(30)
        assert not self._thread.is_alive(), "a client hung"

    def texts(self) -> List[str]:
        return [text for _, _, text in list(self.answered)]

    def latencies(self, start: float, end: float) -> List[float]:
        return [seconds for sent, seconds, _ in list(self.answered) if start <= sent < end]

    async def _main(self) -> None:
        await asyncio.gather(*(self._worker(n) for n in range(self.workers)))

    async def _worker(self, n: int) -> None:
        reader, writer = await asyncio.open_connection("127.0.0.1", self.port)
        conn = h11.Connection(h11.CLIENT)
        due = time.monotonic() + n / (self.workers * self.pace)  # spread out over one period
        try:
            for chat in range(1_000_000):
                history: List[dict] = []
                texts: List[str] = []
                self.chats.append(texts)
                for turn in range(TURNS):
                    if self._stop.is_set():
                        return
                    await asyncio.sleep(max(0.0, due - time.monotonic()))
                    due += 1 / self.pace
                    text = f"worker {n} chat {chat} turn {turn}: {self.filler}"
                    messages = [*history, {"role": "user", "content": text}]
                    sent = time.monotonic()
                    status, body = await _post(conn, reader, writer, messages)
                    seconds = time.monotonic() - sent
                    reply = json.loads(body)["choices"][0]["message"]["content"] if status == 200 else None
                    if reply != "echo: " + text:
                        self.failures.append(f"{text[:30]}: {status} {body[:100]!r}")
                        return
                    self.answered.append((sent, seconds, text))
                    texts.append(text)
                    history = [*messages, {"role": "assistant", "content": reply}]
        except Exception as exc:  # the proxy went away or broke the connection: a failure, told as one
            self.failures.append(f"worker {n}: {exc!r}")
        finally:
            writer.close()


async def _post(
    conn: h11.Connection, reader: asyncio.StreamReader, writer: asyncio.StreamWriter, messages: List[dict]
) -> Tuple[int, bytes]:
    body = json.dumps({"model": "fake-model", "messages": messages}).encode()
    head = h11.Request(
        method="POST",
        target="/v1/chat/completions",
        headers=[("Host", "proxy.test"), ("Content-Type", "application/json"), ("Content-Length", str(len(body)))],
    )
    writer.write(conn.send(head) + conn.send(h11.Data(data=body)) + conn.send(h11.EndOfMessage()))
    status, received = 0, bytearray()
    while True:
        event = conn.next_event()
        if event is h11.NEED_DATA:
            data = await reader.read(65536)
            if not data:
                raise ConnectionError("the proxy closed the connection")
            conn.receive_data(data)
        elif isinstance(event, h11.Response):
            status = event.status_code
        elif isinstance(event, h11.Data):
            received += event.data
        elif isinstance(event, h11.EndOfMessage):
            conn.start_next_cycle()
            return status, bytes(received)
        else:
            raise AssertionError(f"unexpected {event!r}")


def thread_disk_writes(pid: int) -> Dict[int, int]:
    """Bytes each thread of `pid` has sent to storage (per-thread I/O accounting), by thread id."""
    found = {}
    for tid in os.listdir(f"/proc/{pid}/task"):
        fields = dict(line.split(": ") for line in Path(f"/proc/{pid}/task/{tid}/io").read_text().splitlines())
        found[int(tid)] = int(fields["write_bytes"])
    return found


def cpu_seconds(pid: int) -> float:
    """User and system time of the whole process, every thread included."""
    fields = Path(f"/proc/{pid}/stat").read_text().rpartition(")")[2].split()
    return (int(fields[11]) + int(fields[12])) / os.sysconf("SC_CLK_TCK")


class RSSSampler:
    """The resident memory of one process, read from /proc every 0.2 s."""

    def __init__(self, pid: int) -> None:
        self.pid = pid
        self.samples: List[Tuple[float, int]] = []  # (time, bytes)
        self._stop = threading.Event()
        self._thread = threading.Thread(target=self._run, daemon=True)

    def start(self) -> RSSSampler:
        self._thread.start()
        return self

    def _run(self) -> None:
        while not self._stop.wait(0.2):
            try:
                status = Path(f"/proc/{self.pid}/status").read_text()
            except OSError:
                return
            kb = next(int(line.split()[1]) for line in status.splitlines() if line.startswith("VmRSS:"))
            self.samples.append((time.monotonic(), kb * 1024))

    def peak(self, start: float, end: float) -> int:
        return max(rss for moment, rss in self.samples if start <= moment < end)

    def stop(self) -> None:
        self._stop.set()
        self._thread.join(5)


def check_recorded_once(records: List[dict], load: Conversations) -> None:
    """Every turn a client got its reply for is in the journal once, nothing else is, and every
    conversation is one chain: turn k's record continues turn k-1's (so the turns were recorded in order)."""
    texts = [r["messages"][0]["content"] for r in records]
    twice = sorted({t for t in texts if texts.count(t) > 1})
    assert not twice, f"{len(twice)} recorded twice, e.g. {twice[0][:40]}"
    missing = set(load.texts()) - set(texts)
    assert not missing, f"{len(missing)} answered chats are not in the journal, e.g. {sorted(missing)[0][:40]}"
    assert sorted(texts) == sorted(load.texts())
    by_text = {r["messages"][0]["content"]: r for r in records}
    for chat in load.chats:
        for earlier, later in zip(chat, chat[1:]):
            record = by_text[later]
            assert record["parent"] == by_text[earlier]["id"] and len(record["messages"]) == 2, record["meta"]


def journal_so_far(path: Path) -> List[str]:
    """The user texts of the records in a journal being written: a line still being appended is left out."""
    data = path.read_bytes() if path.exists() else b""
    return [json.loads(line)["messages"][0]["content"] for line in data.split(b"\n")[:-1]]


def spooled_texts(path: Path) -> List[str]:
    messages, _, problem = read_records(path.read_bytes(), at_end=True)
    assert problem == ""
    return [last_user_text(m) for m in messages]


MEMORY_BOUND = 2 << 20
RSS_MARGIN = 8 << 20  # the interpreter's own growth under load (allocator pools, buffers), measured below 4 MB


@pytest.mark.timeout(300)
def test_a_recorder_frozen_for_a_minute_costs_bounded_memory_and_no_client_time(upstream, tmp_path):
    """Under steady load (16 keep-alive clients, up to 240 requests a second, 4-turn conversations), the recorder
    process is frozen with SIGSTOP for 60 s. The proxy holds at most --recorder-memory 2MiB of what it
    has not confirmed: its RSS while frozen stays within the bound plus a margin of what it was before,
    while the spool grows by tens of MB; every request succeeds, as fast as before (latency ratios), and
    /_chatproxy/status shows the backlog in memory and spooled. Let go (SIGCONT), the recorder catches up:
    every answered turn is in the journal once, each conversation a chain in turn order, and the spool is
    removed on a clean stop. (Without the bound, 60 s at this pace is about 30 MB more in the proxy.)"""
    datasets = tmp_path / "datasets"
    spool = datasets / "frozen.spool"
    with cli_proxy(upstream.url, datasets, "frozen", "--recorder-memory", "2MiB") as proxy:
        proxy.wait_started()
        recorder = the_recorder_of(proxy)
        rss = RSSSampler(proxy.proc.pid).start()
        load = Conversations(proxy.port, workers=16, pace=15.0).start()
        try:
            time.sleep(2)
            cpu_before = cpu_seconds(proxy.proc.pid)
            time.sleep(8)  # the load, steady: the baseline for memory, latency and CPU
            frozen_at = time.monotonic()
            cpu_frozen, writes_before = cpu_seconds(proxy.proc.pid), thread_disk_writes(proxy.proc.pid)
            os.kill(recorder, signal.SIGSTOP)
            wait_until(lambda: status_of(proxy.port)["backlog_spooled"] > 0, "the spool to be used", timeout=10)
            time.sleep(max(0.0, frozen_at + 60 - time.monotonic()))
            during = status_of(proxy.port)
            thawed_at = time.monotonic()
            cpu_thawed, writes_frozen = cpu_seconds(proxy.proc.pid), thread_disk_writes(proxy.proc.pid)
            os.kill(recorder, signal.SIGCONT)
            time.sleep(5)
        finally:
            load.stop()
            rss.stop()
        assert not load.failures, load.failures[:3]
        wait_until(lambda: status_of(proxy.port)["pending_records"] == 0, "the recorder to catch up", timeout=90)
        caught_up = time.monotonic() - thawed_at
        after = status_of(proxy.port)
        assert proxy.stop() == 0, proxy.lines[-20:]
    assert not running(recorder)
    assert not spool.exists()

    baseline = rss.peak(frozen_at - 5, frozen_at)
    frozen_peak = rss.peak(frozen_at, thawed_at)
    before = load.latencies(frozen_at - 8, frozen_at)
    while_frozen = load.latencies(frozen_at, thawed_at)
    rate_before, rate_frozen = len(before) / 8, len(while_frozen) / (thawed_at - frozen_at)
    written = {tid: writes_frozen[tid] - writes_before.get(tid, 0) for tid in writes_frozen}
    loop_thread = proxy.proc.pid  # the command line runs the event loop in the main thread
    figures = {
        "answered": len(load.answered),
        "rss_before_mb": baseline / 2**20,
        "rss_frozen_peak_mb": frozen_peak / 2**20,
        "spooled_exchanges": during["backlog_spooled"],
        "spooled_mb": during["backlog_spooled_bytes"] / 2**20,
        "in_memory_mb": during["backlog_in_memory_bytes"] / 2**20,
        "p50_ms_before": 1000 * statistics.median(before),
        "p50_ms_frozen": 1000 * statistics.median(while_frozen),
        "p90_ms_before": 1000 * statistics.quantiles(before, n=10)[-1],
        "p90_ms_frozen": 1000 * statistics.quantiles(while_frozen, n=10)[-1],
        "req_per_s_before": rate_before,
        "req_per_s_frozen": rate_frozen,
        "caught_up_s": caught_up,
        "cpu_ms_per_request_before": 1000 * (cpu_frozen - cpu_before) / len(before),
        "cpu_ms_per_request_frozen": 1000 * (cpu_thawed - cpu_frozen) / len(while_frozen),
        "disk_mb_written_by_the_loop_thread": written.pop(loop_thread) / 2**20,
        "disk_mb_written_by_other_threads": sum(written.values()) / 2**20,
    }
    print("\nfrozen recorder:", json.dumps({k: round(v, 2) for k, v in figures.items()}))

    # Held in memory: the bound, and at most the batch on its way to the spool.
    assert (
        during["backlog_in_memory_bytes"] <= MEMORY_BOUND + (512 << 10)
        and during["backlog_limit_bytes"] == MEMORY_BOUND
    )
    assert during["backlog_spooled_bytes"] >= 5 * MEMORY_BOUND, during  # the spool really took the load
    assert during["spool"] == str(spool) and during["spool_errors"] == 0 and during["spool_error"] is None
    assert frozen_peak - baseline <= MEMORY_BOUND + RSS_MARGIN, figures
    # Spooling is not the event loop's work: its thread sends nothing to the disk, another one does it all.
    assert figures["disk_mb_written_by_the_loop_thread"] < 0.5, figures
    assert figures["disk_mb_written_by_other_threads"] >= 0.9 * figures["spooled_mb"], figures
    # Nor does it slow the relay: the proxy's CPU per request (spool thread included), and what the
    # clients saw, as ratios. Other work on a shared machine moves latencies by ±2x from window to window
    # whether or not anything is spooled; a loop that waited for each fsync would be far beyond these.
    assert figures["cpu_ms_per_request_frozen"] <= 1.5 * figures["cpu_ms_per_request_before"], figures
    assert rate_frozen >= 0.6 * rate_before, figures
    assert figures["p50_ms_frozen"] <= 3 * figures["p50_ms_before"] + 2, figures
    assert (after["backlog_in_memory"], after["backlog_spooled"], after["backlog_spooled_bytes"]) == (0, 0, 0)
    check_recorded_once(journal_file(datasets, "frozen"), load)


@pytest.mark.timeout(120)
def test_proxy_killed_while_the_spool_holds_exchanges_records_each_once_on_restart(upstream, tmp_path):
    """The recorder frozen until the spool holds hundreds of exchanges, then let go in short steps until
    it has recorded some of the spooled ones but not all; then the proxy and its recorder are SIGKILLed.
    What the proxy held in memory is older than anything spooled, so the recorder wrote it first.
    Restarted with the same --session, the new recorder records what the spool holds before anything
    else, skipping what the journal already has: every turn any client got a reply for is in the journal
    exactly once, in order, and the spool is gone. (Before the freeze the recorder keeps up: the spool is
    not in use. Had it been, exchanges held in memory behind it could be lost, as in-flight ones are.)"""
    datasets = tmp_path / "datasets"
    spool = datasets / "killed.spool"
    with cli_proxy(upstream.url, datasets, "killed", "--recorder-memory", "2MiB") as proxy:
        proxy.wait_started()
        recorder = the_recorder_of(proxy)
        # 4 KB a turn: the spool takes several reads and commits to catch up, so the kill can land halfway.
        load = Conversations(proxy.port, workers=8, pace=25.0, filler=FILLER * 10).start()
        try:
            wait_until(lambda: len(load.answered) >= 50, "chats before the freeze", timeout=10)
            os.kill(recorder, signal.SIGSTOP)
            assert not spool.exists(), "the recorder fell behind before the freeze: the test's premise is gone"
            wait_until(lambda: status_of(proxy.port)["backlog_spooled"] >= 500, "the spool to fill", timeout=30)
        finally:
            load.stop()
        assert not load.failures, load.failures[:3]
        answered = len(load.answered)
        wait_until(
            lambda: status_of(proxy.port)["pending_records"] + status_of(proxy.port)["recorded"] >= answered,
            "every answered exchange to be handed over",
            timeout=5,
        )

        in_spool = set(spooled_texts(spool))  # nearly all: the last batch may still be on its way
        assert len(in_spool) >= 500

        def recorded_from_spool() -> int:
            return len(in_spool & set(journal_so_far(datasets / "killed.jsonl")))

        deadline = time.monotonic() + 20
        while recorded_from_spool() < 20:  # in steps of a few ms, so the kill finds it halfway
            assert time.monotonic() < deadline, "the recorder did not get to the spool"
            os.kill(recorder, signal.SIGCONT)
            time.sleep(0.003)
            os.kill(recorder, signal.SIGSTOP)
        os.kill(recorder, signal.SIGKILL)
        proxy.proc.kill()
        proxy.proc.wait(5)
        wait_until(lambda: not running(recorder), "the recorder to die", timeout=5)
    in_spool = set(spooled_texts(spool))  # what the killed proxy left
    halfway = recorded_from_spool()
    assert halfway < len(in_spool), "the recorder caught up before the kill"
    assert spool.exists()

    with cli_proxy(upstream.url, datasets, "killed") as second:
        second.wait_started()
        second.wait_for(rf"killed.spool: recording {len(in_spool)} exchange\(s\) left there by a proxy")
        assert not spool.exists()
        assert second.stop() == 0, second.lines[-20:]
    print(f"\nkilled: {answered} answered, {len(in_spool)} spooled, {halfway} of them recorded before the kill")
    check_recorded_once(journal_file(datasets, "killed"), load)


@pytest.mark.parametrize("moment", ["frozen", "halfway"])
def test_a_recorder_killed_with_exchanges_in_the_spool_is_handed_them_again(upstream, make_proxy, moment):
    """The recorder process killed (the proxy alive) while the spool holds exchanges: before it reached
    them, or halfway through them (some of a spooled batch recorded, not reported). The new recorder is
    handed each spooled batch again, in its place: every chat is recorded once, none twice, and the
    proxy's count of what waits ends at zero."""
    proxy = make_proxy(upstream.url, record=RecordOptions(snapshot_interval=0.05, recorder_memory=8 * 1024))
    recorder = proxy.proxy.recorder
    assert isinstance(recorder, RecorderProcess)
    first = proxy.run(lambda: recorder.pid)
    # 40 KB a chat, 6 MB in all: the recorder needs several reads of the spool and several commits for it.
    texts = [f"restart {i}: " + FILLER * 100 for i in range(150)]
    os.kill(first, signal.SIGSTOP)
    try:
        for text in texts:
            assert post_chat(proxy.port, text).status == 200
        wait_until(lambda: status_of(proxy.port)["pending_records"] == len(texts), "every chat handed over")
        assert status_of(proxy.port)["backlog_spooled"] > 100
        if moment == "halfway":
            journal = proxy.datasets / "test-session.jsonl"
            deadline = time.monotonic() + 20
            while len(journal_so_far(journal)) < 30:
                assert time.monotonic() < deadline, "the recorder did not get to the spool"
                os.kill(first, signal.SIGCONT)
                time.sleep(0.005)
                os.kill(first, signal.SIGSTOP)
            assert status_of(proxy.port)["backlog_spooled"] > 0, "it caught up before the kill"
    finally:
        os.kill(first, signal.SIGKILL)  # never left frozen: the proxy's stop would wait for it
    wait_until(lambda: proxy.run(lambda: recorder.pid) not in (None, first), "a new recorder process", timeout=5)
    proxy.flush()
    status = status_of(proxy.port)
    assert (status["pending_records"], status["backlog_in_memory"], status["backlog_spooled"]) == (0, 0, 0)
    assert [r["messages"][0]["content"] for r in journal_file(proxy.datasets, "test-session")] == texts


def test_a_zero_bound_spools_every_exchange_and_records_each_once(upstream, make_proxy):
    """--recorder-memory 0: every exchange the recorder has not confirmed is in the spool (fsynced) before
    it is handed over, even while the recorder keeps up; each is recorded once, in order, and the spool is
    emptied once drained."""
    proxy = make_proxy(upstream.url, record=RecordOptions(snapshot_interval=0.05, recorder_memory=0))
    recorder = proxy.proxy.recorder
    assert isinstance(recorder, RecorderProcess)
    spool = proxy.datasets / "test-session.spool"
    texts = [f"zero {i}" for i in range(11)]
    for text in texts[:10]:
        assert post_chat(proxy.port, text).status == 200
    proxy.flush()
    assert spool.exists()
    pid = proxy.run(lambda: recorder.pid)
    os.kill(pid, signal.SIGSTOP)
    try:
        assert post_chat(proxy.port, texts[10]).status == 200
        wait_until(lambda: status_of(proxy.port)["backlog_spooled"] == 1, "the exchange to be spooled")
        assert status_of(proxy.port)["backlog_in_memory"] == 0
    finally:
        os.kill(pid, signal.SIGCONT)
    proxy.flush()
    assert [r["messages"][0]["content"] for r in journal_file(proxy.datasets, "test-session")] == texts
    wait_until(lambda: spool.stat().st_size == 0, "the spool to be emptied once drained")
    assert status_of(proxy.port)["pending_records"] == 0


# -- a spool left by a crash -----------------------------------------------------------------------


def write_spool(path: Path, texts: List[str], tail: bytes = b"") -> bytes:
    """A spool as a killed proxy leaves it: one record per chat, then `tail`. Returns the records' bytes."""
    path.parent.mkdir(parents=True, exist_ok=True)
    data = encode([exchange_frame(text) for text in texts])
    path.write_bytes(data + tail)
    return data


@pytest.mark.parametrize("in_process", [False, True], ids=["recorder-process", "in-process"])
@pytest.mark.parametrize("damage", ["torn", "bad-checksum"])
def test_a_torn_spool_tail_is_set_aside_and_the_rest_recorded(upstream, make_proxy, caplog, in_process, damage):
    """A spool whose last record was cut short by a crash (or whose bytes no longer match its checksum):
    the whole records before it are recorded, once, before new chats; the damaged bytes are moved to
    SESSION.spool.torn-<time>, never read as an exchange; the spool is removed."""
    caplog.set_level(logging.INFO, logger="chatproxy")
    first = make_proxy(upstream.url)
    assert post_chat(first.port, "already recorded").status == 200
    first.wait_recorded(1)
    first.stop()
    spool = first.datasets / "test-session.spool"
    last = encode([exchange_frame("the damaged one")])
    if damage == "torn":
        tail = last[: len(last) // 2]
    else:
        tail = last[:-3] + bytes([last[-3] ^ 0xFF]) + last[-2:]
    write_spool(spool, ["already recorded", "left 1", "left 2"], tail)

    second = make_proxy(upstream.url, record=RecordOptions(in_process=in_process, snapshot_interval=0.05))
    assert isinstance(second.proxy.recorder, RecorderProcess) != in_process
    assert not spool.exists()
    (aside,) = list(first.datasets.glob("test-session.spool.torn-*"))
    assert aside.read_bytes() == tail
    assert post_chat(second.port, "after").status == 200
    second.flush()
    texts = [r["messages"][0]["content"] for r in journal_file(first.datasets, "test-session")]
    assert texts == ["already recorded", "left 1", "left 2", "after"]
    lines = [r.getMessage() for r in caplog.records]
    assert any("recording 3 exchange(s) left there by a proxy" in line for line in lines), lines
    problem = "cut short" if damage == "torn" else "checksum mismatch"
    assert any(f"the last {len(tail)} bytes are not a whole record ({problem}" in line for line in lines), lines


# -- a full disk -----------------------------------------------------------------------------------


def test_a_full_disk_under_the_spool_keeps_exchanges_in_memory_and_says_so(upstream, make_proxy, caplog):
    """The spool on a disk with no space left (SESSION.spool made a link to /dev/full: the kernel's
    ENOSPC): the proxy does not fail a request or stop; what it cannot spool stays in memory past the
    bound, with an error in the log and in /_chatproxy/status. Once space is back, spooling resumes, and
    when the recorder runs again every chat is recorded once."""
    from support_faults import post_chat

    caplog.set_level(logging.INFO, logger="chatproxy")
    bound = 16 * 1024
    proxy = make_proxy(upstream.url, record=RecordOptions(snapshot_interval=0.05, recorder_memory=bound))
    recorder = proxy.proxy.recorder
    assert isinstance(recorder, RecorderProcess)
    spool = proxy.datasets / "test-session.spool"
    spool.symlink_to("/dev/full")
    pid = proxy.run(lambda: recorder.pid)
    os.kill(pid, signal.SIGSTOP)
    texts = [f"full disk {i}: {FILLER}" for i in range(60)]
    try:
        for text in texts[:40]:
            assert post_chat(proxy.port, text).status == 200
        wait_until(lambda: status_of(proxy.port)["backlog_in_memory"] == 40, "the chats to be handed over")
        status = status_of(proxy.port)
        assert "No space left on device" in status["spool_error"], status
        assert status["spool_errors"] >= 1 and status["backlog_spooled"] == 0
        assert status["backlog_in_memory_bytes"] > 2 * bound
        errors = [r for r in caplog.records if r.levelno >= logging.ERROR]
        assert errors and "could not spool" in errors[0].getMessage(), [r.getMessage() for r in errors]
        assert "No space left on device; keeping them in memory (" in errors[0].getMessage()
        assert "KB held; --recorder-memory is 16 KB); next try in 0.5 s" in errors[0].getMessage()
        assert len(errors) <= 3  # retried after a pause, not once per chat

        spool.unlink()  # space again
        time.sleep(0.6)  # past the first retry delay
        for text in texts[40:]:
            assert post_chat(proxy.port, text).status == 200
        wait_until(lambda: status_of(proxy.port)["backlog_spooled"] > 0, "spooling to resume")
        assert status_of(proxy.port)["spool_error"] is None
    finally:
        os.kill(pid, signal.SIGCONT)
    proxy.flush()
    assert status_of(proxy.port)["pending_records"] == 0
    recorded = [r["messages"][0]["content"] for r in journal_file(proxy.datasets, "test-session")]
    assert recorded == texts
    wait_until(lambda: spool.stat().st_size == 0, "the spool to be emptied once drained")


def test_a_stop_while_the_journal_fails_leaves_the_spool_for_the_next_start(upstream, make_proxy, caplog):
    """The journal on a full device (the recorder cannot commit, so it confirms nothing and the backlog
    spills to the spool), then a stop: the recorder leaves the spooled exchanges where they are and says
    so, the proxy keeps the spool and says when it is recorded; the next start on the session, with the
    disk fixed, records each of them once. (What was held in memory is reported as not recorded.)"""
    caplog.set_level(logging.INFO, logger="chatproxy")
    proxy = make_proxy(upstream.url, record=RecordOptions(snapshot_interval=0.05, recorder_memory=16 * 1024))
    journal = proxy.datasets / "test-session.jsonl"
    journal.symlink_to("/dev/full")
    texts = [f"failing {i}: {FILLER}" for i in range(60)]
    for text in texts:
        assert post_chat(proxy.port, text).status == 200
    wait_until(lambda: status_of(proxy.port)["pending_records"] == len(texts), "every chat handed over")
    assert status_of(proxy.port)["backlog_spooled"] > 0
    spool = proxy.datasets / "test-session.spool"
    proxy.stop()
    lines = [r.getMessage() for r in caplog.records if r.levelno >= logging.ERROR]
    assert any("stay in the spool for the next start" in line for line in lines), lines
    assert any(f"are kept in {spool}; they are recorded when session test-session" in line for line in lines), lines
    in_spool = spooled_texts(spool)
    assert in_spool and set(in_spool) < set(texts)

    journal.unlink()  # the disk is fixed
    second = make_proxy(upstream.url)
    second.flush()
    assert not spool.exists()
    assert [r["messages"][0]["content"] for r in journal_file(second.datasets, "test-session")] == in_spool
