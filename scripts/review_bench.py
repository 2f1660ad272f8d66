"""Speed checks of the review page (figures printed beside their targets, not a timed test).

    python scripts/review_bench.py [--conversations 20000] [--before DIR]   # the page over a big session
    python scripts/review_bench.py relay [--page poll|browser]      # the proxy's relay, page closed vs open

`page` (the default): a session of 20,000 conversations, `chatproxy review` started on it; the time from the
command's start to its first answer (given while the journal is still read: it says `loading`) and to the
first page of the whole list, searches, the dashboard and the export count, each with its target. The
session is left as the recorder leaves one, its resume cache beside it (which the page reads instead of
decoding and hashing every message); the first page is timed once more from the journal alone.

`relay`: the proxy (python -m chatproxy) in front of scripts/bench_upstream.py, recording into a live session
beside the 20,000-conversation one, under closed-loop load (scripts/bench_client.py) and with one client at
a time for latency; once with the review page closed, once open on /_chatproxy/review/ (`poll`: a client
asking exactly what the page asks, at its pace, the page's own load included; `browser`: headless Chromium
showing the page), for --rounds rounds, alternating. Prints the medians side by side and their ratio.
"""

from __future__ import annotations

import argparse
import http.client
import json
import os
import random
import shutil
import socket
import statistics
import subprocess
import sys
import tempfile
import threading
import time
from pathlib import Path
from typing import Any, Callable, Dict, List, Optional, Tuple

from bench_procs import loop_ms

REPO = Path(__file__).resolve().parent.parent
SCRIPTS = REPO / "scripts"
WORDS = "rain window model token prompt answer python table river cloud budget summary error retry stream".split()
PAGE = "/_chatproxy/review/"
POLL_SECONDS = 3.0  # app.js: the list is asked again every 3 s while the page is visible
LOADING_POLL_SECONDS = 0.05  # app.js: ... and 0.05 s after each answer while the sessions are read (wait=1)

# Targets (on the 2-core machine the project is measured on).
FIRST_PAGE_TARGET = 1.0  # s from the command's start to the first page of the whole list
SEARCH_TARGET = 0.2  # s for a search
SEARCHES = ("q=drizzle", "q=budget+summary", "q=question+17.1", "model=llama*&q=river", "tools=1&q=river")
RELAY_RATIO_TARGET = 0.95  # page open / closed, requests per second: within the noise of a run


def make_session(folder: Path, count: int, name: str = "big") -> Path:
    """`count` two- to six-turn chats over a week, a tenth with tools, written as the recorder writes them."""
    rng = random.Random(0)
    folder.mkdir(parents=True, exist_ok=True)
    path = folder / f"{name}.jsonl"
    with open(path, "wb") as out:
        for n in range(count):
            messages: List[Dict[str, Any]] = []
            for turn in range(rng.randint(1, 3)):
                words = " ".join(rng.choice(WORDS) for _ in range(rng.randint(5, 60)))
                messages.append({"role": "user", "content": f"question {n}.{turn}: {words}"})
                if n % 10 == 0 and turn == 0:
                    call = {"id": f"call_{n}", "name": "lookup", "arguments": json.dumps({"q": words[:40]})}
                    messages.append({"role": "assistant", "content": "", "tool_calls": [call]})
                    messages.append({"role": "tool", "tool_call_id": f"call_{n}", "content": '{"found": true}'})
                messages.append({"role": "assistant", "content": f"answer {n}.{turn}: {words[::-1]}"})
            when = f"2026-05-{1 + n * 7 // count:02d}T{n % 24:02d}:{n % 60:02d}:00.000Z"
            meta = {
                "time": when,
                "model": rng.choice(["gpt-4o", "llama-3", "claude-sonnet-4"]),
                "endpoint": "/v1/chat/completions",
                "api": "chat.completions",
                "complete": True,
                "tags": [],
                "usage": {"total_tokens": rng.randint(20, 2000)},
            }
            record = {"v": 1, "id": f"{n:016x}", "parent": None, "base": 0, "messages": messages, "meta": meta}
            out.write(json.dumps(record, ensure_ascii=False, separators=(",", ":")).encode() + b"\n")
    resume(folder, name)
    return path


