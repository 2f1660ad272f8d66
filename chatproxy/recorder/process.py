"""The proxy's side of the recorder process: hands it exchanges, keeps them until they are on disk.

Parsing, matching and storing records costs more CPU than relaying them, so it runs in a process
of its own (recorder/worker.py), on the other core. Here, on the event loop, each exchange is only
pickled and queued; everything queued within a couple of milliseconds goes down the pipe in one write.

An exchange is kept until the recorder reports it on disk: in memory up to `--recorder-memory`, past
that in the spool (spool.py), so a recorder that falls behind costs the proxy a bounded amount of memory
and its clients nothing. If the recorder process dies, it is started again and handed everything not
yet reported; records already written are recognised as duplicates, so nothing is lost and nothing is
recorded twice.
"""

from __future__ import annotations

import asyncio
import collections
import concurrent.futures
import itertools
import logging
import os
import sys
import time
from pathlib import Path
from typing import Any, Deque, Dict, List, Optional, Set, Tuple, Union

import chatproxy
from chatproxy.config import RecordOptions
from chatproxy.recorder.capture import Exchange
from chatproxy.recorder.durable import SessionLocked
from chatproxy.recorder.interface import status_fields, zero_counts
from chatproxy.recorder.pipe import FrameReader, Message, emit_forwarded, exchange_fields, frame
from chatproxy.recorder.spool import DEFAULT_MEMORY_LIMIT, Backlog, Segment, SpoolFile, handover, spool_path

log = logging.getLogger("chatproxy.recorder")

FLUSH_DELAY = 0.005  # seconds exchanges wait to share one write to the pipe (and one wake-up of the recorder)
MAX_WRITE = 1 << 20  # bytes handed to the pipe at once; the rest waits for the recorder to catch up
MIN_WRITE = 64 * 1024  # ... however small the memory bound: a pipe's buffer
RESTART_DELAYS = (0.1, 0.5, 1, 2, 5)  # seconds before starting a recorder process that died, again
WORKER_MODULE = (
    __name__.rpartition(".")[0] + ".worker"
)  # named, not imported: the proxy never loads the recorder's code
_WORKER_CODE = "import sys; sys.path.append(sys.argv[1]); from {module} import main; main()"


def can_start_process() -> bool:
    """False where no second interpreter can be started the usual way (frozen apps, no executable, Windows)."""
    return os.name == "posix" and bool(sys.executable) and not getattr(sys, "frozen", False)


def worker_command() -> List[str]:
    # -I -S: only the standard library and this package, wherever it was loaded from (a zipapp too);
    # appended, so that nothing installed beside the package can shadow a standard module.
    # The folder that holds the package is found from where it was imported (a zipapp, a wheel).
    package_root = os.path.dirname(os.path.dirname(os.path.abspath(chatproxy.__file__)))
    return [sys.executable, "-I", "-S", "-c", _WORKER_CODE.format(module=WORKER_MODULE), package_root]


class RecorderFailed(Exception):
    """The recorder process could not be started, or ended before it was ready."""


