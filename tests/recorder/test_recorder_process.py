"""The recorder process: killed, orphaned, stopped with its proxy, absent, and replaced.

Everything here uses real processes and real signals: the recorder child the proxy spawns is found
through /proc (its parent pid), SIGKILLed, SIGSTOPped or sent SIGTERM like systemd would, and the
journal and the live ShareGPT file on disk are what the checks read. The fake backend runs in this
process; the proxy runs either in this process (conftest's make_proxy) or as `python -m chatproxy`.
"""

from __future__ import annotations

import asyncio
import contextlib
import ctypes
import errno
import fcntl
import http.client
import json
import logging
import os
import re
import signal
import struct
import subprocess
import sys
import termios
import threading
import time
from pathlib import Path
from typing import Dict, Iterator, List, Optional, Set, Tuple

import pytest

from chatproxy.config import RecordOptions
from chatproxy.recorder.durable import SessionLock
from chatproxy.recorder.in_process import InProcessRecorder
from chatproxy.recorder.process import RecorderProcess

from fake_upstream import Behaviour, Chat
from subproc import ROOT, ProxyProcess, chat
from support_faults import journal, post_chat, replies, wait_until

SESSION = "test-session"  # what conftest's make_proxy uses
RESTARTED = "the recorder process exited unexpectedly"
FALLBACK = "recording in this process instead"


# -- processes, as /proc sees them -----------------------------------------------------------


def proc_stat(pid: int) -> Optional[Tuple[str, int]]:
    """(state letter, parent pid), or None once the pid is gone."""
    try:
        data = Path(f"/proc/{pid}/stat").read_text()
    except (FileNotFoundError, ProcessLookupError):
        return None
    fields = data.rpartition(")")[2].split()  # the command name may hold spaces and parentheses
    return fields[0], int(fields[1])


def running(pid: int) -> bool:
    """The process exists and is not a zombie (an orphan's zombie may never be reaped here)."""
    stat = proc_stat(pid)
    return stat is not None and stat[0] not in ("Z", "X")


def children_of(pid: int) -> Set[int]:
    """Live child processes of `pid`."""
    kids = set()
    for name in os.listdir("/proc"):
        if name.isdigit():
            stat = proc_stat(int(name))
            if stat is not None and stat[1] == pid and stat[0] not in ("Z", "X"):
                kids.add(int(name))
    return kids


def is_recorder(pid: int) -> bool:
    try:
        return b"chatproxy.recorder.worker" in Path(f"/proc/{pid}/cmdline").read_bytes()
    except OSError:
        return False


def recorder_children(pid: int) -> Set[int]:
    return {kid for kid in children_of(pid) if is_recorder(kid)}


def the_recorder_of(proxy: ProxyProcess) -> int:
    """The one recorder process a `python -m chatproxy` runs."""
    wait_until(lambda: len(recorder_children(proxy.proc.pid)) == 1, "the recorder child to appear", timeout=5)
    (pid,) = recorder_children(proxy.proc.pid)
    return pid


def has_open(pid: int, path: Path) -> bool:
    try:
        fds = os.listdir(f"/proc/{pid}/fd")
    except OSError:
        return False
    for fd in fds:
        try:
            if os.readlink(f"/proc/{pid}/fd/{fd}") == str(path):
                return True
        except OSError:
            pass
    return False


def pipe_bytes(pid: int, fd: int) -> int:
    """Bytes waiting in the pipe (or, under uvloop, the socket pair) that is `pid`'s descriptor `fd`,
    read without taking any (FIONREAD, which is SIOCINQ on a socket)."""
    try:
        reader = os.open(f"/proc/{pid}/fd/{fd}", os.O_RDONLY | os.O_NONBLOCK)
    except OSError as exc:
        if exc.errno != errno.ENXIO:  # a socket cannot be opened by its /proc name: borrow the descriptor
            raise
        reader = borrowed_fd(pid, fd)
    try:
        return struct.unpack("i", fcntl.ioctl(reader, termios.FIONREAD, b"\0\0\0\0"))[0]
    finally:
        os.close(reader)


