"""Storage faults on real files: a full disk, a folder that turns read-only, damaged journals, and
two proxies on one session. Faults come from the kernel (tests run as root, where chmod stops
nothing): /dev/full gives ENOSPC anywhere; a size-limited tmpfs fills up for real; `chattr +i` makes
a folder immutable even for root. The last two need root and are skipped, with the reason, elsewhere."""

from __future__ import annotations

import json
import logging
import os
import signal
import subprocess
import sys
from pathlib import Path

import pytest

from chatproxy.recorder.durable import SessionLock, SessionLocked

from subproc import ROOT
from support_faults import journal, post_chat, replies, wait_until

SESSION = "test-session"  # what conftest's make_proxy uses


def chat_ok(proxy, text: str, headers=()) -> None:
    reply = post_chat(proxy.port, text, headers=headers)
    assert reply.status == 200 and reply.json()["choices"][0]["message"]["content"] == "echo: " + text


def recorder_counts(proxy) -> dict:
    return proxy.run(lambda: dict(proxy.proxy.recorder.counts, pending=proxy.proxy.recorder.pending))


def error_lines(caplog) -> list:
    return [r.getMessage() for r in caplog.records if r.levelno >= logging.ERROR and r.name == "chatproxy.recorder"]


def wait_errors(caplog, count: int) -> None:
    wait_until(lambda: len(error_lines(caplog)) >= count, f"{count} write errors to be logged", timeout=4)


# -- a full disk ------------------------------------------------------------------------------


def test_journal_on_a_full_device_keeps_records_in_memory_and_retries_loudly(upstream, make_proxy, caplog):
    """ENOSPC from /dev/full: chats keep flowing, every failed attempt logs an error, the records
    wait in memory, and once writes work again each lands in the journal exactly once."""
    caplog.set_level(logging.INFO, logger="chatproxy")
    proxy = make_proxy(upstream.url)
    journal_path = proxy.datasets / f"{SESSION}.jsonl"
    journal_path.symlink_to("/dev/full")
    chat_ok(proxy, "one")
    chat_ok(proxy, "two")
    wait_errors(caplog, 2)
    for line in error_lines(caplog):
        assert "No space left on device" in line and "kept in memory, retrying" in line
    counts = recorder_counts(proxy)
    assert counts["recorded"] == 0 and counts["pending"] == 2 and counts["write_errors"] >= 2
    journal_path.unlink()  # space again
    proxy.wait_recorded(2, timeout=4)
    assert sorted(replies(journal(proxy))) == ["echo: one", "echo: two"]
    assert recorder_counts(proxy)["pending"] == 0
    chat_ok(proxy, "three")
    proxy.wait_recorded(3)
    assert sorted(replies(journal(proxy))) == ["echo: one", "echo: three", "echo: two"]
    assert sorted(c["conversations"][-1]["value"] for c in proxy.dataset()) == ["echo: one", "echo: three", "echo: two"]


def test_records_that_cannot_be_written_by_exit_are_reported(upstream, make_proxy, caplog):
    caplog.set_level(logging.INFO, logger="chatproxy")
    proxy = make_proxy(upstream.url)
    (proxy.datasets / f"{SESSION}.jsonl").symlink_to("/dev/full")
    chat_ok(proxy, "doomed")
    wait_errors(caplog, 1)
    proxy.stop()
    assert any("1 record(s) could not be written before exit" in line for line in error_lines(caplog))


@pytest.fixture
def small_tmpfs(tmp_path: Path):
    """tmp_path/datasets as a 512 KiB tmpfs: a disk that really fills up."""
    folder = tmp_path / "datasets"
    folder.mkdir(mode=0o700)
    done = subprocess.run(
        ["mount", "-t", "tmpfs", "-o", "size=512k,mode=0700", "tmpfs", str(folder)], capture_output=True
    )
    if done.returncode != 0:
        pytest.skip(f"cannot mount a tmpfs here (needs root): {done.stderr.decode().strip()}")
    try:
        yield folder
    finally:
        subprocess.run(["umount", "-l", str(folder)], check=False)


def fill(folder: Path) -> Path:
    """Fill the file system to the last byte; returns the filler file."""
    filler = folder / "filler"
    with open(filler, "wb", buffering=0) as handle:
        block = b"\0" * 4096
        try:
            while True:
                handle.write(block)
        except OSError:
            pass
        try:
            while True:
                handle.write(b"\0")
        except OSError:
            pass
    return filler