def resume(folder: Path, name: str) -> None:
    """Open the session as the recorder does when it resumes one, and close it: beside the journal this
    leaves the resume cache (`.NAME.jsonl.cache`) that every recorded session has."""
    sys.path.insert(0, str(REPO))
    from chatproxy.config import RecordOptions
    from chatproxy.recorder.store import DatasetStore

    store = DatasetStore(folder, name, RecordOptions())
    store.open()
    store.close()


def get(port: int, path: str, timeout: float = 120) -> Tuple[int, Any]:
    conn = http.client.HTTPConnection("127.0.0.1", port, timeout=timeout)
    conn.request("GET", PAGE + path)
    reply = conn.getresponse()
    body = reply.read()
    conn.close()
    return reply.status, json.loads(body) if reply.status == 200 and path.startswith("api/") else body


def timed(port: int, path: str) -> Tuple[float, Any]:
    start = time.perf_counter()
    status, body = get(port, path)
    assert status == 200, (status, body)
    return time.perf_counter() - start, body


def verdict(value: float, target: float, lower_is_better: bool = True) -> str:
    good = value <= target if lower_is_better else value >= target
    return "ok" if good else "MISSED"


def row(figure: str, measured: str, target: str = "", result: str = "") -> None:
    print(f"{figure:<44} {measured:>14}  {target:>10}  {result}")


# ---------------------------------------------------------------------------------------------------------
# The page over a big session
# ---------------------------------------------------------------------------------------------------------


# (figure, target in seconds or None): the rows of the page's table, in order.
PAGE_FIGURES: List[Tuple[str, Optional[float]]] = [
    ("listening after", None),
    ("first answer (HTML, CSS, JS, list)", None),
    ("first page of the whole list", FIRST_PAGE_TARGET),
    ("  CPU the review process used until then", None),
    ("first page, from the journal alone", None),
    *((f"search {query}", SEARCH_TARGET) for query in SEARCHES),
    ("page 40 of the list", None),
    ("dashboard (api/stats)", None),
    ("dashboard again", None),
    ("export count (messages, everything)", None),
    ("export count again (kept)", None),
    ("export count of a search (q=river)", None),
]


def page_bench(conversations: int, before: Optional[Path], repeat: int) -> int:
    with tempfile.TemporaryDirectory() as tmp:
        folder = Path(tmp) / "datasets"
        started = time.perf_counter()
        journal = make_session(folder, conversations)
        print(
            f"session: {conversations} conversations, {journal.stat().st_size / 1e6:.1f} MB "
            f"(written in {time.perf_counter() - started:.1f} s); load average {os.getloadavg()[0]:.2f}; "
            f"a 1M-step Python loop takes {loop_ms():.0f} ms (the CPU's speed now: it changes over minutes)"
        )
        runs: List[Dict[str, Any]] = []
        earlier: List[Dict[str, Any]] = []
        for _ in range(repeat):  # alternately, so that a busy spell of the machine falls on both
            runs.append(page_figures(folder, REPO, conversations))
            if before is not None:
                earlier.append(page_figures(folder, before, conversations))
        cache = folder / ".big.jsonl.cache"
        cache.rename(folder / "cache.aside")  # a journal copied without it, or recorded by an older chatproxy
        alone = [page_figures(folder, REPO, conversations, whole=False) for _ in range(repeat)]
        now = medians(runs)
        now["first page, from the journal alone"] = medians(alone)["first page of the whole list"]
        then = medians(earlier) if earlier else None
    print()
    print(f"{'figure':<44} {'measured':>10} {'before' if then else '':>10} {'target':>10}  verdict")
    for name, target in PAGE_FIGURES:
        value = now[name]
        was = f"{then[name] * 1000:.0f} ms" if then and name in then else ""
        goal = f"< {target * 1000:.0f} ms" if target else ""
        result = verdict(value, target) if target else ""
        print(f"{name:<44} {value * 1000:>7.0f} ms {was:>10} {goal:>10}  {result}")
    print(f"{'review process memory (RSS)':<44} {now['rss'] / 1e6:>7.0f} MB")
    print(
        f"(medians of {repeat} runs; search: best of 5; {now['hits']}; load average now {os.getloadavg()[0]:.2f}; "
        f"the loop now {loop_ms():.0f} ms)"
    )
    return 0