def borrowed_fd(pid: int, fd: int) -> int:
    """A duplicate of another process's descriptor (pidfd_getfd, Linux 5.6; the same number on every
    architecture)."""
    libc = ctypes.CDLL(None, use_errno=True)
    pidfd = os.pidfd_open(pid)
    try:
        borrowed = libc.syscall(438, pidfd, fd, 0)
        if borrowed < 0:
            raise OSError(ctypes.get_errno(), f"pidfd_getfd of descriptor {fd} of process {pid}")
        return int(borrowed)
    finally:
        os.close(pidfd)


def flock_holders(path: Path) -> Set[int]:
    """Pids that hold a flock on `path`, from /proc/locks (matched by inode)."""
    inode = os.stat(path).st_ino
    holders = set()
    for line in Path("/proc/locks").read_text().splitlines():
        fields = line.split()
        if (
            len(fields) >= 6
            and fields[1] == "FLOCK"
            and "->" not in fields
            and fields[5].rsplit(":", 1)[-1] == str(inode)
        ):
            holders.add(int(fields[4]))
    return holders


# -- clients ---------------------------------------------------------------------------------


class ChatLoad:
    """Threads posting distinct non-streamed chats back to back until stopped (or the proxy is gone).

    Every chat that came back as a whole 200 with the right echo is in `answered`, in order; anything
    else while the proxy is meant to be up is in `failures`."""

    def __init__(self, port: int, threads: int = 4, prefix: str = "chat") -> None:
        self.port = port
        self.prefix = prefix
        self.answered: List[str] = []
        self.failures: List[str] = []
        self._lock = threading.Lock()
        self._stop = threading.Event()
        self._threads = [threading.Thread(target=self._work, args=(n,), daemon=True) for n in range(threads)]

    def start(self) -> ChatLoad:
        for thread in self._threads:
            thread.start()
        return self

    def count(self) -> int:
        with self._lock:
            return len(self.answered)

    def _work(self, n: int) -> None:
        i = 0
        while not self._stop.is_set():
            text = f"{self.prefix} {n}-{i}"
            i += 1
            try:
                reply = post_chat(self.port, text)
            except Exception as exc:  # the proxy went away (expected only where the test kills it)
                with self._lock:
                    self.failures.append(f"{text}: {exc!r}")
                return
            ok = (
                reply.status == 200
                and reply.complete
                and reply.json()["choices"][0]["message"]["content"] == "echo: " + text
            )
            with self._lock:
                (self.answered if ok else self.failures).append(
                    text if ok else f"{text}: {reply.status} {reply.body[:200]!r}"
                )
            if not ok:
                return

    def stop(self) -> List[str]:
        self._stop.set()
        for thread in self._threads:
            thread.join(10)
            assert not thread.is_alive(), "a client thread hung"
        return list(self.answered)


def status_of(port: int) -> Dict[str, object]:
    conn = http.client.HTTPConnection("127.0.0.1", port, timeout=5)
    try:
        conn.request("GET", "/_chatproxy/status")
        return json.loads(conn.getresponse().read())
    finally:
        conn.close()


def user_texts(records: List[dict]) -> List[str]:
    """The user's text of each record (every chat here is one new user turn and its reply)."""
    return [r["messages"][0]["content"] for r in records]


def journal_file(datasets: Path, session: str) -> List[dict]:
    path = datasets / f"{session}.jsonl"
    data = path.read_bytes() if path.exists() else b""
    assert data == b"" or data.endswith(b"\n"), "a torn journal line"
    return [json.loads(line) for line in data.splitlines()]


def dataset_file(datasets: Path, session: str) -> List[dict]:
    return json.loads((datasets / f"{session}.json").read_bytes())


def dataset_texts(items: List[dict]) -> List[str]:
    return [item["conversations"][0]["value"] for item in items]


@contextlib.contextmanager
def cli_proxy(
    upstream_url: str,
    datasets: Path,
    session: str,
    *extra: str,
    env: Optional[Dict[str, str]] = None,
    prefix: Tuple[str, ...] = (),
) -> Iterator[ProxyProcess]:
    """`python -m chatproxy` on a free port. On the way out, whatever still writes to its stderr is
    killed first (a recorder the test froze, or one left behind by a failing test): ProxyProcess
    reads stderr to its end, which only comes once every process holding it has gone."""
    full_env = {k: v for k, v in os.environ.items() if not k.startswith("CHATPROXY_")}
    full_env.update(env or {})
    proxy = ProxyProcess(
        [
            *prefix,
            sys.executable,
            "-m",
            "chatproxy",
            "--target",
            upstream_url,
            "--port",
            "0",
            "--session",
            session,
            "--datasets",
            str(datasets),
            *extra,
        ],
        env=full_env,
        cwd=ROOT,
    )
    assert proxy.proc.stderr is not None
    stderr_pipe = f"pipe:[{os.fstat(proxy.proc.stderr.fileno()).st_ino}]"
    try:
        yield proxy
    finally:
        if proxy.proc.poll() is None:
            proxy.proc.kill()
            proxy.proc.wait(5)
        for pid in writers_of(stderr_pipe):
            os.kill(pid, signal.SIGKILL)
        proxy.__exit__(None, None, None)


