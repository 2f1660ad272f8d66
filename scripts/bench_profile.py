"""Profile a running chatproxy under load with py-spy, and summarise the samples (used by bench.py --profile).

py-spy writes folded stacks (`--format raw`, one `frame;frame;... COUNT` line per distinct stack; load it
into https://www.speedscope.app or flamegraph.pl to browse). Only samples of threads doing work count:
py-spy leaves out threads waiting in epoll/select/locks, so the percentages are shares of the CPU time
the proxy spent, not of wall time. "self" is time in the function's own code (its line was the one
running), "total" includes everything it called.
"""

from __future__ import annotations

import collections
import re
import shutil
import subprocess
import sys
import threading
from pathlib import Path
from typing import Dict, List, Optional, Tuple

_FRAME = re.compile(r"^(?P<func>.*?) \((?P<file>[^()]*?)(?::\d+)?\)$")
# Leaves that are waits, not work: the event loop's epoll_wait and an idle executor thread's queue.get.
# py-spy counts such a sample as busy when it catches the thread entering or leaving the wait.
_WAITS = ("EpollSelector.select (selectors.py)", "_worker (futures/thread.py)")
# Frames every main-thread sample has; listing them as "total" says nothing.
_ALWAYS = re.compile(r"\(chatproxy/(?:cli|__main__)\.py\)$")


def find_py_spy() -> Optional[str]:
    beside = Path(sys.executable).parent / "py-spy"
    return str(beside) if beside.exists() else shutil.which("py-spy")


def record(py_spy: str, pid: int, seconds: int, output: Path, rate: int = 250) -> threading.Thread:
    """Start sampling `pid` in the background; join the returned thread to wait for the file."""
    cmd = [py_spy, "record", "--pid", str(pid), "--duration", str(seconds), "--rate", str(rate),
           "--format", "raw", "--threads", "--output", str(output)]

    def run() -> None:
        subprocess.run(cmd, stdout=subprocess.DEVNULL, stderr=subprocess.DEVNULL, check=False)

    thread = threading.Thread(target=run)
    thread.start()
    return thread


def _name(frame: str) -> str:
    """`func (chatproxy/relay.py:12)` -> `func (chatproxy/relay.py)`: lines of one function are added up."""
    match = _FRAME.match(frame.strip())
    if not match:
        return frame.strip()
    file = "/".join(match.group("file").split("/")[-2:])
    return f"{match.group('func')} ({file})"


def summarise(folded: Path) -> Dict[str, object]:
    """Samples per thread, and per function its self and total share of all samples."""
    self_count: Dict[str, int] = collections.Counter()
    total_count: Dict[str, int] = collections.Counter()
    threads: Dict[str, int] = collections.Counter()
    samples = waiting = 0
    for line in folded.read_text(errors="replace").splitlines():
        stack, _, count_text = line.rpartition(" ")
        if not stack or not count_text.isdigit():
            continue
        count = int(count_text)
        frames = stack.split(";")
        names = [_name(f) for f in frames if not f.startswith(("thread ", "process "))]
        if names and names[-1] in _WAITS:
            waiting += count
            continue
        if frames[0].startswith(("thread ", "process ")):
            threads[frames[0]] += count
        samples += count
        if names:
            self_count[names[-1]] += count
        for name in set(names):
            total_count[name] += count
    return {"samples": samples, "waiting": waiting, "threads": dict(threads), "self": dict(self_count),
            "total": dict(total_count)}


def top(counts: Dict[str, int], samples: int, limit: int) -> List[Tuple[float, str]]:
    ordered = sorted(counts.items(), key=lambda item: -item[1])[:limit]
    return [(100.0 * count / max(samples, 1), name) for name, count in ordered]


def by_area(self_counts: Dict[str, int]) -> Dict[str, int]:
    """Self time per chatproxy module, and per package for the rest (asyncio, h11, json, logging, ...)."""
    areas: Dict[str, int] = collections.Counter()
    for name, count in self_counts.items():
        file = name.rsplit("(", 1)[-1].rstrip(")")
        package = file.split("/", 1)[0] if "/" in file else "stdlib"
        areas[file if package == "chatproxy" else package] += count
    return dict(areas)


def report(title: str, summary: Dict[str, object], limit: int = 15) -> str:
    samples = int(summary["samples"])  # type: ignore[arg-type]
    lines = [f"{title}: {samples} samples of busy threads ({summary['waiting']} more caught entering or leaving"
             " a wait in epoll or an idle executor thread: left out)"]
    for thread, count in sorted(summary["threads"].items(), key=lambda item: -item[1]):  # type: ignore[union-attr]
        lines.append(f"  {100.0 * count / max(samples, 1):5.1f}%  {thread}")
    lines.append("  self%  function (its own code; C calls such as send() or fsync() count as the caller's)")
    lines += [f"  {share:5.1f}  {name}" for share, name in top(summary["self"], samples, limit)]  # type: ignore[arg-type]
    lines.append("  self%  module")
    lines += [f"  {share:5.1f}  {name}" for share, name in top(by_area(summary["self"]), samples, 12)]  # type: ignore[arg-type]
    own = {name: count for name, count in summary["total"].items()  # type: ignore[union-attr]
           if "(chatproxy/" in name and not _ALWAYS.search(name)}
    lines.append("  total%  chatproxy function (with everything it calls)")
    lines += [f"  {share:5.1f}  {name}" for share, name in top(own, samples, limit)]
    return "\n".join(lines)