def medians(runs: List[Dict[str, Any]]) -> Dict[str, Any]:
    return {
        name: statistics.median(run[name] for run in runs) if isinstance(value, float) else value
        for name, value in runs[0].items()
    }


def page_figures(folder: Path, package: Path, conversations: int, whole: bool = True) -> Dict[str, Any]:
    """`chatproxy review` (the copy of the package in `package`) over `folder`: the figures, in seconds
    (not `whole`: up to the first page's)."""
    env = dict(os.environ, PYTHONPATH=str(package))
    command = [sys.executable, "-m", "chatproxy", "review", "big", "--datasets", str(folder), "--port", "0"]
    figures: Dict[str, Any] = {}
    started = time.perf_counter()
    # In the package's folder: `-m` puts the working directory first on the path, before PYTHONPATH.
    proc = subprocess.Popen(command, stdout=subprocess.PIPE, text=True, env=env, cwd=package)
    try:
        assert proc.stdout is not None
        line = proc.stdout.readline()
        figures["listening after"] = time.perf_counter() - started
        port = int(line.rsplit(":", 1)[1].split("/", 1)[0])
        for static in ("", "app.css", "app.js"):
            get(port, static)
        _, first = timed(port, "api/list")
        figures["first answer (HTML, CSS, JS, list)"] = time.perf_counter() - started
        while first.get("loading") is not None:  # as the page does: it asks again while told it is loading
            time.sleep(LOADING_POLL_SECONDS)
            _, first = timed(port, "api/list?wait=1")
        figures["first page of the whole list"] = time.perf_counter() - started
        figures["  CPU the review process used until then"] = _cpu_seconds(proc.pid)
        assert first["total"] == conversations, first["total"]
        if not whole:
            return figures
        hits = []
        for query in SEARCHES:
            figures[f"search {query}"] = min(timed(port, "api/list?" + query)[0] for _ in range(5))
            hits.append(f"{query}: {timed(port, 'api/list?' + query)[1]['total']}")
        figures["hits"] = ", ".join(hits)
        figures["page 40 of the list"] = min(timed(port, "api/list?page=40")[0] for _ in range(5))
        figures["dashboard (api/stats)"] = timed(port, "api/stats")[0]
        figures["dashboard again"] = timed(port, "api/stats")[0]
        figures["export count (messages, everything)"] = timed(port, "api/export?profile=messages")[0]
        figures["export count again (kept)"] = timed(port, "api/export?profile=messages")[0]
        figures["export count of a search (q=river)"] = timed(port, "api/export?profile=messages&q=river")[0]
        figures["rss"] = _rss_mb(proc.pid) * 1e6
    finally:
        proc.terminate()
        proc.wait(10)
    return figures


def _cpu_seconds(pid: int) -> float:
    """User and system CPU time of a process so far (less moved than wall time by a busy machine); 0 if gone."""
    try:
        with open(f"/proc/{pid}/stat") as stat:
            fields = stat.read().rsplit(")", 1)[1].split()
    except OSError:
        return 0.0
    return (int(fields[11]) + int(fields[12])) / os.sysconf("SC_CLK_TCK")


def _rss_mb(pid: int) -> float:
    try:
        with open(f"/proc/{pid}/status") as status:
            return next(int(line.split()[1]) for line in status if line.startswith("VmRSS:")) / 1024
    except (OSError, StopIteration):
        return 0.0