def writers_of(pipe: str) -> Set[int]:
    """Processes whose stderr is `pipe` (as /proc/PID/fd/2 names it)."""
    found = set()
    for name in os.listdir("/proc"):
        if name.isdigit() and int(name) != os.getpid():
            try:
                if os.readlink(f"/proc/{name}/fd/2") == pipe:
                    found.add(int(name))
            except OSError:
                pass
    return found


def recorder_lines(caplog, event: str) -> List[logging.LogRecord]:
    return [r for r in caplog.records if r.name == "chatproxy.recorder" and getattr(r, "event", None) == event]


# -- 1. the recorder child is killed ----------------------------------------------------------


def test_sigkilled_recorder_is_restarted_and_every_answered_chat_is_recorded_once(upstream, make_proxy, caplog):
    """SIGKILL on the recorder child in the middle of a stream of chats, right after it was made to
    fall behind (SIGSTOP, so exchanges it was handed die with it unwritten): the relay never fails a
    request, the proxy logs the crash, starts a new child, hands it everything not confirmed on disk,
    and the journal ends up with every chat a client got a 200 for exactly once, those answered after
    the restart included. Breaks if unconfirmed exchanges were not handed over again (lost chats) or
    records already written were not recognised (duplicates)."""
    caplog.set_level(logging.INFO, logger="chatproxy")
    proxy = make_proxy(upstream.url)
    recorder = proxy.proxy.recorder
    assert isinstance(recorder, RecorderProcess)
    first = proxy.run(lambda: recorder.pid)
    assert first in recorder_children(os.getpid()), "the recorder is not a child process of the proxy"

    load = ChatLoad(proxy.port).start()
    try:
        proxy.wait_recorded(10)
        os.kill(first, signal.SIGSTOP)  # it falls behind: what it is handed now stays in its pipe
        wait_until(lambda: proxy.run(lambda: recorder.pending) >= 10, "exchanges to pile up unconfirmed", timeout=5)
        os.kill(first, signal.SIGKILL)
        wait_until(lambda: proxy.run(lambda: recorder.pid) not in (None, first), "a new recorder process", timeout=5)
        second = proxy.run(lambda: recorder.pid)
        wait_until(lambda: any(RESTARTED in r.getMessage() for r in caplog.records), "the crash to be logged")
        answered_at_restart = load.count()
        wait_until(lambda: load.count() >= answered_at_restart + 20, "chats answered after the restart", timeout=10)
    finally:
        answered = load.stop()
    assert not load.failures, load.failures[:5]

    proxy.flush()  # every exchange answered so far is handed over and on disk
    assert not running(first)
    assert running(second) and second in recorder_children(os.getpid())
    assert recorder_children(os.getpid()) == {second}

    recorded = user_texts(journal(proxy))
    duplicates = sorted({t for t in recorded if recorded.count(t) > 1})
    assert not duplicates, f"recorded twice: {duplicates[:5]}"
    missing = sorted(set(answered) - set(recorded))
    assert not missing, f"{len(missing)} answered chats are not in the journal: {missing[:5]}"
    assert sorted(recorded) == sorted(answered)
    assert set(answered[answered_at_restart:]) <= set(recorded)  # recording goes on after the restart
    assert sorted(dataset_texts(proxy.dataset())) == sorted(answered)
    assert proxy.run(lambda: recorder.pending) == 0

    assert proxy.proxy.status()["errors"] == 0
    errors = [r for r in caplog.records if r.levelno >= logging.ERROR]
    assert len(errors) == 1 and errors[0].name == "chatproxy.recorder" and RESTARTED in errors[0].getMessage(), [
        r.getMessage() for r in errors
    ]
    assert any("the recorder process is running again" in r.getMessage() for r in caplog.records)


