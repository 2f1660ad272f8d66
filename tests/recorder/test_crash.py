"""kill -9 at random moments: whatever the proxy reported saved is in the journal, the ShareGPT file
is valid JSON after every kill, and each restart with --session resumes cleanly.

The proxy runs as `python -m chatproxy` in a subprocess; the fake backend runs in this process and
streams every reply slowly, so kills land mid-stream as well as between exchanges.
"""

from __future__ import annotations

import itertools
import json
import os
import random
import re
import signal
import sys
import threading
import time
from pathlib import Path
from typing import Dict, Iterator, List

import h11

from fake_upstream import Behaviour, Chat
from subproc import ROOT, ProxyProcess
from support_faults import H11Client, chat_body, streamed_text

SESSION = "crash"
WORKERS = 8
KILLS = 3
SAVED = re.compile(r"recorded crash: .*, (\d+) turns, (\d+) chars")


class SlowEcho(Behaviour):
    """The default echo, streamed one small piece every few milliseconds."""

    async def run(self, ex) -> None:
        text = json.loads(ex.request.body)["messages"][-1]["content"]
        await Chat("echo: " + text, chunk_size=4, gap=0.004).run(ex)


def start(upstream, datasets: Path) -> ProxyProcess:
    proxy = ProxyProcess(
        [
            sys.executable,
            "-m",
            "chatproxy",
            "--target",
            upstream.url,
            "--port",
            "0",
            "--session",
            SESSION,
            "--datasets",
            str(datasets),
        ],
        cwd=ROOT,
    )
    proxy.wait_started()
    return proxy


def chars_of(text: str) -> int:
    """What the "recorded" line counts for one chat: the user's text plus the echoed reply."""
    return len(text) + len("echo: " + text)


def drive(port: int, counter: Iterator[int], stop: threading.Event, finished: Dict[int, str]) -> None:
    """Streaming chats back to back until the proxy dies; the text of every one that finished.

    Chat i sends i + 1 letters, so each chat's size (and its "recorded" line) is unique."""
    lock = threading.Lock()

    def worker() -> None:
        while not stop.is_set():
            with lock:
                i = next(counter)
            text = "m" * (i + 1)
            try:
                with H11Client(port, timeout=5) as client:
                    reply = client.request("POST", "/v1/chat/completions", chat_body(text, stream=True))
            except (OSError, h11.RemoteProtocolError):
                return  # the proxy is gone
            if reply.complete and streamed_text(reply.body) == "echo: " + text:
                with lock:
                    finished[i] = text
            else:
                return

    threads = [threading.Thread(target=worker) for _ in range(WORKERS)]
    for thread in threads:
        thread.start()
    for thread in threads:
        thread.join(10)


def journal_records(datasets: Path) -> List[dict]:
    data = (datasets / f"{SESSION}.jsonl").read_bytes() if (datasets / f"{SESSION}.jsonl").exists() else b""
    lines = data.split(b"\n")
    assert lines[-1] == b"", "a journal line was torn (writes are one write() each)"
    return [json.loads(line) for line in lines[:-1]]


def test_kill_9_at_random_moments_loses_nothing_reported_and_resumes(upstream, tmp_path):
    seed = int.from_bytes(os.urandom(4), "big")
    rng = random.Random(seed)
    upstream.push(*[SlowEcho() for _ in range(5000)])
    datasets = tmp_path / "datasets"
    reported: List[int] = []  # chars of every record the proxy said it saved
    finished: Dict[int, str] = {}
    counter = itertools.count()
    for kill in range(KILLS):
        proxy = start(upstream, datasets)
        stop = threading.Event()
        driver = threading.Thread(target=drive, args=(proxy.port, counter, stop, finished))
        driver.start()
        time.sleep(rng.uniform(0.05, 0.35))  # the random moment of the kill (this is the fault, not a wait)
        proxy.proc.send_signal(signal.SIGKILL)
        proxy.finish(10)
        stop.set()
        driver.join(10)
        reported += [int(m.group(2)) for m in map(SAVED.search, proxy.lines) if m]

        records = journal_records(datasets)
        ids = [r["id"] for r in records]
        assert len(ids) == len(set(ids)), f"duplicate records (seed {seed})"
        in_journal = sorted(sum(len(m.get("content", "")) for m in r["messages"]) for r in records)
        missing = sorted(set(reported) - set(in_journal))
        assert not missing, f"reported saved but not in the journal: {missing} (seed {seed}, kill {kill})"
        snapshot = datasets / f"{SESSION}.json"
        if snapshot.exists():
            json.loads(snapshot.read_bytes())  # atomic replace: never half-written

    assert reported, f"no chat was recorded before any kill (seed {seed})"
    for record in journal_records(datasets):  # each record is one client's own exchange, whole
        [user, reply] = record["messages"]
        assert set(user["content"]) == {"m"} and reply["content"] == "echo: " + user["content"]

    with start(upstream, datasets) as proxy:
        assert not any("damaged line" in line or "cut short" in line for line in proxy.lines), proxy.lines
        with H11Client(proxy.port) as client:
            reply = client.request("POST", "/v1/chat/completions", chat_body("after the crashes", stream=True))
        assert streamed_text(reply.body) == "echo: after the crashes"
        proxy.wait_for(r"recorded crash: ")
        assert proxy.stop() == 0
    records = journal_records(datasets)
    dataset = json.loads((datasets / f"{SESSION}.json").read_bytes())
    complete = [r for r in records if r["meta"].get("complete", True)]
    assert len(dataset) == len(complete)
    assert sorted(c["conversations"][-1]["value"] for c in dataset) == sorted(
        r["messages"][-1]["content"] for r in complete
    )
