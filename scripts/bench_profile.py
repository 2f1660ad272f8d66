"""Profile a running chatproxy under load with py-spy, and summarise the samples (used by bench.py --profile).

py-spy writes folded stacks (`--format raw`, one `frame;frame;... COUNT` line per distinct stack; load it
into https://www.speedscope.app or flamegraph.pl to browse). Only samples of threads doing work count:
py-spy leaves out threads waiting in epoll/select/locks, so the percentages are shares of the CPU time
the proxy spent, not of wall time. "self" is time in the function's own code (its line was the one
running), "total" includes everything it called.
"""

from __future__ import annotations

import collections
import dataclasses
import linecache
import re
import shutil
import subprocess
import sys
import threading
from pathlib import Path
from typing import Dict, List, Optional, Tuple

_FRAME = re.compile(r"^(?P<func>.*?) \((?P<file>[^()]*?)(?::(?P<line>\d+))?\)$")
# Leaves that are waits, not work: the event loop's epoll_wait, an idle executor thread's queue.get, and
# the thread asyncio keeps blocked in waitpid() on the recorder process. py-spy counts such a sample as
# busy when it catches the thread entering or leaving the wait (waitpid: always, it seems).
_WAITS = (
    "EpollSelector.select (selectors.py)",
    "_worker (futures/thread.py)",
    "ThreadedChildWatcher._do_waitpid (asyncio/unix_events.py)",
)
# The recorder process waits in functions that also work (Inbox.receive selects, then reads): there,
# only a leaf whose source line is the blocking call is a wait.
_WAIT_CALL = re.compile(r"\b(?:select\.select|time\.sleep)\(")
# Frames every main-thread sample of the proxy or of the recorder process has; as "total" they say nothing.
_ALWAYS = re.compile(r"\(chatproxy/(?:cli|__main__)\.py\)$|^(?:main|Worker\.run) \(chatproxy/recorder_worker\.py\)$")


def find_py_spy() -> Optional[str]:
    beside = Path(sys.executable).parent / "py-spy"
    return str(beside) if beside.exists() else shutil.which("py-spy")


def record(py_spy: str, pid: int, seconds: int, output: Path, rate: int = 250) -> threading.Thread:
    """Start sampling `pid` in the background; join the returned thread to wait for the file."""
    cmd = [
        py_spy,
        "record",
        "--pid",
        str(pid),
        "--duration",
        str(seconds),
        "--rate",
        str(rate),
        "--format",
        "raw",
        "--threads",
        "--output",
        str(output),
    ]

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


def _is_wait(frame: str) -> bool:
    """A leaf frame that is a wait: a known waiting function, or a line that is a blocking call."""
    if _name(frame) in _WAITS:
        return True
    match = _FRAME.match(frame.strip())
    # py-spy names files relative to the target's sys.path; linecache searches this one's (same tree).
    return bool(
        match
        and match.group("line")
        and _WAIT_CALL.search(linecache.getline(match.group("file"), int(match.group("line"))))
    )


@dataclasses.dataclass
class Profile:
    samples: int  # samples of threads at work
    waiting: int  # samples caught at the edge of a wait, left out of every share
    threads: Dict[str, int]
    self_counts: Dict[str, int]
    total_counts: Dict[str, int]


def summarise(folded: Path) -> Profile:
    """Samples per thread, and per function its self and total share of all samples."""
    profile = Profile(0, 0, collections.Counter(), collections.Counter(), collections.Counter())
    for line in folded.read_text(errors="replace").splitlines():
        stack, _, count_text = line.rpartition(" ")
        if not stack or not count_text.isdigit():
            continue
        count = int(count_text)
        frames = stack.split(";")
        names = [_name(f) for f in frames if not f.startswith(("thread ", "process "))]
        if names and _is_wait(frames[-1]):
            profile.waiting += count
            continue
        if frames[0].startswith(("thread ", "process ")):
            profile.threads[frames[0]] += count
        profile.samples += count
        if names:
            profile.self_counts[names[-1]] += count
        for name in set(names):
            profile.total_counts[name] += count
    return profile


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


def report(title: str, profile: Profile, limit: int = 15) -> str:
    samples = profile.samples
    lines = [
        f"{title}: {samples} samples of busy threads ({profile.waiting} more caught entering or leaving"
        " a wait, in epoll, select, sleep, waitpid or an idle executor thread: left out)"
    ]
    for thread, count in sorted(profile.threads.items(), key=lambda item: -item[1]):
        lines.append(f"  {100.0 * count / max(samples, 1):5.1f}%  {thread}")
    lines.append("  self%  function (its own code; C calls such as send() or fsync() count as the caller's)")
    lines += [f"  {share:5.1f}  {name}" for share, name in top(profile.self_counts, samples, limit)]
    lines.append("  self%  module")
    lines += [f"  {share:5.1f}  {name}" for share, name in top(by_area(profile.self_counts), samples, 12)]
    own = {
        name: count
        for name, count in profile.total_counts.items()
        if "(chatproxy/" in name and not _ALWAYS.search(name)
    }
    lines.append("  total%  chatproxy function (with everything it calls)")
    lines += [f"  {share:5.1f}  {name}" for share, name in top(own, samples, limit)]
    return "\n".join(lines)