def test_recorded_count_does_not_start_again_from_zero_after_a_recorder_restart(upstream, make_proxy):
    """/_chatproxy/status, the terminal status line and the final "stopped: ... N conversations
    recorded" line count the session's records; a recorder crash must not set that number back."""
    proxy = make_proxy(upstream.url)
    recorder = proxy.proxy.recorder
    for text in ("one", "two", "three"):
        assert post_chat(proxy.port, text).status == 200
    proxy.wait_recorded(3)
    first = proxy.run(lambda: recorder.pid)
    os.kill(first, signal.SIGKILL)
    wait_until(lambda: proxy.run(lambda: recorder.pid) not in (None, first), "a new recorder process", timeout=5)
    assert post_chat(proxy.port, "four").status == 200
    proxy.flush()
    assert len(journal(proxy)) == 4
    assert status_of(proxy.port)["recorded"] == 4


def test_a_missing_live_file_is_written_at_start_without_waiting_for_a_chat(upstream, make_proxy):
    """Resuming a session whose live ShareGPT file is gone (deleted, or never written because the
    last recorder was killed), the recorder writes it at once, as the in-process one does, rather
    than whenever the next chat happens to come."""
    first = make_proxy(upstream.url)
    assert post_chat(first.port, "one").status == 200
    first.wait_recorded(1)
    first.stop()
    live = first.datasets / f"{SESSION}.json"
    live.unlink()
    second = make_proxy(upstream.url)
    assert isinstance(second.proxy.recorder, RecorderProcess)
    wait_until(live.exists, "the live file to be written", timeout=1.5)
    assert dataset_texts(dataset_file(second.datasets, SESSION)) == ["one"]


# -- 2. the proxy is killed, its recorder is orphaned -----------------------------------------

REPORTED = re.compile(r"recorded orphans: fake-model, 2 turns, (\d+) chars$")
SUMMED = re.compile(r"recorded orphans: (\d+) more records$")


def test_proxy_killed_with_sigkill_leaves_a_recorder_that_finishes_and_exits(upstream, tmp_path):
    """`python -m chatproxy` SIGKILLed under load: its recorder child, orphaned, sees its stdin end,
    writes what it holds (journal and a final live file), and exits by itself within seconds; every
    record the proxy reported is in the journal, nothing twice; a new proxy on the same session then
    starts, reads it all back and records on top."""
    datasets = tmp_path / "datasets"
    with cli_proxy(upstream.url, datasets, "orphans") as proxy:
        proxy.wait_started()
        orphan = the_recorder_of(proxy)
        chat(proxy.port, "x")  # chars 1 + 7: "recorded orphans: ..., 8 chars"
        proxy.wait_for(r"recorded orphans: fake-model, 2 turns, 8 chars")
        # Chat k carries k letters, so each "recorded" line names its chat by its size (2k + 6 chars).
        sizes = iter(range(2, 10_000))
        lock = threading.Lock()
        answered: List[str] = []

        def worker() -> None:
            while True:
                with lock:
                    text = "m" * next(sizes)
                try:
                    chat(proxy.port, text)
                except Exception:
                    return  # the proxy is gone
                with lock:
                    answered.append(text)

        threads = [threading.Thread(target=worker, daemon=True) for _ in range(4)]
        for thread in threads:
            thread.start()
        wait_until(lambda: len(answered) >= 30, "chats through the proxy", timeout=10)
        proxy.proc.send_signal(signal.SIGKILL)
        proxy.proc.wait(5)
        for thread in threads:
            thread.join(10)
        assert proxy.proc.returncode == -signal.SIGKILL
        wait_until(lambda: not running(orphan), "the orphaned recorder to exit by itself", timeout=5)
        proxy.finish(5)  # stderr ends once the orphan, which shares it, is gone

    lines = [line.partition("chatproxy: ")[2] for line in proxy.lines]
    reported = [int(m.group(1)) for m in map(REPORTED.search, lines) if m]
    summed = sum(int(m.group(1)) for m in map(SUMMED.search, lines) if m)
    records = journal_file(datasets, "orphans")
    texts = user_texts(records)
    assert len(texts) == len(set(texts)), "a record is in the journal twice"
    assert set(texts) <= {"x", *answered}
    sizes_on_disk = {2 * len(t) + 6 for t in texts}
    missing = sorted(set(reported) - sizes_on_disk)
    assert not missing, f"reported recorded but not in the journal: {missing}"
    assert len(reported) + summed <= len(records)
    assert len(records) >= 10, "the kill came too early to prove anything"
    # The orphan's last act: the live file rewritten with everything in the journal.
    assert sorted(dataset_texts(dataset_file(datasets, "orphans"))) == sorted(texts)

    with cli_proxy(upstream.url, datasets, "orphans") as second:
        second.wait_started()
        chat(second.port, "after the crash")
        second.wait_for(r"recorded orphans: fake-model, 2 turns, \d+ chars")
        assert second.stop() == 0
    assert not any("locked" in line or "damaged" in line for line in second.lines), second.lines
    after = user_texts(journal_file(datasets, "orphans"))
    assert after == texts + ["after the crash"]
    assert sorted(dataset_texts(dataset_file(datasets, "orphans"))) == sorted(after)


