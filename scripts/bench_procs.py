"""The processes scripts/bench.py runs: the canned upstream, chatproxy, nginx; and what it reads of them."""

from __future__ import annotations

import ctypes
import json
import os
import re
import shutil
import signal
import socket
import subprocess
import sys
import time
import urllib.request
from pathlib import Path
from typing import Dict, List, Optional, Sequence, Tuple

REPO = Path(__file__).resolve().parent.parent
SCRIPTS = Path(__file__).resolve().parent
_LISTENING = re.compile(rb"listening on http://[^\s]+:(\d+) ")
_PR_SET_CHILD_SUBREAPER = 36  # from <linux/prctl.h>
# Start-up, per-record and shutdown lines; a "stopped:" summary is noise only when it counts no errors.
_NOISE = re.compile(
    r"listening on http://|^chatproxy: recorded |^chatproxy: stopping:|^chatproxy: stopped: .* 0 errors"
    r"|\.json is now a folder, one file per \d+ chats$"  # a live dataset past its first 1,000 chats
)


def free_port() -> int:
    with socket.socket() as probe:
        probe.bind(("127.0.0.1", 0))
        return probe.getsockname()[1]


def wait_until_accepting(port: int, proc: subprocess.Popen, timeout: float = 30.0) -> None:
    """Poll-connect every 0.5 ms: the moment the port accepts is what start-up time measures."""
    deadline = time.perf_counter() + timeout
    while time.perf_counter() < deadline:
        try:
            socket.create_connection(("127.0.0.1", port), timeout=1).close()
            return
        except OSError:
            if proc.poll() is not None:
                raise RuntimeError(f"{proc.args!r} exited with status {proc.returncode} before listening") from None
            time.sleep(0.0005)
    raise RuntimeError(f"nothing accepted on port {port} within {timeout:g} s")


def proc_kb(pid: int, field: str = "VmRSS") -> int:
    """A /proc/PID/status memory figure in kB (VmRSS now, VmHWM the peak so far); 0 if gone."""
    try:
        with open(f"/proc/{pid}/status") as status:
            for line in status:
                if line.startswith(field + ":"):
                    return int(line.split()[1])
    except OSError:
        pass
    return 0


def private_kb(pid: int) -> int:
    """Memory only this process maps (USS: Private_Clean + Private_Dirty of smaps_rollup), in kB; 0 if
    unknown. For the recorder: what it adds beside the proxy, whose interpreter files it shares."""
    try:
        with open(f"/proc/{pid}/smaps_rollup") as rollup:
            return sum(int(line.split()[1]) for line in rollup if line.startswith(("Private_Clean:", "Private_Dirty:")))
    except OSError:
        return 0


def pss_kb(pid: int) -> int:
    """Proportional set size (Pss of smaps_rollup) in kB: each shared page divided among the processes that
    map it, as `smem` counts, so the proxy's and its recorder's figures add up; 0 if unknown."""
    try:
        with open(f"/proc/{pid}/smaps_rollup") as rollup:
            return next((int(line.split()[1]) for line in rollup if line.startswith("Pss:")), 0)
    except OSError:
        return 0


def written_bytes(pid: int) -> int:
    """Bytes the process has handed to write() and its kin so far (`wchar` of /proc/PID/io): what it asks
    of the file system, whatever the page cache makes of it; 0 if unknown."""
    try:
        with open(f"/proc/{pid}/io") as io:
            return next((int(line.split()[1]) for line in io if line.startswith("wchar:")), 0)
    except OSError:
        return 0


def children(pid: int) -> List[int]:
    """The processes whose parent is `pid`. /proc lists a child under the thread that forked it, so every
    thread's list is read; a kernel without those lists (CONFIG_PROC_CHILDREN) gets a scan of /proc."""
    if not os.path.exists(f"/proc/{pid}/task/{pid}/children"):
        return [child for child in _all_pids() if _parent(child) == pid]
    found: List[int] = []
    for task in _listdir(f"/proc/{pid}/task"):
        try:
            with open(f"/proc/{pid}/task/{task}/children") as handle:
                found += [int(p) for p in handle.read().split()]
        except OSError:
            pass  # the thread ended meanwhile
    return found


def _listdir(path: str) -> List[str]:
    try:
        return os.listdir(path)
    except OSError:
        return []


def _all_pids() -> List[int]:
    return [int(name) for name in _listdir("/proc") if name.isdigit()]


def _parent(pid: int) -> Optional[int]:
    try:
        with open(f"/proc/{pid}/stat") as handle:
            return int(handle.read().rsplit(")", 1)[1].split()[1])  # the name before ")" may hold spaces
    except (OSError, IndexError, ValueError):
        return None


def cpu_of(pid: int) -> float:
    """CPU seconds (user + system) process `pid` has used so far, 0 once it is gone."""
    try:
        with open(f"/proc/{pid}/stat") as handle:
            fields = handle.read().rsplit(")", 1)[1].split()
        return (int(fields[11]) + int(fields[12])) / os.sysconf("SC_CLK_TCK")
    except (OSError, IndexError, ValueError):
        return 0.0


