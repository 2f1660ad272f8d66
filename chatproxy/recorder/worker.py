"""The recorder process: reads exchanges from the proxy over stdin, records them, reports on stdout.

It runs on its own core, so parsing and storing records never takes the relay's CPU. It is plain
blocking code (select, read, place, commit): no event loop, so it starts fast and stays small.

It ignores SIGINT, SIGTERM and SIGHUP: the proxy decides when recording ends by closing stdin.
Should the proxy die, stdin ends all the same, and everything it had handed over is still written.

Exchanges the proxy spooled (spool.py) arrive as ranges of the spool file, read here a piece at a time
in their place among the others; before the first exchange, what a proxy killed earlier left in the
spool is recorded.
"""

from __future__ import annotations

import collections
import logging
import os
import select
import signal
import threading
import time
from pathlib import Path
from typing import Any, Deque, Dict, List, Optional, Tuple

from chatproxy.recorder import durable
from chatproxy.recorder.capture import Exchange
from chatproxy.recorder.core import CLOSING_ATTEMPTS, RecordBook
from chatproxy.recorder.pipe import FrameReader, Message, exchange_from, frame, log_fields
from chatproxy.recorder.spool import SpoolReader, recover

log = logging.getLogger("chatproxy.recorder")

COMMIT_SPACING = 0.02  # seconds between journal commits (fsyncs) while records keep coming
READ_SIZE = 1 << 20
RECORDER_NICENESS = 5


class Outbox:
    """Messages to the proxy. Once the proxy is gone they are dropped: recording goes on."""

    def __init__(self, fd: int) -> None:
        self._fd = fd
        self._lock = threading.Lock()
        self._broken = False

    def send(self, message: Message) -> None:
        data = memoryview(frame(message))
        with self._lock:
            while data and not self._broken:
                try:
                    data = data[os.write(self._fd, data) :]
                except BrokenPipeError:
                    self._broken = True
                except InterruptedError:
                    continue  # a signal arrived mid-write: the write is simply tried again


class ForwardingHandler(logging.Handler):
    """Sends log records to the proxy, which logs them as its own. While held, they wait, so that
    the status a batch ends with reaches the proxy before the lines about that batch."""

    def __init__(self, outbox: Outbox) -> None:
        super().__init__()
        self._outbox = outbox
        self._held: Optional[List[Message]] = None

    def emit(self, record: logging.LogRecord) -> None:
        try:
            message = ("log", log_fields(record))
        except Exception:
            self.handleError(record)
            return
        if self._held is not None:
            self._held.append(message)
        else:
            self._outbox.send(message)

    def hold_back(self) -> None:
        self._held = []

    def send_held(self) -> None:
        held, self._held = self._held or [], None
        for message in held:
            self._outbox.send(message)


class Inbox:
    def __init__(self, fd: int) -> None:
        self._fd = fd
        self._reader = FrameReader()
        self._read: Deque[Message] = collections.deque()  # from the pipe, not handed out yet
        self.spool: Optional[SpoolReader] = None
        self.hold_spool = False  # leave spooled exchanges on disk (and what follows them, for order)
        self.ended = False

    def receive(self, timeout: Optional[float]) -> List[Message]:
        """The messages that arrive within `timeout` seconds (None: wait for some); sets `ended` at EOF.
        A spooled range stands for the exchanges it holds, handed out about READ_SIZE bytes at a time."""
        if not self._ready():
            readable, _, _ = select.select([self._fd], [], [], None if timeout is None else max(0.0, timeout))
            if not readable:
                return []
            data = os.read(self._fd, READ_SIZE)
            if not data:
                self.ended = True
                return []
            self._read.extend(self._reader.feed(data))
        return self._hand_out()

    def put_back(self, messages: List[Message]) -> None:
        """Messages handed out too early, to be handed out again first, in their order."""
        self._read.extendleft(reversed(messages))

    def left(self) -> Tuple[int, int]:
        """Exchanges read from the pipe but never handed out (the disk failed to the end): in all, and
        of those, how many are in the spool."""
        spooled = sum(message[3] for message in self._read if message[0] == "spooled")
        return spooled + sum(1 for message in self._read if message[0] == "exchange"), spooled

    def _ready(self) -> bool:
        return bool(self._read) and not (self.hold_spool and self._read[0][0] == "spooled")

    def _hand_out(self) -> List[Message]:
        messages: List[Message] = []
        budget = READ_SIZE
        while self._ready() and budget > 0:
            if self._read[0][0] != "spooled":
                messages.append(self._read.popleft())
                continue
            _, start, end, count = self._read[0]
            assert self.spool is not None, "a spooled range before the session was opened"
            exchanges, start_next, problem = self.spool.read(start, end, budget)
            budget -= start_next - start
            messages += exchanges
            left = count - len(exchanges)
            if start_next < end and not problem:
                self._read[0] = ("spooled", start_next, end, left)
                continue
            self._read.popleft()
            if left:
                log.error(
                    "could not read %d spooled exchange(s) from %s: %s; they are not recorded",
                    left,
                    self.spool.path,
                    problem or "the range holds fewer than it should",
                )
                messages.append(("unreadable", left))
        return messages