def test_a_new_proxy_waits_for_the_orphaned_recorder_and_gets_everything_it_was_handed(upstream, tmp_path):
    """The orphan may still be writing when the next proxy starts. Here it is frozen (SIGSTOP) while
    five chats are answered, so their exchanges sit in its pipe, unwritten, when the proxy is
    SIGKILLed. A new proxy on the session must wait for it (the lock names a dead proxy but is still
    held) rather than fail as "locked"; once the orphan runs again it writes those five and exits,
    and the new proxy starts with all of them in the journal, each once."""
    datasets = tmp_path / "datasets"
    lock_path = datasets / "handover.lock"
    frozen = [f"frozen {i}" for i in range(5)]
    with cli_proxy(upstream.url, datasets, "handover") as first:
        first.wait_started()
        orphan = the_recorder_of(first)
        chat(first.port, "before")
        first.wait_for(r"recorded handover: ")
        os.kill(orphan, signal.SIGSTOP)
        chat(first.port, frozen[0])
        wait_until(lambda: pipe_bytes(orphan, 0) > 0, "the first exchange to reach the recorder's pipe")
        one = pipe_bytes(orphan, 0)  # the five differ only in a digit: their frames are the same size
        for text in frozen[1:]:
            chat(first.port, text)
        wait_until(lambda: pipe_bytes(orphan, 0) > 4.5 * one, "all five exchanges to reach the recorder's pipe")
        assert status_of(first.port)["pending_records"] == 5
        first.proc.send_signal(signal.SIGKILL)
        first.proc.wait(5)
        assert lock_path.read_text().strip() == str(first.proc.pid)
        assert (proc_stat(orphan) or ("gone",))[0] == "T"  # still there, frozen, its pipe full of exchanges

        with cli_proxy(upstream.url, datasets, "handover") as second:
            # The new recorder has the lock file open and is retrying: the holder is the frozen orphan.
            wait_until(
                lambda: any(has_open(kid, lock_path) for kid in recorder_children(second.proc.pid)),
                "the new recorder to try the lock",
                timeout=10,
            )
            assert second.proc.poll() is None
            assert flock_holders(lock_path) == {orphan}
            os.kill(orphan, signal.SIGCONT)
            wait_until(lambda: not running(orphan), "the orphan to finish and exit", timeout=5)
            second.wait_started(timeout=10)
            first.finish(5)
            assert user_texts(journal_file(datasets, "handover")) == ["before", *frozen]  # the orphan wrote them
            chat(second.port, "after")
            second.wait_for(r"recorded handover: ")
            assert second.stop() == 0
    assert not any("locked" in line for line in second.lines), second.lines
    assert user_texts(journal_file(datasets, "handover")) == ["before", *frozen, "after"]
    assert sorted(dataset_texts(dataset_file(datasets, "handover"))) == sorted(["before", *frozen, "after"])


HOLDER = """
import sys
sys.path.insert(0, sys.argv[1])
from pathlib import Path
from chatproxy.recorder import durable
lock = durable.SessionLock(Path(sys.argv[2]), owner_pid=int(sys.argv[3]))  # a recorder whose proxy has died
lock.acquire()
print("locked", flush=True)
sys.stdin.read()  # until the test closes stdin, like a recorder finishing its writes
lock.release()
"""


