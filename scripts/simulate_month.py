"""A month of team traffic through one proxy left running with `--rotate 1d`, in minutes.

    python scripts/simulate_month.py                     # 30 days, 200,000 conversations
    python scripts/simulate_month.py --per-day 1000      # 30 days of 1,000 new conversations each

What runs (on 127.0.0.1): a canned OpenAI-compatible backend in its own process, the real proxy
(`python -m chatproxy --rotate 1d`, its recorder in a second process, as users run it) and, in this
process, a keep-alive client with 32 connections. The day boundary comes from the recorder's clock hook
(CHATPROXY_TEST_CLOCK_FILE: a file holding the time the recorder rotates by); the script sets it to
09:00 UTC of each day in turn, once the recorder has written the day before (`pending_records` 0 on
/_chatproxy/status; "behind" is how long that took after the last reply), so every day's traffic lands
in that day's part.

Each day starts `--per-day` new conversations of one or two turns; a fifth of them go on the next day
(the client resends the whole history, as frontends do) and a tenth of those on the day after: chats
that span parts. After each day the proxy's and the recorder's memory is read from
/proc/PID/smaps_rollup (RSS, and PSS, which counts shared pages once). At the end the proxy is stopped
and `export --all` must write exactly one record per conversation, with every turn it was sent.
"""

from __future__ import annotations

import argparse
import asyncio
import calendar
import json
import multiprocessing
import multiprocessing.connection
import os
import random
import re
import signal
import subprocess
import sys
import tempfile
import time
import urllib.request
from pathlib import Path
from typing import Dict, List, Optional, Tuple

REPO = Path(__file__).resolve().parent.parent
MONTH_START = calendar.timegm((2026, 11, 1, 9, 0, 0))  # 09:00 UTC on day 1
DAY = 86400
CONNECTIONS = 32
GO_ON = 0.2  # of a day's new chats, the share that goes on the next day
GO_ON_AGAIN = 0.1  # of those, the share that goes on the day after
LISTENING = re.compile(r"listening on http://127\.0\.0\.1:(\d+) ")
REPLY = json.dumps(
    {
        "id": "chatcmpl-1",
        "object": "chat.completion",
        "created": 1_700_000_000,
        "model": "team-model",
        "choices": [{"index": 0, "message": {"role": "assistant", "content": "Noted."}, "finish_reason": "stop"}],
        "usage": {"prompt_tokens": 20, "completion_tokens": 2, "total_tokens": 22},
    }
).encode()
RESPONSE = b"HTTP/1.1 200 OK\r\nContent-Type: application/json\r\nContent-Length: %d\r\n\r\n%s" % (len(REPLY), REPLY)


# -- the backend: every request answered with the same reply ---------------------------------------------


def serve_backend(port_out: multiprocessing.connection.Connection) -> None:
    async def handle(reader: asyncio.StreamReader, writer: asyncio.StreamWriter) -> None:
        try:
            while True:
                head = await reader.readuntil(b"\r\n\r\n")
                length = re.search(rb"(?i)content-length:\s*(\d+)", head)
                await reader.readexactly(int(length.group(1)) if length else 0)
                writer.write(RESPONSE)
        except (asyncio.IncompleteReadError, ConnectionError):
            writer.close()

    async def main() -> None:
        server = await asyncio.start_server(handle, "127.0.0.1", 0)
        port_out.send(server.sockets[0].getsockname()[1])
        await server.serve_forever()

    asyncio.run(main())


# -- the client: chats, each turn after the last one's reply ---------------------------------------------


class Chat:
    def __init__(self, number: int) -> None:
        self.number = number
        self.messages: List[Dict[str, str]] = [{"role": "system", "content": "You help the platform team."}]
        self.turns = 0

    def next_request(self) -> bytes:
        text = f"chat {self.number} turn {self.turns}: " + "what about the deploy? " * 4
        self.messages.append({"role": "user", "content": text})
        return json.dumps({"model": "team-model", "messages": self.messages}).encode()

    def answered(self) -> None:
        self.messages.append({"role": "assistant", "content": "Noted."})
        self.turns += 1


async def run_day(port: int, work: List[Tuple[Chat, int]]) -> int:
    """Send every chat its turns for the day over CONNECTIONS keep-alive connections; returns requests."""
    queue: asyncio.Queue[Tuple[Chat, int]] = asyncio.Queue()
    for item in work:
        queue.put_nowait(item)
    sent = 0

    async def connection() -> None:
        nonlocal sent
        reader, writer = await asyncio.open_connection("127.0.0.1", port)
        while not queue.empty():
            chat, turns = queue.get_nowait()
            for _ in range(turns):
                body = chat.next_request()
                head = "POST /v1/chat/completions HTTP/1.1\r\nHost: x\r\nContent-Type: application/json\r\n"
                writer.write(f"{head}Content-Length: {len(body)}\r\n\r\n".encode() + body)
                response = await reader.readuntil(b"\r\n\r\n")
                if not response.startswith(b"HTTP/1.1 200"):
                    raise RuntimeError(response.decode(errors="replace"))
                length = re.search(rb"(?i)content-length:\s*(\d+)", response)
                await reader.readexactly(int(length.group(1)) if length else 0)
                chat.answered()
                sent += 1
        writer.close()

    await asyncio.gather(*(connection() for _ in range(CONNECTIONS)))
    return sent