class RecorderProcess:
    """The default Recorder (interface.py): the recorder process, started, fed and restarted from here."""

    def __init__(self, folder: Path, session: str, options: RecordOptions, memory_limit: Optional[int] = None) -> None:
        self.folder = folder
        self.session = session
        self.options = options
        self._counts = zero_counts()
        self._counts_before: Dict[str, int] = {}  # what the recorder processes before this one counted
        self.last_error: Optional[str] = None
        self.paths: Dict[str, Optional[str]] = {"dataset": None, "journal": None}
        if memory_limit is None:
            memory_limit = int(getattr(options, "recorder_memory", DEFAULT_MEMORY_LIMIT))
        self._unconfirmed = Backlog(memory_limit)  # exchanges submitted, not yet on disk
        # Exchanges (frames, or segments of the spool) and syncs for the next writes to the pipe, in order.
        self._outbox: Deque[Union[bytes, Segment]] = collections.deque()
        self._write_size = max(MIN_WRITE, min(MAX_WRITE, memory_limit // 4))  # the pipe transport's copy counts too
        self._spool = SpoolFile(spool_path(folder, session))
        self._spool_thread: Optional[concurrent.futures.ThreadPoolExecutor] = None
        self._spool_write: Optional[asyncio.Future[Tuple[int, int]]] = None
        self._spool_dirty = False  # it holds exchanges this proxy wrote there
        self._spool_used = False  # this proxy has written to it (and so removes it when done)
        self._spawned = 0
        self._on_disk = 0  # of the exchanges the current process received, how many are on disk
        self._syncs: Dict[int, tuple[asyncio.Future[None], bytes]] = {}
        self._tokens = itertools.count()
        self._process: Optional[asyncio.subprocess.Process] = None
        self._ready: Optional[asyncio.Future[Dict[str, Optional[str]]]] = None
        self._reader: Optional[asyncio.Task[None]] = None
        self._restarter: Optional[asyncio.Task[None]] = None
        self._loop: Optional[asyncio.AbstractEventLoop] = None
        self._flush_scheduled = False
        self._closing = False
        self._exit_code: Optional[int] = None

    # -- lifecycle ---------------------------------------------------------------------------

    async def start(self) -> None:
        """Start the recorder process and open the session (raises SessionLocked, OSError or RecorderFailed)."""
        self._loop = asyncio.get_running_loop()
        await self._spawn()

    def submit(self, exchange: Exchange) -> None:
        data = frame(("exchange", exchange_fields(exchange)))
        queued = self._unconfirmed.add(data, time.monotonic())
        if isinstance(queued, bytes):
            self._send(queued)
            return
        if queued is not None:
            self._outbox.append(queued)  # handed over once it is written
        self._write_spool()

    async def sync(self, snapshot: bool = False) -> None:
        """Until everything submitted so far is on disk (and, with `snapshot`, in the live files)."""
        assert self._loop is not None
        token = next(self._tokens)
        done: asyncio.Future[None] = self._loop.create_future()
        data = frame(("sync", token, snapshot))
        self._syncs[token] = (done, data)
        self._send(data)
        await done

    @property
    def counts(self) -> Dict[str, int]:
        return self._counts

    @property
    def pending(self) -> int:
        return len(self._unconfirmed)

    @property
    def tasks(self) -> Set[asyncio.Task[Any]]:
        return {t for t in (self._reader, self._restarter) if t is not None}

    @property
    def pid(self) -> Optional[int]:
        return self._process.pid if self._process is not None else None

    def status(self) -> Dict[str, Any]:
        backlog = self._unconfirmed.fields(self._spool.path)
        return status_fields(self._counts, self.pending, self.paths["dataset"], self.paths["journal"], backlog)

    async def close(self) -> None:
        """Hand over what is queued, let the recorder write it and the final live file, and wait for it."""
        self._closing = True
        if self._restarter is not None:
            self._restarter.cancel()
            self._restarter = None
        while self._spool_write is not None:  # let the spool take what it is writing, then nothing more
            await asyncio.wait([self._spool_write])
        self._unconfirmed.keep_unwritten()
        if not self._running() and self._unconfirmed:
            try:  # one last try, so that what it had not written yet is written
                await self._spawn()
            except (RecorderFailed, SessionLocked, OSError) as exc:
                log.error("could not restart the recorder to write %d exchange(s): %s", len(self._unconfirmed), exc)
        if self._running():
            assert self._process is not None and self._process.stdin is not None
            # Everything left, at once: the pipe is closed after its buffer has gone down it.
            self._process.stdin.write(b"".join(data for item in self._outbox for data in handover(item) or ()))
            self._outbox.clear()
            self._process.stdin.close()
        if self._reader is not None:
            await self._reader
        if self._unconfirmed and self._exit_code != 0:  # with 0, the recorder said what it could not write
            log.error(
                "%d exchange(s) were not recorded: the recorder process ended (code %s) before writing them",
                len(self._unconfirmed),
                self._exit_code,
            )
        for done, _ in self._syncs.values():
            if not done.done():
                done.set_exception(RecorderFailed("the recorder process has ended"))
        await self._close_spool()

    async def _close_spool(self) -> None:
        """Remove the spool once everything in it is recorded; otherwise leave it for the next start."""
        if self._unconfirmed.spooled:
            log.error(
                "%d exchange(s) not recorded are kept in %s; they are recorded when session %s is next started",
                self._unconfirmed.spooled,
                self._spool.path,
                self.session,
            )
        elif self._spool_used:
            try:
                await self._in_spool_thread(self._spool.remove)
            except OSError as exc:
                log.warning("could not remove %s, whose exchanges are all recorded: %s", self._spool.path, exc)
        self._spool.close()
        if self._spool_thread is not None:
            self._spool_thread.shutdown(wait=False)  # idle: its last job is done
            self._spool_thread = None

    # -- the process -------------------------------------------------------------------------

    async def _spawn(self) -> None:
        loop = asyncio.get_running_loop()
        try:
            process = await asyncio.create_subprocess_exec(
                *worker_command(), stdin=asyncio.subprocess.PIPE, stdout=asyncio.subprocess.PIPE
            )
        except (OSError, NotImplementedError) as exc:
            raise RecorderFailed(f"cannot start the recorder process: {exc}") from exc
        assert process.stdin is not None
        settings = {
            "folder": self.folder,
            "session": self.session,
            "options": self.options,
            "owner_pid": os.getpid(),
            "log_level": _forwarded_level(),
        }
        # The first recorder records what a proxy killed before its recorder caught up left in the spool;
        # a restarted one is handed this proxy's own spool, range by range, like everything unconfirmed.
        settings["spool"] = {"path": self._spool.path, "recover": self._spawned == 0}
        self._spawned += 1
        process.stdin.write(frame(("open", settings)))
        self._process, self._on_disk = process, 0
        self._counts_before = dict(self._counts)
        self._ready = loop.create_future()
        self._reader = asyncio.ensure_future(self._read(process))
        try:
            self.paths = await self._ready
        except BaseException:
            process.stdin.close()
            if process.returncode is None:
                process.kill()
            await self._reader
            raise

    def _running(self) -> bool:
        return (
            self._process is not None
            and self._process.returncode is None
            and self._ready is not None
            and self._ready.done()
            and not self._ready.exception()
        )

    async def _read(self, process: asyncio.subprocess.Process) -> None:
        assert process.stdout is not None
        reader = FrameReader()
        while True:
            data = await process.stdout.read(1 << 16)
            if not data:
                break
            for message in reader.feed(data):
                self._handle(message)
        code = self._exit_code = await process.wait()
        ready = self._ready
        if ready is None or process is not self._process:
            return
        if not ready.done():
            ready.set_exception(RecorderFailed(f"the recorder process exited with code {code} before it was ready"))
        elif ready.exception() is None and not self._closing:
            log.error(
                "the recorder process exited unexpectedly (code %s); "
                "restarting it, %d exchange(s) will be handed over again",
                code,
                len(self._unconfirmed),
            )
            self._restarter = asyncio.ensure_future(self._restart())

    def _handle(self, message: Message) -> None:
        kind = message[0]
        if kind == "status":
            self._confirm(message[1])
        elif kind == "log":
            emit_forwarded(message[1])
        elif kind == "synced":
            done, _ = self._syncs.pop(message[1], (None, b""))
            if done is not None and not done.done():
                done.set_result(None)
        elif kind == "ready":
            assert self._ready is not None
            # A restarted process gets everything the one before had not reported on disk, handed
            # over in the same step that makes it "running": no frame can go down the pipe twice.
            self._unconfirmed.restart()
            self._outbox = collections.deque(self._unconfirmed.items)
            self._outbox.extend(data for _, data in self._syncs.values())
            self._schedule_flush()
            self._ready.set_result(message[1])
        elif kind == "failed" and self._ready is not None and not self._ready.done():
            self._ready.set_exception(_open_error(message[1], message[2]))

    def _confirm(self, state: Dict[str, Any]) -> None:
        self._unconfirmed.confirm(state["on_disk"] - self._on_disk)
        self._on_disk = state["on_disk"]
        self._clear_spool_if_drained()
        self._counts = {k: self._counts_before.get(k, 0) + v for k, v in state["counts"].items()}
        self.last_error = state["last_error"]
        self.paths = state.get("paths") or self.paths

    async def _restart(self) -> None:
        for attempt in itertools.count():
            await asyncio.sleep(RESTART_DELAYS[min(attempt, len(RESTART_DELAYS) - 1)])
            try:
                await self._spawn()
                log.warning("the recorder process is running again")
                return
            except (RecorderFailed, SessionLocked, OSError) as exc:
                log.error("could not restart the recorder process: %s; retrying", exc)

    # -- the pipe ----------------------------------------------------------------------------

    def _send(self, data: bytes) -> None:
        self._outbox.append(data)
        self._schedule_flush()

    def _schedule_flush(self) -> None:
        if not self._flush_scheduled and self._loop is not None:
            self._flush_scheduled = True
            self._loop.call_later(FLUSH_DELAY, self._flush)

    def _flush(self) -> None:
        """One write for what was queued in the last FLUSH_DELAY seconds (up to _write_size bytes)."""
        self._flush_scheduled = False
        if not self._outbox or not self._running():
            return  # a restarted process is handed the unconfirmed exchanges anyway
        assert self._process is not None and self._process.stdin is not None
        stdin = self._process.stdin
        if stdin.transport.get_write_buffer_size():
            # The recorder is behind: the frames wait here (they are kept until confirmed anyway)
            # rather than as a second copy in the pipe transport's buffer.
            self._schedule_flush()
            return
        chunks: List[bytes] = []
        size = 0
        waiting = False  # for a segment being written: what follows waits, and its write flushes again
        while self._outbox and size < self._write_size:
            data = handover(self._outbox[0])
            if data is None:
                waiting = True
                break
            self._outbox.popleft()
            chunks.extend(data)
            size += sum(map(len, data))
        if chunks:
            stdin.write(b"".join(chunks))
        if self._outbox and not waiting:
            self._schedule_flush()

    # -- the spool ---------------------------------------------------------------------------

    def _in_spool_thread(self, job: Any, *args: Any) -> asyncio.Future[Any]:
        """Spool writes run in one thread of their own, in the order they were asked for: an fsync can
        take long on a busy disk, and the event loop never waits for one."""
        assert self._loop is not None
        if self._spool_thread is None:
            self._spool_thread = concurrent.futures.ThreadPoolExecutor(1, thread_name_prefix="chatproxy-spool")
        return self._loop.run_in_executor(self._spool_thread, job, *args)

    def _write_spool(self) -> None:
        """Start writing the oldest segment waiting for it, unless a write is under way."""
        if self._spool_write is not None or self._loop is None:
            return
        segment = self._unconfirmed.next_write()
        if segment is None:
            return
        self._spool_write = self._in_spool_thread(self._spool.append, segment.frames)
        self._spool_write.add_done_callback(lambda done: self._spooled(segment, done))

    def _spooled(self, segment: Segment, done: asyncio.Future[Tuple[int, int]]) -> None:
        self._spool_write = None
        if done.cancelled():
            return
        error = done.exception()
        if error is None:
            self._unconfirmed.written(segment, *done.result())
            self._spool_dirty = self._spool_used = True
        else:
            backlog = self._unconfirmed
            reason = f"could not spool {segment.count} exchange(s) to {self._spool.path}: {error}"
            delay = backlog.write_failed(segment, reason, time.monotonic())
            log.error(
                "%s; keeping them in memory (%s held; --recorder-memory is %s); next try in %s s",
                reason,
                _size_text(backlog.in_memory_bytes),
                _size_text(backlog.limit),
                delay,
                extra={"event": "spool_failed", "in_memory_bytes": backlog.in_memory_bytes},
            )
        self._schedule_flush()
        self._write_spool()

    def _clear_spool_if_drained(self) -> None:
        """Empty the spool once the recorder has everything this proxy wrote to it."""
        if not self._spool_dirty or self._unconfirmed.spooled or self._spool_write is not None or self._closing:
            return
        self._spool_dirty = False
        self._in_spool_thread(self._spool.clear).add_done_callback(self._spool_cleared)

    def _spool_cleared(self, done: asyncio.Future[None]) -> None:
        if not done.cancelled() and done.exception() is not None:
            self._spool_dirty = True  # tried again when it next drains
            log.warning("could not empty %s, whose exchanges are all recorded: %s", self._spool.path, done.exception())


def _size_text(size: int) -> str:
    return f"{size / (1 << 20):.1f} MB" if size >= 1 << 20 else f"{size / 1024:.0f} KB"


def _forwarded_level() -> int:
    """The most detailed level any recorder logger would show here."""
    return min(logging.getLogger(name).getEffectiveLevel() for name in ("chatproxy.recorder", "chatproxy.store"))


def _open_error(kind: str, details: Any) -> Exception:
    if kind == "locked":
        return SessionLocked(details)
    number, reason, filename = details
    return OSError(number, reason, filename) if number is not None else OSError(reason)