def test_lock_taken_over_from_an_orphaned_recorder_names_the_new_owner(tmp_path):
    """After waiting out an orphaned recorder (the lock held, the pid in it dead), the lock file must
    name the new owner and nothing else: the next proxy reads it to tell a live rival from an orphan
    (a file that is not a bare pid makes it give up at once instead of waiting), and users read it."""
    lock_path = tmp_path / "s.lock"
    dead = subprocess.Popen([sys.executable, "-c", "pass"])
    dead.wait()
    holder = subprocess.Popen(
        [sys.executable, "-c", HOLDER, str(ROOT), str(lock_path), str(dead.pid)],
        stdin=subprocess.PIPE,
        stdout=subprocess.PIPE,
        text=True,
    )
    assert holder.stdout is not None and holder.stdin is not None
    finish = threading.Timer(0.2, holder.stdin.close)  # the orphan finishes while acquire() retries
    try:
        assert holder.stdout.readline() == "locked\n"
        assert lock_path.read_text() == f"{dead.pid}\n"
        finish.start()
        lock = SessionLock(lock_path)
        lock.acquire()
        try:
            assert lock_path.read_bytes() == f"{os.getpid()}\n".encode()
        finally:
            lock.release()
    finally:
        finish.cancel()
        if finish.is_alive():
            finish.join()
        holder.stdin.close()
        if holder.wait(5) is None:
            holder.kill()
        holder.stdout.close()


# -- 3. SIGTERM to the whole process group ----------------------------------------------------


class SlowEcho(Behaviour):
    """The default echo after a short think, so that some chats are in flight when the signal comes."""

    async def run(self, ex) -> None:
        await asyncio.sleep(0.05)
        text = json.loads(ex.request.body)["messages"][-1]["content"]
        await Chat("echo: " + text).run(ex)


def test_sigterm_to_the_process_group_stops_cleanly_with_every_answered_chat_in_the_files(upstream, tmp_path):
    """systemd stops a service by sending SIGTERM to every process of it at once. The recorder child
    must ignore it and keep going until the proxy, done with its in-flight chats, closes its stdin:
    the proxy exits 0 without an error line, and the journal and the live ShareGPT file hold every
    chat a client got a 200 for. (A recorder dying on SIGTERM shows as "exited unexpectedly", and its
    last records never reach the live file.)"""
    upstream.push(*[SlowEcho() for _ in range(2000)])
    datasets = tmp_path / "datasets"
    with cli_proxy(upstream.url, datasets, "group", prefix=("setsid",)) as proxy:  # its own process group
        proxy.wait_started()
        assert os.getpgid(proxy.proc.pid) == proxy.proc.pid
        recorder = the_recorder_of(proxy)
        assert os.getpgid(recorder) == proxy.proc.pid
        chat(proxy.port, "first")
        proxy.wait_for(r"recorded group: ")  # the live file is written now, the next time a second later
        load = ChatLoad(proxy.port, threads=4, prefix="group").start()
        try:
            wait_until(lambda: load.count() >= 12, "chats through the proxy", timeout=10)
            os.killpg(proxy.proc.pid, signal.SIGTERM)
            code = proxy.finish(20)
        finally:
            answered = load.stop()
        assert not running(recorder)
    assert code == 0, proxy.lines
    assert any("stopped:" in line for line in proxy.lines), proxy.lines
    problems = [
        line
        for line in proxy.lines
        if re.search(r"chatproxy: error|unexpectedly|not recorded|could not|Traceback", line)
    ]
    assert not problems, problems
    expected = sorted(["first", *answered])
    assert sorted(user_texts(journal_file(datasets, "group"))) == expected
    assert sorted(dataset_texts(dataset_file(datasets, "group"))) == expected


# -- 4. recording in the proxy's own process --------------------------------------------------


@pytest.mark.parametrize("how", ["option", "environment"])
def test_in_process_recorder_from_the_command_line_starts_no_child(upstream, tmp_path, how):
    """--in-process-recorder (or CHATPROXY_IN_PROCESS_RECORDER=1) records without any child process:
    the proxy has no children while it records, and what it recorded is on disk after a stop."""
    datasets = tmp_path / "datasets"
    extra = ("--in-process-recorder",) if how == "option" else ()
    env = {"CHATPROXY_IN_PROCESS_RECORDER": "1"} if how == "environment" else {}
    with cli_proxy(upstream.url, datasets, "inproc", *extra, env=env) as proxy:
        proxy.wait_started()
        chat(proxy.port, "hello")
        proxy.wait_for(r"recorded inproc: fake-model, 2 turns, \d+ chars")
        assert children_of(proxy.proc.pid) == set()
        assert (datasets / "inproc.lock").read_text().strip() == str(proxy.proc.pid)
        assert flock_holders(datasets / "inproc.lock") == {proxy.proc.pid}
        assert proxy.stop() == 0
    assert user_texts(journal_file(datasets, "inproc")) == ["hello"]
    assert dataset_texts(dataset_file(datasets, "inproc")) == ["hello"]