def machine_cpu() -> Tuple[float, float]:
    """Busy CPU seconds of the whole machine so far (steal included), and the steal alone: time the
    hypervisor gave this machine's virtual CPUs to others while they had work."""
    with open("/proc/stat") as stat:
        user, nice, system, idle, iowait, irq, softirq, steal = (int(v) for v in stat.readline().split()[1:9])
    tick = os.sysconf("SC_CLK_TCK")
    return (user + nice + system + irq + softirq + steal) / tick, steal / tick


def loop_ms() -> float:
    """Milliseconds a fixed Python loop takes here, now: how fast this machine's CPU runs just before a
    measured run (a virtual CPU's speed can change from minute to minute with nothing else running)."""
    started = time.perf_counter()
    for _ in range(1_000_000):
        pass
    return (time.perf_counter() - started) * 1000


def become_subreaper() -> None:
    """Have orphans among this script's descendants reparented here rather than to init: a recorder
    process whose proxy had to be killed then still counts as this script's work once reaped (its CPU
    time reaches RUSAGE_CHILDREN), not as another process's. Linux only; elsewhere a no-op."""
    try:
        ctypes.CDLL(None).prctl(_PR_SET_CHILD_SUBREAPER, 1, 0, 0, 0)
    except (OSError, AttributeError):
        pass


def reap_adopted(timeout: float = 30.0) -> int:
    """Wait for the orphans become_subreaper() brought here (call once every process started is waited
    for, so that no Popen loses its child's status); how many were still running at the timeout."""
    deadline = time.monotonic() + timeout
    while True:
        try:
            pid, _ = os.waitpid(-1, os.WNOHANG)
        except ChildProcessError:
            return 0
        if pid == 0 and time.monotonic() >= deadline:
            return len(children(os.getpid()))
        if pid == 0:
            time.sleep(0.05)


def stop_process(proc: subprocess.Popen, sig: int = signal.SIGTERM, timeout: float = 20.0) -> Optional[int]:
    """Ask politely, wait, then kill; the exit status (None if it had to be killed)."""
    if proc.poll() is not None:
        return proc.returncode
    proc.send_signal(sig)
    try:
        return proc.wait(timeout)
    except subprocess.TimeoutExpired:
        proc.kill()
        proc.wait()
        return None


class Script:
    """One of scripts/ run in its own process, listening on the port it prints (`listening PORT`)."""

    def __init__(self, workdir: Path, name: str, *args: str, log: str = "") -> None:
        self.log = open(workdir / (log or name.replace(".py", ".log")), "wb")
        self.proc = subprocess.Popen(
            [sys.executable, str(SCRIPTS / name), "--port", "0", *args], stdout=subprocess.PIPE, stderr=self.log
        )
        assert self.proc.stdout is not None
        line = self.proc.stdout.readline().decode()
        if not line.startswith("listening "):
            raise RuntimeError(f"{name} did not start: {line!r}")
        self.port = int(line.split()[1])

    def stop(self) -> None:
        stop_process(self.proc)
        self.log.close()


class Upstream(Script):
    """scripts/bench_upstream.py: the canned backend."""

    def __init__(self, workdir: Path, reply_chars: int) -> None:
        super().__init__(workdir, "bench_upstream.py", "--reply-chars", str(reply_chars))
        self.url = f"http://127.0.0.1:{self.port}"

    def stats(self) -> Dict[str, int]:
        with urllib.request.urlopen(self.url + "/_bench/stats", timeout=10) as answer:
            return json.loads(answer.read())


class Floor(Script):
    """scripts/bench_floor.py in front of the upstream: the least relay built as chatproxy is (with
    `callbacks`, the least one asyncio and h11 allow, with no coroutine)."""

    def __init__(self, upstream: Upstream, workdir: Path, callbacks: bool = False) -> None:
        extra = ("--callbacks",) if callbacks else ()
        log = "bench_floor_callbacks.log" if callbacks else ""
        super().__init__(workdir, "bench_floor.py", "--target", upstream.url, *extra, log=log)