def test_disk_that_fills_mid_run_loses_nothing_and_leaves_no_torn_line(small_tmpfs, make_proxy, upstream, caplog):
    """A real ENOSPC on a journal already open and written: the failed append is cut back off, so
    once space returns the journal is whole lines only, each record once."""
    caplog.set_level(logging.INFO, logger="chatproxy")
    proxy = make_proxy(upstream.url)
    chat_ok(proxy, "before")
    proxy.wait_recorded(1)
    filler = fill(small_tmpfs)
    size_before = (small_tmpfs / f"{SESSION}.jsonl").stat().st_size
    chat_ok(proxy, "while full " + "x" * 6000)
    chat_ok(proxy, "still full")
    wait_errors(caplog, 2)
    assert any("No space left on device" in line for line in error_lines(caplog))
    assert (small_tmpfs / f"{SESSION}.jsonl").stat().st_size == size_before  # nothing half-written
    assert recorder_counts(proxy)["pending"] >= 1
    filler.unlink()
    proxy.wait_recorded(3, timeout=4)
    lines = (small_tmpfs / f"{SESSION}.jsonl").read_bytes().split(b"\n")
    assert lines[-1] == b""
    texts = [json.loads(line)["messages"][-1]["content"] for line in lines[:-1]]
    assert sorted(texts) == sorted(["echo: before", "echo: while full " + "x" * 6000, "echo: still full"])
    proxy.flush()
    json.loads((small_tmpfs / f"{SESSION}.json").read_bytes())


# -- a read-only folder -----------------------------------------------------------------------


@pytest.fixture
def immutable():
    """`chattr +i` on folders or files (undone at the end): writes refused even for root."""
    marked = []

    def mark(path: Path) -> None:
        done = subprocess.run(["chattr", "+i", str(path)], capture_output=True)
        if done.returncode != 0:
            pytest.skip(f"chattr +i is not available here: {done.stderr.decode().strip()}")
        marked.append(path)

    def unmark() -> None:
        while marked:
            subprocess.run(["chattr", "-i", str(marked.pop())], check=False)

    mark.undo = unmark  # type: ignore[attr-defined]
    try:
        yield mark
    finally:
        unmark()


def test_folder_that_turns_read_only_keeps_records_for_every_session(upstream, make_proxy, immutable, caplog):
    """Nothing can be created in the folder: neither the journal, nor the snapshot, nor another
    session's files. Chats still flow; once the folder is writable again every record lands."""
    caplog.set_level(logging.INFO, logger="chatproxy")
    proxy = make_proxy(upstream.url)
    immutable(proxy.datasets)
    chat_ok(proxy, "main session")
    chat_ok(proxy, "other session", headers=[("X-Chatproxy-Session", "other")])
    wait_errors(caplog, 2)
    assert all("Operation not permitted" in line for line in error_lines(caplog))
    assert not (proxy.datasets / f"{SESSION}.jsonl").exists()
    assert recorder_counts(proxy)["pending"] == 2
    immutable.undo()
    wait_until(lambda: (proxy.datasets / "other.jsonl").exists(), "the other session's journal", timeout=4)
    proxy.wait_recorded(2, timeout=4)
    assert replies(journal(proxy)) == ["echo: main session"]
    other = [json.loads(line) for line in (proxy.datasets / "other.jsonl").read_bytes().splitlines()]
    assert replies(other) == ["echo: other session"]


# -- damaged journals -------------------------------------------------------------------------


def record_session(make_proxy, upstream, texts) -> bytes:
    """Record some chats with a first proxy, stop it, and return its journal bytes."""
    first = make_proxy(upstream.url)
    for text in texts:
        chat_ok(first, text)
    first.wait_recorded(len(texts))
    first.stop()
    return (first.datasets / f"{SESSION}.jsonl").read_bytes()


def test_torn_last_line_is_set_aside_and_the_rest_resumed(upstream, make_proxy, tmp_path, caplog):
    caplog.set_level(logging.WARNING, logger="chatproxy")
    good = record_session(make_proxy, upstream, ["alpha", "beta"])
    folder = tmp_path / "datasets"
    torn = b'{"v":1,"id":"deadbeefdeadbeef","parent":null,"base":0,"messages":[{"role":"user","con'
    (folder / f"{SESSION}.jsonl").write_bytes(good + torn)
    proxy = make_proxy(upstream.url)
    assert "the last line was cut short by a crash" in caplog.text
    [aside] = folder.glob(f"{SESSION}.jsonl.torn-*")
    assert aside.read_bytes() == torn
    assert oct(aside.stat().st_mode & 0o777) == "0o600"
    assert (folder / f"{SESSION}.jsonl").read_bytes() == good
    chat_ok(proxy, "gamma")
    proxy.wait_recorded(1)
    assert replies(journal(proxy)) == ["echo: alpha", "echo: beta", "echo: gamma"]
    assert [c["conversations"][-1]["value"] for c in proxy.dataset()] == ["echo: alpha", "echo: beta", "echo: gamma"]