def test_in_process_recorder_when_embedding_starts_no_child(upstream, make_proxy):
    """RecordOptions(in_process=True) in an embedding program: an in-process Recorder, no child
    process of this one, and chats are recorded and written to the live file."""
    before = recorder_children(os.getpid())
    proxy = make_proxy(upstream.url, record=RecordOptions(in_process=True, snapshot_interval=0.05))
    assert isinstance(proxy.proxy.recorder, InProcessRecorder)
    for text in ("one", "two"):
        assert post_chat(proxy.port, text).status == 200
    proxy.wait_recorded(2)
    assert recorder_children(os.getpid()) - before == set()
    assert sorted(replies(journal(proxy))) == ["echo: one", "echo: two"]
    assert sorted(dataset_texts(proxy.dataset())) == ["one", "two"]


# -- 5. no second interpreter can be started --------------------------------------------------


@pytest.mark.parametrize("kind", ["missing", "not executable", "not python"])
def test_recorder_falls_back_to_this_process_when_no_child_can_start(
    upstream, make_proxy, monkeypatch, tmp_path, caplog, kind
):
    """sys.executable that cannot be run (missing, no exec bit, or a program that exits at once): the
    proxy still starts, says with a WARNING that it records in its own process, and records."""
    if kind == "missing":
        executable = str(tmp_path / "no-such-python")
    elif kind == "not executable":
        executable = str(tmp_path / "python-without-x")
        Path(executable).write_text("#!/bin/sh\nexit 0\n")
        os.chmod(executable, 0o644)  # no exec bit: execve refuses even root
    else:
        executable = "/bin/false"
    caplog.set_level(logging.INFO, logger="chatproxy")
    monkeypatch.setattr(sys, "executable", executable)
    before = recorder_children(os.getpid())
    proxy = make_proxy(upstream.url)
    assert isinstance(proxy.proxy.recorder, InProcessRecorder)
    warnings = [r for r in caplog.records if r.levelno == logging.WARNING and FALLBACK in r.getMessage()]
    assert len(warnings) == 1 and warnings[0].name == "chatproxy", [r.getMessage() for r in caplog.records]
    assert "recorder process" in warnings[0].getMessage()
    assert post_chat(proxy.port, "fallback").status == 200
    proxy.wait_recorded(1)
    assert replies(journal(proxy)) == ["echo: fallback"]
    assert recorder_children(os.getpid()) - before == set()
    assert not [r for r in caplog.records if r.levelno >= logging.ERROR]


# -- 6. record lines under load ---------------------------------------------------------------


def test_more_than_ten_records_a_second_are_summed_up_in_one_line(upstream, make_proxy, caplog):
    """30 chats at once: at most ten detailed "recorded …" lines in the first second, then one line
    "recorded SESSION: N more records" (from the recorder process, forwarded under its own logger),
    and the lines add up to exactly the records written."""
    caplog.set_level(logging.INFO, logger="chatproxy")  # before the proxy: the child takes this level at spawn
    # No live-file rewrite falls due during the test: one that does while the recorder sleeps between
    # commits sends it into a blocking read, and the summary waits for the next exchange (the bug
    # test_a_missing_live_file_is_written_at_start_without_waiting_for_a_chat shows at start-up).
    proxy = make_proxy(upstream.url, record=RecordOptions(snapshot_interval=30.0))
    assert isinstance(proxy.proxy.recorder, RecorderProcess)
    total = 30
    texts = [f"burst {i}" for i in range(total)]
    results: List[int] = []

    def send(batch: List[str]) -> None:
        for text in batch:
            results.append(post_chat(proxy.port, text).status)

    threads = [threading.Thread(target=send, args=(texts[n::6],)) for n in range(6)]
    started = time.monotonic()
    for thread in threads:
        thread.start()
    for thread in threads:
        thread.join(10)
    burst = time.monotonic() - started
    assert results == [200] * total
    proxy.wait_recorded(total)

    def accounted() -> int:
        return len(recorder_lines(caplog, "recorded")) + sum(r.records for r in recorder_lines(caplog, "recorded_many"))

    wait_until(lambda: accounted() >= total, "the summary line", timeout=4)
    detailed = recorder_lines(caplog, "recorded")
    summaries = recorder_lines(caplog, "recorded_many")
    assert accounted() == total
    assert summaries, [r.getMessage() for r in detailed]
    for line in summaries:
        assert line.levelno == logging.INFO and line.session == SESSION
        assert line.getMessage() == f"recorded {SESSION}: {line.records} more records"
    for line in detailed:
        assert re.fullmatch(rf"recorded {SESSION}: fake-model, 2 turns, \d+ chars", line.getMessage())
    first = detailed[0].created
    assert len([r for r in detailed if r.created < first + 0.9]) <= 10
    if burst < 0.5:  # the usual case: the whole burst fell into one one-second window
        assert len(detailed) == 10 and [r.records for r in summaries] == [total - 10]
    assert sorted(user_texts(journal(proxy))) == sorted(texts)