class ChatProxy:
    """`python -m chatproxy --target UPSTREAM --port 0 --datasets DIR [extra]`, stderr to a log file.

    With port 0 the port is read from the start-up line; with a fixed port, readiness is the port
    accepting. `startup` is the time from spawn to ready either way.
    """

    count = 0

    def __init__(
        self,
        upstream: Upstream,
        datasets: Path,
        workdir: Path,
        extra: Sequence[str] = (),
        port: int = 0,
        ready_within: float = 30.0,
    ) -> None:
        ChatProxy.count += 1
        self.log_path = workdir / f"chatproxy-{ChatProxy.count}.log"
        self.datasets = datasets
        env = dict(os.environ, PYTHONPATH=os.pathsep.join(filter(None, [str(REPO), os.environ.get("PYTHONPATH")])))
        cmd = [
            sys.executable,
            "-m",
            "chatproxy",
            "--target",
            upstream.url,
            "--port",
            str(port),
            "--datasets",
            str(datasets),
            *extra,
        ]
        with open(self.log_path, "wb") as log:
            started = time.perf_counter()
            self.proc = subprocess.Popen(cmd, stdout=log, stderr=subprocess.STDOUT, cwd=str(REPO), env=env)
        try:
            if port:
                wait_until_accepting(port, self.proc, ready_within)
                self.port = port
            else:
                self.port = self._port_from_log(ready_within)
        except BaseException:
            stop_process(self.proc)  # not left running (with its recorder) behind the failed start
            raise
        self.startup = time.perf_counter() - started
        self.pid = self.proc.pid
        self.exit_status: Optional[int] = None
        self.stopped = False

    def _port_from_log(self, timeout: float = 60.0) -> int:
        deadline = time.perf_counter() + timeout
        while time.perf_counter() < deadline:
            match = _LISTENING.search(self.log_path.read_bytes())
            if match:
                return int(match.group(1))
            if self.proc.poll() is not None:
                raise RuntimeError(f"chatproxy exited ({self.proc.returncode}):\n{self.log_path.read_text()}")
            time.sleep(0.002)
        raise RuntimeError(f"chatproxy printed no start-up line within {timeout:g} s")

    def memory_kb(self, field: str = "VmRSS") -> Dict[str, int]:
        """A /proc/PID/status figure of the proxy and of its recorder process (of all its children: none
        with --no-record, the new one after a restart), in kB. Summed over VmHWM, these are the sum of
        each process's own peak: at least the peak of the sum, more if they peaked at different times."""
        return {
            "proxy": proc_kb(self.pid, field),
            "recorder": sum(proc_kb(child, field) for child in children(self.pid)),
        }

    def pss_kb(self) -> Dict[str, int]:
        """The proxy's and its recorder's PSS in kB (see pss_kb)."""
        return {"proxy": pss_kb(self.pid), "recorder": sum(pss_kb(child) for child in children(self.pid))}

    def recorder_written(self) -> int:
        return sum(written_bytes(child) for child in children(self.pid))

    def rss_kb(self) -> int:
        return sum(self.memory_kb().values())

    def recorder_private_kb(self) -> int:
        return sum(private_kb(child) for child in children(self.pid))

    def recorder_pids(self) -> List[int]:
        return children(self.pid)

    def stop(self, within: float = 20.0) -> Optional[int]:
        self.exit_status = stop_process(self.proc, timeout=within)
        self.stopped = True
        return self.exit_status

    def problems(self) -> List[str]:
        """Log lines other than the start-up, stop and per-record lines: warnings, errors, tracebacks."""
        try:
            text = self.log_path.read_text(errors="replace")
        except OSError:
            return []
        lines = [line for line in text.splitlines() if line.strip() and not _NOISE.search(line)]
        if self.stopped and self.exit_status is None:
            lines.append("did not stop within 20 s of SIGTERM; killed")
        elif self.stopped and self.exit_status != 0:
            lines.append(f"exit status {self.exit_status} after SIGTERM")
        return lines


NGINX_CONF = """\
worker_processes {workers};
daemon off;
pid {work}/nginx.pid;
error_log {work}/nginx-error.log warn;
worker_rlimit_nofile 20000;
{user}
events {{ worker_connections 8192; }}
http {{
    access_log off;
    client_body_temp_path {work}/client_body;
    proxy_temp_path {work}/proxy;
    fastcgi_temp_path {work}/fastcgi;
    uwsgi_temp_path {work}/uwsgi;
    scgi_temp_path {work}/scgi;
    keepalive_requests 1000000;
    keepalive_timeout 75s;
    upstream backend {{
        server 127.0.0.1:{upstream_port};
        keepalive 256;
        keepalive_requests 1000000;
    }}
    server {{
        listen 127.0.0.1:{port} backlog=4096;
        location / {{
            proxy_pass http://backend;
            proxy_http_version 1.1;
            proxy_set_header Connection "";
            proxy_buffering off;
            proxy_request_buffering off;
            proxy_read_timeout 600s;
        }}
    }}
}}
"""


class Nginx:
    """nginx as a plain reverse proxy to the same upstream: keep-alive both sides, no buffering."""

    def __init__(self, upstream: Upstream, workdir: Path, workers: str) -> None:
        work = workdir / "nginx"
        work.mkdir(exist_ok=True)
        self.port = free_port()
        conf = work / "nginx.conf"
        user = "user root;" if os.geteuid() == 0 else ""
        conf.write_text(
            NGINX_CONF.format(workers=workers, work=work, user=user, upstream_port=upstream.port, port=self.port)
        )
        self.proc = subprocess.Popen(
            [shutil.which("nginx") or "nginx", "-p", str(work), "-c", str(conf)],
            stdout=subprocess.DEVNULL,
            stderr=open(work / "stderr.log", "wb"),
        )
        wait_until_accepting(self.port, self.proc)

    def rss_kb(self) -> int:
        return sum(proc_kb(pid) for pid in [self.proc.pid, *children(self.proc.pid)])

    def stop(self) -> None:
        stop_process(self.proc, signal.SIGQUIT)