# ---------------------------------------------------------------------------------------------------------
# The relay with the page closed and open
# ---------------------------------------------------------------------------------------------------------


def free_port() -> int:
    with socket.socket() as probe:
        probe.bind(("127.0.0.1", 0))
        return int(probe.getsockname()[1])


def wait_accepting(port: int, proc: subprocess.Popen, timeout: float = 120) -> None:  # type: ignore[type-arg]
    deadline = time.monotonic() + timeout
    while time.monotonic() < deadline:
        try:
            socket.create_connection(("127.0.0.1", port), timeout=1).close()
            return
        except OSError:
            if proc.poll() is not None:
                raise RuntimeError(f"{proc.args!r} exited with {proc.returncode}") from None
            time.sleep(0.01)
    raise RuntimeError(f"nothing accepted on port {port}")


def page_processes(pid: int) -> List[int]:
    """The review page's processes the proxy `pid` started (chatproxy review --for-proxy)."""
    found = []
    for task in Path(f"/proc/{pid}/task").iterdir():
        for child in (task / "children").read_text().split():
            try:
                if b"--for-proxy" in Path(f"/proc/{child}/cmdline").read_bytes():
                    found.append(int(child))
            except OSError:
                continue  # ended meanwhile
    return found


def closed_loop(port: int, connections: int, seconds: float, nonce: str) -> Dict[str, Any]:
    """scripts/bench_client.py for `seconds`: requests/s and latency percentiles (in µs)."""
    command = [sys.executable, str(SCRIPTS / "bench_client.py"), "--port", str(port), "-c", str(connections)]
    command += ["-d", str(seconds), "--nonce", nonce]
    done = subprocess.run(command, capture_output=True, text=True, timeout=seconds + 120)
    line = next((text for text in done.stdout.splitlines() if text.startswith("BENCH_JSON ")), None)
    if line is None:
        raise RuntimeError(f"bench_client failed: {done.stdout[-1000:]} {done.stderr[-1000:]}")
    result: Dict[str, Any] = json.loads(line[len("BENCH_JSON ") :])
    result["rps"] = result["requests"] / (result["duration_us"] / 1e6)
    result["errors"] = sum(result["errors"].values())
    return result


def one_at_a_time(port: int, samples: int, nonce: str) -> List[float]:
    """Seconds from sending each request to the whole answer, one keep-alive connection, one at a time."""
    sock = socket.create_connection(("127.0.0.1", port))
    sock.setsockopt(socket.IPPROTO_TCP, socket.TCP_NODELAY, 1)
    times = []
    try:
        for number in range(samples + 20):
            body = json.dumps(
                {"model": "bench-model", "messages": [{"role": "user", "content": f"timed {nonce} {number}"}]}
            ).encode()
            head = (
                f"POST /v1/chat/completions HTTP/1.1\r\nHost: 127.0.0.1:{port}\r\nContent-Type: application/json\r\n"
                f"Content-Length: {len(body)}\r\n\r\n"
            ).encode()
            sent = time.perf_counter()
            sock.sendall(head + body)
            buffer = b""
            while True:
                buffer += sock.recv(65536)
                end = buffer.find(b"\r\n\r\n")
                if end >= 0:
                    length = int(buffer.lower().split(b"content-length:", 1)[1].split(b"\r\n", 1)[0])
                    if len(buffer) >= end + 4 + length:
                        break
            if number >= 20:  # the first ones warm the connection pool up
                times.append(time.perf_counter() - sent)
    finally:
        sock.close()
    return times


