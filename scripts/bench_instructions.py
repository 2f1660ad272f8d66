"""Instructions per relayed request, counted by valgrind's callgrind: the same figure on a busy machine or a
quiet one, at any CPU speed, so two builds can be compared by one run of each.

    python scripts/bench_instructions.py                  # floor, chatproxy --no-record, chatproxy
    python scripts/bench_instructions.py --only chatproxy-no-record --repo ../other-checkout

Each relay runs under `valgrind --tool=callgrind` (Debian's valgrind) in front of scripts/bench_upstream.py,
with load from wrk (8 connections, non-streaming chats, every one distinct). After a warm-up the counters
are zeroed, a measured run follows, and the instructions the relay's process executed meanwhile are
divided by the requests the upstream answered in it. Only the relay's own process is counted: with
recording on, the recorder process is not (it is not traced). Under valgrind a relay runs about 50 times
slower, so the recorder confirms exchanges in smaller batches than it would at full speed, and the
chatproxy figure counts more of that hand-off than a real run would. `chatproxy-recorder-stopped` stops
(SIGSTOP) the recorder process after the warm-up: the relay copies, pickles and queues every exchange as
usual while nothing is confirmed, so that figure is the relay's side of recording without the reading
of confirmations. Kernel time (system calls) is not
counted at all.

The relays: `floor` is scripts/bench_floor.py, the least relay built the way chatproxy is (h11 on both
sides, asyncio streams, kept-alive upstream connections): what pure-Python HTTP/1.1 costs.
"""

from __future__ import annotations

import argparse
import os
import shutil
import signal
import subprocess
import sys
import tempfile
import time
from pathlib import Path
from typing import List

import bench_load as load
from bench_procs import REPO, SCRIPTS, Upstream, children, free_port, stop_process, wait_until_accepting

RELAYS = ("floor", "chatproxy-no-record", "chatproxy", "chatproxy-recorder-stopped")


def relay_command(name: str, upstream: Upstream, port: int, work: Path) -> List[str]:
    if name == "floor":
        return [sys.executable, str(SCRIPTS / "bench_floor.py"), "--target", upstream.url, "--port", str(port)]
    command = [sys.executable, "-m", "chatproxy", "--target", upstream.url, "--port", str(port)]
    command += ["--datasets", str(work / "datasets")]
    return command + (["--no-record"] if name == "chatproxy-no-record" else [])


def count(name: str, repo: Path, seconds: int) -> str:
    work = Path(tempfile.mkdtemp(prefix="chatproxy-instructions-"))
    upstream = Upstream(work, 600)
    port = free_port()
    out = work / "callgrind.out"
    valgrind = ["valgrind", "--tool=callgrind", f"--callgrind-out-file={out}", "--trace-children=no"]
    env = dict(os.environ, PYTHONPATH=os.pathsep.join(filter(None, [str(repo), os.environ.get("PYTHONPATH")])))
    with open(work / "valgrind.log", "wb") as log:
        proc = subprocess.Popen(
            valgrind + relay_command(name, upstream, port, work), cwd=str(repo), env=env, stdout=log, stderr=log
        )
    stopped: List[int] = []
    try:
        wait_until_accepting(port, proc, 180)
        load.run_load(port, 8, 3)  # warm-up: imports done, pools filled
        if name == "chatproxy-recorder-stopped":
            stopped += children(proc.pid)  # the recorder process: the relay hands over, nothing confirms
            for pid in stopped:
                os.kill(pid, signal.SIGSTOP)
        subprocess.run(["callgrind_control", "--zero", str(proc.pid)], check=True, capture_output=True)
        before = upstream.stats()["requests"]
        load.run_load(port, 8, seconds)
        requests = upstream.stats()["requests"] - before
        subprocess.run(["callgrind_control", "--dump", str(proc.pid)], check=True, capture_output=True)
        dump = Path(f"{out}.1")
        deadline = time.monotonic() + 30
        while not dump.exists() and time.monotonic() < deadline:
            time.sleep(0.1)
        total = next(int(line.split()[1]) for line in dump.read_text().splitlines() if line.startswith("summary:"))
        return f"{name:22} {total / max(requests, 1):>12,.0f} instructions/request  ({requests:,} requests)"
    finally:
        for pid in stopped:
            os.kill(pid, signal.SIGCONT)  # it records what it was handed, and the proxy can stop
        stop_process(proc, timeout=120)
        upstream.stop()
        shutil.rmtree(work, ignore_errors=True)


def main() -> int:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--only", default=",".join(RELAYS), help=f"comma-separated, of: {', '.join(RELAYS)}")
    parser.add_argument("--repo", type=Path, default=REPO, help="the chatproxy checkout to run (default: this one)")
    parser.add_argument("--seconds", type=int, default=10, help="length of the measured run (default 10)")
    args = parser.parse_args()
    if not (shutil.which("valgrind") and shutil.which("callgrind_control") and load.WRK):
        sys.exit("needs valgrind and wrk: apt-get install valgrind wrk")
    names = args.only.split(",")
    unknown = set(names) - set(RELAYS)
    if unknown:
        parser.error(f"unknown relay(s): {', '.join(sorted(unknown))}")
    for name in names:
        print(count(name, args.repo.resolve(), args.seconds), flush=True)
    return 0


if __name__ == "__main__":
    sys.exit(main())