def test_garbage_lines_in_the_middle_are_skipped_and_every_other_line_kept(upstream, make_proxy, tmp_path, caplog):
    caplog.set_level(logging.WARNING, logger="chatproxy")
    good = record_session(make_proxy, upstream, ["alpha", "beta", "gamma"]).split(b"\n")
    folder = tmp_path / "datasets"
    damaged = [good[0], b"\x00\x00garbage{{{", good[1], b'{"json": "but not a record"}', b"[1, 2]", good[2], b""]
    (folder / f"{SESSION}.jsonl").write_bytes(b"\n".join(damaged))
    proxy = make_proxy(upstream.url)
    for number in (2, 4, 5):
        assert f"skipped damaged line {number}" in caplog.text
    assert "skipped damaged line 1:" not in caplog.text and "skipped damaged line 3:" not in caplog.text
    assert [c["conversations"][-1]["value"] for c in proxy.dataset()] == ["echo: alpha", "echo: beta", "echo: gamma"]
    chat_ok(proxy, "delta")
    proxy.wait_recorded(1)
    lines = (folder / f"{SESSION}.jsonl").read_bytes().split(b"\n")
    assert lines[:-2] == damaged[:-1]  # the damage is reported, never rewritten
    assert json.loads(lines[-2])["messages"][-1]["content"] == "echo: delta"


# -- two proxies, one session -----------------------------------------------------------------


def test_second_proxy_on_the_same_session_is_refused(upstream, make_proxy):
    make_proxy(upstream.url)
    with pytest.raises(SessionLocked) as info:
        make_proxy(upstream.url)
    message = str(info.value)
    assert f"pid {os.getpid()}" in message and "choose another --session" in message


def test_second_chatproxy_process_on_the_same_session_exits_with_a_clear_message(upstream, make_proxy):
    first = make_proxy(upstream.url)
    done = subprocess.run(
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
            str(first.datasets),
        ],
        capture_output=True,
        text=True,
        timeout=20,
        cwd=str(ROOT),
    )
    assert done.returncode == 1
    assert "session is already being recorded by another chatproxy" in done.stderr
    assert f"(pid {os.getpid()})" in done.stderr
    chat_ok(first, "the first proxy is unaffected")


def test_stale_lock_of_a_killed_process_is_taken_over(upstream, make_proxy, tmp_path):
    """flock dies with its holder: a lock file left by a kill -9 does not block the session."""
    folder = tmp_path / "datasets"
    folder.mkdir(mode=0o700)
    holder = subprocess.Popen(
        [
            sys.executable,
            "-c",
            "import sys; from pathlib import Path; from chatproxy.recorder.durable import SessionLock;"
            f"SessionLock(Path({str(folder / (SESSION + '.lock'))!r})).acquire(); print('locked', flush=True);"
            "sys.stdin.read()",
        ],
        stdin=subprocess.PIPE,
        stdout=subprocess.PIPE,
        text=True,
        cwd=str(ROOT),
    )
    try:
        assert holder.stdout.readline().strip() == "locked"
        with pytest.raises(SessionLocked):
            SessionLock(folder / f"{SESSION}.lock").acquire()
        holder.send_signal(signal.SIGKILL)
        holder.wait(5)
    finally:
        holder.kill()
        holder.wait(5)
        holder.stdin.close()
        holder.stdout.close()
    assert (folder / f"{SESSION}.lock").read_text().strip() == str(holder.pid)  # the lock file is still there
    proxy = make_proxy(upstream.url)
    assert (folder / f"{SESSION}.lock").read_text().strip() == str(os.getpid())
    chat_ok(proxy, "taken over")
    proxy.wait_recorded(1)


def test_lock_file_with_a_dead_pid_and_no_lock_is_taken_over(upstream, make_proxy, tmp_path):
    folder = tmp_path / "datasets"
    folder.mkdir(mode=0o700)
    (folder / f"{SESSION}.lock").write_text("4194303\n")
    proxy = make_proxy(upstream.url)
    chat_ok(proxy, "fine")
    proxy.wait_recorded(1)