class PagePoller:
    """What the review page asks for, at its pace: the page and its files, facets and the list, the list
    again (wait=1) 0.05 s after each answer while the sessions are read, then every 3 s (app.js)."""

    def __init__(self, port: int) -> None:
        self.port = port
        self.stop = threading.Event()
        self.asked = 0
        self.thread = threading.Thread(target=self._run, daemon=True)

    def open(self) -> None:
        for static in ("", "app.css", "app.js", "api/facets"):
            get(self.port, static)
        while get(self.port, "api/list?wait=1")[1]["loading"] is not None:
            time.sleep(LOADING_POLL_SECONDS)
        self.thread.start()

    def _run(self) -> None:
        while not self.stop.wait(POLL_SECONDS):
            loading = get(self.port, "api/list")[1]["loading"]
            self.asked += 1
            while loading is not None and not self.stop.wait(LOADING_POLL_SECONDS):  # as app.js, then facets
                loading = get(self.port, "api/list?wait=1")[1]["loading"]
                self.asked += 1
                if loading is None:
                    get(self.port, "api/facets")

    def close(self) -> None:
        self.stop.set()
        self.thread.join(10)


class PageInBrowser:
    """Headless Chromium showing the page (tests/review/cdp.py), its own polling, in the foreground tab."""

    def __init__(self, port: int, profile: Path) -> None:
        sys.path.insert(0, str(REPO / "tests" / "review"))
        from cdp import Browser

        self.browser = Browser(profile)
        self.port = port

    def open(self) -> None:
        self.browser.open(f"http://127.0.0.1:{self.port}{PAGE}")
        self.browser.wait("document.body.dataset.loading === ''", timeout=120)

    def close(self) -> None:
        self.browser.close()


def relay_bench(args: argparse.Namespace) -> int:
    with tempfile.TemporaryDirectory() as tmp:
        folder = Path(tmp) / "datasets"
        make_session(folder, args.conversations)
        upstream = subprocess.Popen(
            [sys.executable, str(SCRIPTS / "bench_upstream.py"), "--port", "0"], stdout=subprocess.PIPE, text=True
        )
        proxy: Optional[subprocess.Popen] = None  # type: ignore[type-arg]
        try:
            assert upstream.stdout is not None
            upstream_port = int(upstream.stdout.readline().split()[1])
            port = free_port()
            command = [sys.executable, "-m", "chatproxy", "--target", f"http://127.0.0.1:{upstream_port}"]
            command += ["--port", str(port), "--datasets", str(folder), "--session", "live", "--quiet"]
            proxy = subprocess.Popen(command, env=dict(os.environ, PYTHONPATH=str(REPO)), cwd=REPO)
            wait_accepting(port, proxy)
            print(
                f"proxy on {port}, upstream on {upstream_port}; the page reads {args.conversations} conversations "
                f"and the live session; load {args.connections} connections × {args.seconds:g} s, "
                f"{args.samples} requests one at a time; {args.rounds} rounds; page: {args.page}; "
                f"load average {os.getloadavg()[0]:.2f}"
            )
            closed_loop(port, args.connections, 2, "warm")
            direct = one_at_a_time(upstream_port, args.samples, "direct")
            figures: Dict[str, Dict[str, List[float]]] = {"closed": {}, "open": {}}
            for number in range(args.rounds):
                for state in ("closed", "open"):
                    page: Any = None
                    if state == "open":
                        page = PagePoller(port) if args.page == "poll" else PageInBrowser(port, Path(tmp) / "p")
                        page.open()
                    try:
                        page_before = sum(_cpu_seconds(pid) for pid in page_processes(proxy.pid))
                        measured = measure(port, proxy.pid, args, f"{state}{number}")
                        page_cpu = sum(_cpu_seconds(pid) for pid in page_processes(proxy.pid)) - page_before
                        measured["page process CPU %"] = 100 * page_cpu / measured.pop("seconds")
                    finally:
                        if page is not None:
                            page.close()
                    for name, value in measured.items():
                        figures[state].setdefault(name, []).append(value)
                    shown = ", ".join(f"{name} {value:.1f}" for name, value in measured.items())
                    print(f"  round {number + 1}, page {state}: {shown}", flush=True)
            report(figures, statistics.median(direct) * 1e3)
        finally:
            for proc in (proxy, upstream):
                if proc is not None:
                    proc.terminate()
                    try:
                        proc.wait(20)
                    except subprocess.TimeoutExpired:
                        proc.kill()
    return 0