def wait_recorded(port: int) -> float:
    """Seconds until the recorder has written every exchange of the day (`pending_records` 0)."""
    began = time.monotonic()
    while True:
        with urllib.request.urlopen(f"http://127.0.0.1:{port}/_chatproxy/status", timeout=10) as answer:
            if json.load(answer).get("pending_records", 0) == 0:
                return time.monotonic() - began
        time.sleep(0.05)


# -- memory ----------------------------------------------------------------------------------------------


def rollup_kb(pid: int) -> Tuple[int, int]:
    """(Rss, Pss) of /proc/PID/smaps_rollup in kB."""
    found = {"Rss": 0, "Pss": 0}
    with open(f"/proc/{pid}/smaps_rollup") as rollup:
        for line in rollup:
            key = line.split(":", 1)[0]
            if key in found:
                found[key] = int(line.split()[1])
    return found["Rss"], found["Pss"]


def recorder_pid(proxy_pid: int) -> Optional[int]:
    try:
        children = Path(f"/proc/{proxy_pid}/task/{proxy_pid}/children").read_text().split()
    except OSError:
        return None
    return int(children[0]) if children else None


def mb(kb: int) -> str:
    return f"{kb / 1024:.1f}"


def size_of(path: Path) -> int:
    if path.is_dir():
        return sum(p.stat().st_size for p in path.rglob("*") if p.is_file())
    return path.stat().st_size if path.exists() else 0


# -- the month -------------------------------------------------------------------------------------------

HEADER = "day  parts     chats  requests  req/s  behind   proxy RSS / PSS MB   recorder RSS / PSS MB"