def main(inbox_fd: int = 0, outbox_fd: int = 1) -> None:
    for signum in (signal.SIGINT, signal.SIGTERM, getattr(signal, "SIGHUP", None)):
        if signum is not None:
            signal.signal(signum, signal.SIG_IGN)
    try:
        os.nice(RECORDER_NICENESS)  # background work: where both want a core, the relay goes first
    except (AttributeError, OSError):
        pass  # no nice() here (Windows) or not allowed: record at the proxy's priority
    inbox, outbox = Inbox(inbox_fd), Outbox(outbox_fd)
    settings = _first_message(inbox)
    if settings is None:
        return
    handler = _route_logging(outbox, settings["log_level"])
    book = RecordBook(settings["folder"], settings["session"], settings["options"], settings["owner_pid"])
    spool = settings.get("spool") or {}
    try:
        store = book.open_session(settings["session"])
        if spool.get("recover"):
            recover(book, Path(spool["path"]))
    except durable.SessionLocked as exc:
        outbox.send(("failed", "locked", str(exc)))
        return
    except OSError as exc:
        outbox.send(("failed", "os", (exc.errno, exc.strerror or str(exc), exc.filename)))
        return
    if spool.get("path"):
        inbox.spool = SpoolReader(Path(spool["path"]))
    outbox.send(("ready", {"dataset": str(store.snapshot_path), "journal": str(store.journal_path)}))
    Worker(book, inbox, outbox, handler).run()


def _first_message(inbox: Inbox) -> Optional[Dict[str, Any]]:
    """The settings of "open"; what came with it in the same read waits for the worker's loop."""
    while not inbox.ended:
        messages = inbox.receive(None)
        for number, message in enumerate(messages):
            if message[0] == "open":
                inbox.put_back(messages[number + 1 :])
                settings: Dict[str, Any] = message[1]
                return settings
    return None


def _route_logging(outbox: Outbox, level: int) -> ForwardingHandler:
    handler = ForwardingHandler(outbox)
    root = logging.getLogger("chatproxy")
    root.handlers[:] = [handler]
    root.setLevel(level)
    root.propagate = False
    return handler


class Worker:
    """The loop: wait for exchanges (or a due write), place them, commit them, report."""

    def __init__(self, book: RecordBook, inbox: Inbox, outbox: Outbox, log_lines: ForwardingHandler) -> None:
        self.book = book
        self.inbox = inbox
        self.outbox = outbox
        self.log_lines = log_lines
        self.taken = 0  # exchanges received
        self.on_disk = 0  # of those, how many are recorded (or found not recordable) for good
        self.syncs: List[Tuple[int, bool]] = []  # (token, snapshot) waiting for a write to succeed
        self.retry_at = 0.0
        self.last_commit = 0.0

    def run(self) -> None:
        while not self.inbox.ended:
            due = self._due()
            # While the disk fails, spooled exchanges stay in the spool rather than pile up here.
            self.inbox.hold_spool = self.book.failures > 0
            exchanges = self._sort(self.inbox.receive(None if due == float("inf") else due))
            self.taken += len(exchanges)
            if self.book.failures and not self.inbox.ended and self._due() > 0:
                self.book.unplaced.extend(exchanges)  # the disk is failing: wait for the retry time
                continue
            self.log_lines.hold_back()
            try:
                # Exchanges are placed as they arrive, in small steps that leave the CPU to the relay
                # soon; their commit (the fsync) waits for the next COMMIT_SPACING tick.
                if exchanges or self.book.unplaced:
                    self.book.place_all(exchanges)
                if self.syncs or self.inbox.ended or self._due() <= 0:
                    self._write(final=self.inbox.ended)
                elif exchanges:
                    self._report()  # the counts the held lines speak of (skipped, not recordable)
            finally:
                self.log_lines.send_held()
        while self.book.failures and self.book.failures < CLOSING_ATTEMPTS:
            self._write(final=True)
        left, spooled = self.inbox.left()
        if left:
            log.error(
                "%d exchange(s) could not be recorded before exit: the journal could not be written; "
                "%d of them stay in the spool for the next start",
                left,
                spooled,
            )
        self.book.close()
        if self.inbox.spool is not None:
            self.inbox.spool.close()
        self._report()

    def _due(self) -> float:
        """Seconds until a write is due even if nothing more arrives."""
        now = time.monotonic()
        if self.book.failures:
            return self.retry_at - now
        due = self.book.write_due(now)
        if self.taken > self.on_disk:  # exchanges placed since the last commit
            due = min(due, self.last_commit + COMMIT_SPACING - now)
        return due

    def _sort(self, messages: List[Message]) -> List[Exchange]:
        exchanges = []
        for message in messages:
            if message[0] == "exchange":
                exchanges.append(exchange_from(message[1]))
            elif message[0] == "sync":
                self.syncs.append((message[1], message[2]))
            elif message[0] == "unreadable":
                self.taken += message[1]  # lost (and said so): counted, so later ones are confirmed
        return exchanges

    def _write(self, final: bool) -> None:
        taken = self.taken
        self.last_commit = time.monotonic()
        ok = self.book.write(final=final, snapshot=any(snapshot for _, snapshot in self.syncs))
        if ok:
            self.on_disk = taken
        else:
            self.retry_at = time.monotonic() + self.book.retry_delay()
        self._report()  # before "synced": a caller that waited for the sync reads counts that include it
        if ok:
            for token, _ in self.syncs:
                self.outbox.send(("synced", token))
            self.syncs = []

    def _paths(self) -> Dict[str, Optional[str]]:
        status = self.book.status()
        return {"dataset": status["dataset"], "journal": status["journal"]}

    def _report(self) -> None:
        self.outbox.send(
            (
                "status",
                {
                    "counts": dict(self.book.counts),
                    "on_disk": self.on_disk,
                    "last_error": self.book.last_error,
                    "paths": self._paths(),  # a rotation moves on to the next part's files
                },
            )
        )