def measure(port: int, pid: int, args: argparse.Namespace, nonce: str) -> Dict[str, float]:
    started, cpu = time.perf_counter(), _cpu_seconds(pid)
    load = closed_loop(port, args.connections, args.seconds, nonce)
    proxy_cpu = _cpu_seconds(pid) - cpu
    if load["errors"]:
        raise RuntimeError(f"{load['errors']} errors under load")
    alone = sorted(one_at_a_time(port, args.samples, nonce))
    return {
        "req/s": load["rps"],
        "proxy CPU µs/request": 1e6 * proxy_cpu / max(load["requests"], 1),
        "seconds": time.perf_counter() - started,
        "load p50 ms": load["latency_us"]["p50"] / 1e3,
        "load p99 ms": load["latency_us"]["p99"] / 1e3,
        "alone p50 ms": alone[len(alone) // 2] * 1e3,
        "alone p99 ms": alone[int(len(alone) * 0.99)] * 1e3,
    }


def report(figures: Dict[str, Dict[str, List[float]]], direct_ms: float) -> None:
    print()
    print(f"{'median of the rounds':<34} {'page closed':>12} {'page open':>12} {'open/closed':>12}")
    median: Callable[[List[float]], float] = statistics.median
    for name in figures["closed"]:
        closed, opened = median(figures["closed"][name]), median(figures["open"][name])
        shown = f"{opened / closed:>12.3f}" if closed else ""
        print(f"{name:<34} {closed:>12.2f} {opened:>12.2f} {shown:>12}")
    for name in ("alone p50 ms", "alone p99 ms"):
        closed, opened = median(figures["closed"][name]) - direct_ms, median(figures["open"][name]) - direct_ms
        print(f"{'added by the proxy, ' + name:<34} {closed:>12.2f} {opened:>12.2f} {opened / closed:>12.3f}")
    ratio = median(figures["open"]["req/s"]) / median(figures["closed"]["req/s"])
    result = verdict(ratio, RELAY_RATIO_TARGET, lower_is_better=False)
    print(f"\nreq/s open/closed {ratio:.3f}, target >= {RELAY_RATIO_TARGET}: {result}")
    print(f"(the backend alone, one request at a time: p50 {direct_ms:.2f} ms; load average {os.getloadavg()[0]:.2f})")
    print("(proxy CPU per request: the relay's own cost, which a busy machine moves least; page process CPU:")
    print(" what the page's process used while the load ran, in % of one core)")


def main() -> int:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("mode", nargs="?", choices=("page", "relay"), default="page")
    parser.add_argument("--conversations", type=int, default=20000)
    parser.add_argument(
        "--before",
        type=Path,
        metavar="DIR",
        help="page: also time the package in DIR (e.g. `git archive HEAD chatproxy | tar -x -C DIR`), side by side",
    )
    parser.add_argument("--repeat", type=int, default=3, help="page: runs (alternating with --before), medians")
    parser.add_argument("--page", choices=("poll", "browser"), default="poll", help="relay: how the page is open")
    parser.add_argument("--rounds", type=int, default=3, help="relay: page closed then open, this many times")
    parser.add_argument("--seconds", type=float, default=5, help="relay: each closed-loop run")
    parser.add_argument("--connections", type=int, default=16, help="relay: closed-loop connections")
    parser.add_argument("--samples", type=int, default=300, help="relay: requests sent one at a time")
    args = parser.parse_args()
    if args.mode == "relay" and args.page == "browser" and not shutil.which("chromium"):
        print("no chromium on PATH", file=sys.stderr)
        return 1
    return page_bench(args.conversations, args.before, args.repeat) if args.mode == "page" else relay_bench(args)


if __name__ == "__main__":
    raise SystemExit(main())