# -- 7. the lock file names the proxy ---------------------------------------------------------


def test_lock_file_names_the_proxy_while_its_recorder_holds_the_lock(upstream, tmp_path):
    """SESSION.lock holds the pid users see and stop (the proxy's), though the recorder child is the
    process that holds the lock; a second proxy on the session is refused naming the first proxy."""
    datasets = tmp_path / "datasets"
    with cli_proxy(upstream.url, datasets, "locked") as proxy:
        proxy.wait_started()
        recorder = the_recorder_of(proxy)
        assert recorder != proxy.proc.pid
        lock_path = datasets / "locked.lock"
        assert lock_path.read_text() == f"{proxy.proc.pid}\n"
        assert flock_holders(lock_path) == {recorder}

        with cli_proxy(upstream.url, datasets, "locked") as rival:
            assert rival.finish(15) == 1
        message = "\n".join(rival.lines)
        assert f"already being recorded by another chatproxy (pid {proxy.proc.pid})" in message, message
        assert lock_path.read_text() == f"{proxy.proc.pid}\n"
        assert proxy.stop() == 0
    assert lock_path.read_text() == ""  # released on a clean stop


# -- 6. the pipe's first read ---------------------------------------------------------------------


def test_exchanges_that_arrive_in_the_same_read_as_open_are_recorded(tmp_path):
    """The recorder process reads "open" and the exchanges behind it in one read of its stdin: none of
    them is lost on the way to the worker's loop (the proxy sends none before "ready" today; nothing
    else stops a future one, or another caller, from doing so)."""
    from chatproxy.recorder.capture import Exchange
    from chatproxy.recorder.pipe import FrameReader, exchange_fields, frame
    from chatproxy.recorder.process import worker_command

    def exchange(text: str) -> Exchange:
        request = {"model": "m", "messages": [{"role": "user", "content": text}]}
        reply = {"model": "m", "choices": [{"index": 0, "message": {"role": "assistant", "content": text.upper()}}]}
        return Exchange(
            "chat.completions",
            "/v1/chat/completions",
            json.dumps(request).encode(),
            time.time(),
            status=200,
            response_body=json.dumps(reply).encode(),
            complete=True,
        )

    settings = {
        "folder": tmp_path,
        "session": "first-read",
        "options": RecordOptions(),
        "owner_pid": os.getpid(),
        "log_level": logging.WARNING,
        "spool": {"path": tmp_path / "first-read.spool", "recover": False},
    }
    texts = ["one", "two", "three"]
    data = frame(("open", settings)) + b"".join(frame(("exchange", exchange_fields(exchange(t)))) for t in texts)
    worker = subprocess.Popen(worker_command(), stdin=subprocess.PIPE, stdout=subprocess.PIPE)
    out, _ = worker.communicate(data, timeout=30)  # one write, then end of input: all of it in one read
    assert worker.returncode == 0
    messages = FrameReader().feed(out)
    assert messages[0][0] == "ready", messages
    assert messages[-1][0] == "status" and messages[-1][1]["on_disk"] == len(texts), messages[-1]
    assert user_texts(journal_file(tmp_path, "first-read")) == texts