def main() -> int:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--days", type=int, default=30)
    parser.add_argument("--per-day", type=int, default=200_000 // 30 + 1, help="new conversations a day")
    parser.add_argument("--seed", type=int, default=0)
    parser.add_argument("--keep", metavar="DIR", help="record into DIR and keep it (default: a temporary folder)")
    args = parser.parse_args()
    random.seed(args.seed)
    work = Path(args.keep) if args.keep else Path(tempfile.mkdtemp(prefix="chatproxy-month-"))
    work.mkdir(parents=True, exist_ok=True)
    datasets, clock = work / "datasets", work / "clock"
    set_clock(clock, MONTH_START)
    backend, backend_port = start_backend()
    env = {k: v for k, v in os.environ.items() if not k.startswith("CHATPROXY_")}
    env.update(PYTHONPATH=str(REPO), CHATPROXY_TEST_CLOCK_FILE=str(clock))
    command = [sys.executable, "-m", "chatproxy", "--target", f"http://127.0.0.1:{backend_port}/v1", "--port", "0"]
    command += ["--datasets", str(datasets), "--session", "team", "--rotate", "1d"]
    log = work / "proxy.log"
    with open(log, "wb") as output:
        proxy = subprocess.Popen(command, env=env, stdout=subprocess.DEVNULL, stderr=output)
    port = wait_for_port(proxy, log)
    print(HEADER)
    started = time.monotonic()
    chats, requests, peaks = simulate(args.days, args.per_day, port, proxy.pid, clock, datasets)
    elapsed = time.monotonic() - started
    proxy.send_signal(signal.SIGTERM)
    proxy.wait(300)
    backend.terminate()
    if proxy.returncode != 0:
        print(f"the proxy exited with {proxy.returncode}; see {log}", file=sys.stderr)
        return 1
    print(f"\n{len(chats):,} conversations, {requests:,} requests in {elapsed:.0f} s")
    describe_parts(datasets)
    for name, (rss, pss) in peaks.items():
        print(f"highest after a day, {name}: RSS {mb(rss)} MB, PSS {mb(pss)} MB")
    return check_export(work, datasets, env, chats)


def start_backend() -> Tuple[multiprocessing.Process, int]:
    receive, send = multiprocessing.Pipe(duplex=False)
    backend = multiprocessing.Process(target=serve_backend, args=(send,), daemon=True)
    backend.start()
    return backend, int(receive.recv())


Peaks = Dict[str, Tuple[int, int]]


def simulate(
    days: int, per_day: int, port: int, pid: int, clock: Path, datasets: Path
) -> Tuple[List[Chat], int, Peaks]:
    """Each day: set the recorder's clock, send the day's turns, read the memory of both processes."""
    chats: List[Chat] = []
    tomorrow: List[Chat] = []
    day_after: List[Chat] = []
    requests = 0
    peaks: Peaks = {"proxy": (0, 0), "recorder": (0, 0)}
    for day in range(days):
        set_clock(clock, MONTH_START + day * DAY)
        new = [Chat(len(chats) + i) for i in range(per_day)]
        chats += new
        today = [(chat, random.choice((1, 2))) for chat in new] + [(chat, 1) for chat in tomorrow + day_after]
        random.shuffle(today)
        day_after = [chat for chat in tomorrow if random.random() < GO_ON_AGAIN]
        tomorrow = [chat for chat in new if random.random() < GO_ON]
        began = time.monotonic()
        sent = asyncio.run(run_day(port, today))
        requests += sent
        rate = sent / max(time.monotonic() - began, 1e-9)
        behind = wait_recorded(port)  # the next day's clock must not reach exchanges still on their way
        memory = {"proxy": rollup_kb(pid), "recorder": rollup_kb(recorder_pid(pid) or pid)}
        for name, (rss, pss) in memory.items():
            peaks[name] = (max(peaks[name][0], rss), max(peaks[name][1], pss))
        parts = len(list(datasets.glob("team@*.jsonl")))
        (proxy_rss, proxy_pss), (recorder_rss, recorder_pss) = memory["proxy"], memory["recorder"]
        print(
            f"{day + 1:>3} {parts:>6} {len(chats):>9,} {requests:>9,} {rate:>6,.0f} {behind:>7.1f}"
            f"   {mb(proxy_rss):>7} / {mb(proxy_pss):<7}      {mb(recorder_rss):>7} / {mb(recorder_pss):<7}",
            flush=True,
        )
    return chats, requests, peaks


def describe_parts(datasets: Path) -> None:
    journals = sorted(datasets.glob("team@*.jsonl"))
    live = [datasets / (journal.name[: -len(".jsonl")] + ".json") for journal in journals]
    print(f"{len(journals)} parts, as ls lists them: {journals[0].name} ... {journals[-1].name}")
    largest = max(size_of(journal) for journal in journals) / 1e6
    everything = sum(size_of(journal) for journal in journals) / 1e6
    print(f"largest part: journal {largest:.1f} MB, live dataset {max(size_of(path) for path in live) / 1e6:.1f} MB")
    print(f"all parts' journals: {everything:.0f} MB")


def check_export(work: Path, datasets: Path, env: Dict[str, str], chats: List[Chat]) -> int:
    out = work / "month.jsonl"
    command = [sys.executable, "-m", "chatproxy", "export", "--all", "--datasets", str(datasets)]
    command += ["--format", "openai", "--out", str(out)]
    report = work / "export.log"
    began = time.monotonic()
    with open(report, "wb") as output:
        export = subprocess.Popen(command, env=env, stdout=output, stderr=subprocess.STDOUT)
    _, status, usage = os.wait4(export.pid, 0)  # its own peak memory, not this process's other children's
    export.returncode = os.waitstatus_to_exitcode(status)
    took = time.monotonic() - began
    summary = report.read_text(errors="replace")
    if export.returncode != 0:
        print(f"export failed:\n{summary}", file=sys.stderr)
        return 1
    turns: Dict[int, int] = {}
    copies = 0
    with open(out, encoding="utf-8") as records:
        for line in records:
            users = [m["content"] for m in json.loads(line)["messages"] if m["role"] == "user"]
            number = int(users[0].split()[1])
            copies += number in turns
            turns[number] = (
                len(users) if [int(u.split()[3].rstrip(":")) for u in users] == list(range(len(users))) else -1
            )
    wrong = [chat.number for chat in chats if turns.get(chat.number) != chat.turns]
    print(f"export --all: {len(turns) + copies:,} records in {took:.1f} s, peak RSS {usage.ru_maxrss / 1024:.0f} MB")
    print("  " + summary.strip().splitlines()[0] if summary.strip() else "")
    verdict = "one record per conversation, every turn in it" if not wrong and not copies else "MISMATCH"
    print(f"  {verdict}: {len(chats):,} conversations, {copies} extra copies, {len(wrong)} not whole")
    return 0 if verdict != "MISMATCH" else 1


def set_clock(path: Path, moment: float) -> None:
    temporary = path.with_suffix(".tmp")
    temporary.write_text(str(moment))
    os.replace(temporary, path)


def wait_for_port(proxy: subprocess.Popen[bytes], log: Path) -> int:
    """The port from the proxy's start-up line."""
    deadline = time.monotonic() + 30
    while time.monotonic() < deadline:
        found = LISTENING.search(log.read_text(errors="replace")) if log.exists() else None
        if found:
            return int(found.group(1))
        if proxy.poll() is not None:
            raise RuntimeError(f"the proxy exited with {proxy.returncode}:\n{log.read_text(errors='replace')}")
        time.sleep(0.05)
    raise RuntimeError("the proxy did not start listening")


if __name__ == "__main__":
    sys.exit(main())
