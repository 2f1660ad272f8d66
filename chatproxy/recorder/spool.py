"""The spool: exchanges the recorder has not confirmed yet, on disk once the proxy holds its bound of them.

The proxy keeps each exchange until the recorder reports it on disk. It holds them in memory up to
`--recorder-memory`; past that, they are appended to `SESSION.spool` beside the session (one fsynced
write per batch, in a thread of the proxy, so no request waits for the disk), and the recorder reads
them from there when it reaches them. Order is kept: a batch of the spool (a segment) takes its place
in the same queue as the exchanges held in memory, and is handed over where it stands.

The file holds records back to back, each

    b"CPS1", the CRC-32 of the frame (4 bytes, big-endian), the frame (pipe.py: 4-byte length, pickle)

A record cut short by a crash, or one whose magic or checksum is wrong, ends what is read: the bytes
from there on are set aside in `SESSION.spool.torn-<time>`, never unpickled. What is unpickled names no
class (an exchange is a tuple of plain values), and the unpickler refuses any that does.

A proxy killed with exchanges in its spool leaves the file behind; the next recorder of the session
records them before it takes new ones (records already in the journal are recognised as duplicates)
and removes the file.
"""

from __future__ import annotations

import collections
import io
import logging
import os
import pickle
import stat
import struct
import time
import zlib
from pathlib import Path
from typing import TYPE_CHECKING, Any, Deque, Dict, List, Optional, Sequence, Tuple, Union

from chatproxy.recorder import durable
from chatproxy.recorder.interface import backlog_fields
from chatproxy.recorder.pipe import HEADER, Message, exchange_from, frame

if TYPE_CHECKING:  # the recorder's own module: the proxy, which loads this one, never imports it
    from chatproxy.recorder.core import RecordBook

log = logging.getLogger("chatproxy.recorder")

MAGIC = b"CPS1"
RECORD_HEAD = struct.Struct("!4sI")  # magic, CRC-32 of the frame that follows
FRAME_START = RECORD_HEAD.size + HEADER.size  # where a record's pickle begins
DEFAULT_MEMORY_LIMIT = 64 * 1024 * 1024  # bytes of unconfirmed exchanges the proxy holds before it spools
READ_SIZE = 1 << 20  # bytes of the spool read at once (a larger record is read whole)
RECOVERY_COMMIT = 8 << 20  # bytes recovered from a spool between journal commits, to bound the recorder's memory
RETRY_DELAYS = (0.5, 1, 2, 5, 10, 30)  # seconds the spool is left alone after failed writes


def spool_path(folder: Path, session: str) -> Path:
    return folder / f"{session}.spool"


# -- the format ------------------------------------------------------------------------------


def encode(frames: Sequence[bytes]) -> bytes:
    """Spool records for pipe frames (pipe.frame output), back to back."""
    parts = []
    for data in frames:
        parts.append(RECORD_HEAD.pack(MAGIC, zlib.crc32(data)))
        parts.append(data)
    return b"".join(parts)


class _PlainUnpickler(pickle.Unpickler):
    """Exchanges are tuples of str, bytes, numbers and lists: a record that names a class is not one."""

    def find_class(self, module: str, name: str) -> Any:
        raise pickle.UnpicklingError(f"a spool record names {module}.{name}")


def read_records(data: Union[bytes, bytearray], at_end: bool) -> Tuple[List[Message], int, str]:
    """The messages of the whole records `data` starts with, the bytes they take, and what stopped the
    reading: "" at the end of the data or (unless `at_end`) inside a record that continues beyond it."""
    messages: List[Message] = []
    pos = 0
    with memoryview(data) as view:
        while pos < len(view):
            if len(view) - pos < FRAME_START:
                if at_end or bytes(view[pos : pos + len(MAGIC)]) != MAGIC[: len(view) - pos]:
                    return messages, pos, "cut short" if at_end else "not a spool record"
                break
            magic, crc = RECORD_HEAD.unpack_from(view, pos)
            if magic != MAGIC:
                return messages, pos, "not a spool record"
            (size,) = HEADER.unpack_from(view, pos + RECORD_HEAD.size)
            end = pos + FRAME_START + size
            if end > len(view):
                return messages, pos, "cut short" if at_end else ""
            if zlib.crc32(view[pos + RECORD_HEAD.size : end]) != crc:
                return messages, pos, "checksum mismatch"
            message = _load(bytes(view[pos + FRAME_START : end]))
            if message is None:
                return messages, pos, "not an exchange"
            messages.append(message)
            pos = end
    return messages, pos, ""


def record_size(data: Union[bytes, bytearray]) -> int:
    """The length of the record `data` starts with (at least FRAME_START bytes of it)."""
    (size,) = HEADER.unpack_from(data, RECORD_HEAD.size)
    return FRAME_START + int(size)


def _load(payload: bytes) -> Optional[Message]:
    try:
        message = _PlainUnpickler(io.BytesIO(payload)).load()
    except Exception:  # garbage can raise anything: the record is simply not one
        return None
    if not (isinstance(message, tuple) and len(message) == 2 and message[0] == "exchange"):
        return None
    try:
        exchange_from(message[1])  # the fields of this version's Exchange, or not an exchange at all
    except TypeError:
        return None
    return message


# -- the proxy's side: appending, in its spool thread ------------------------------------------


class SpoolFile:
    """The proxy's writes to the spool. Blocking: called from one thread, never the event loop."""

    def __init__(self, path: Path) -> None:
        self.path = path
        self._log = durable.AppendLog(path)
        self._known = False  # the file exists, and its folder entry has been fsynced

    def append(self, frames: Sequence[bytes]) -> Tuple[int, int]:
        """Append the frames as records with one write and one fsync; where they now are (start, end)."""
        data = encode(frames)
        created = not self._known and not self.path.exists()
        self._log.append(data)
        if created:
            durable.fsync_directory(self.path.parent)  # a new file's name must survive a crash too
        self._known = True
        end = os.stat(self.path).st_size
        return end - len(data), end

    def clear(self) -> None:
        """Empty it: everything it held has been recorded."""
        self._log.close()  # it caches the size, which the truncation changes
        with open(self.path, "r+b") as spool:
            spool.truncate(0)
            spool.flush()
            os.fsync(spool.fileno())

    def remove(self) -> None:
        self._log.close()
        self._known = False
        try:
            os.unlink(self.path)
        except FileNotFoundError:
            return
        durable.fsync_directory(self.path.parent)

    def close(self) -> None:
        self._log.close()


# -- the proxy's side: what is held where ----------------------------------------------------

OPEN = "open"  # taking exchanges until its write starts
WRITING = "writing"
SPOOLED = "spooled"  # on disk: only its place in the file is held
KEPT = "kept"  # its write failed: held in memory, handed over as frames


class Segment:
    """Exchanges spilled to the spool together: their frames until they are on disk, then where they are."""

    __slots__ = ("frames", "count", "size", "start", "end", "state", "confirmed")

    def __init__(self) -> None:
        self.frames: List[bytes] = []
        self.count = 0
        self.size = 0
        self.start = self.end = 0
        self.state = OPEN
        self.confirmed = 0  # of its exchanges, how many the recorder has reported on disk

    def take(self, data: bytes) -> None:
        self.frames.append(data)
        self.count += 1
        self.size += len(data)


class Backlog:
    """Exchanges handed to the recorder and not confirmed on disk, in order: frames held in memory up to
    `limit` bytes, and segments of the spool past it. Bookkeeping only: the caller does the writes.

    Once an exchange has gone to the spool, the ones after it go there too, until the recorder has
    confirmed every frame held in memory and nearly drained the spool. So during a stall what is held
    in memory is older than what is spooled, and a resuming recorder writes it first: a proxy killed
    while the recorder catches up loses none of it. (Frames taken while the last quarter-bound of a
    spool drains wait behind it, and a kill loses them as it loses any exchange in flight.)
    """

    def __init__(self, limit: int) -> None:
        self.limit = limit
        self.items: Deque[Union[bytes, Segment]] = collections.deque()
        self.in_memory = 0
        self.in_memory_bytes = 0
        self.spooled = 0
        self.spooled_bytes = 0
        self.errors = 0  # failed writes to the spool
        self.error: Optional[str] = None  # why the last write failed, until one succeeds
        self._unwritten: Deque[Segment] = collections.deque()
        self._held = 0  # frames held in memory on their own (not in a segment)
        self._spilling = False
        self._failures = 0
        self._retry_at = 0.0

    def __len__(self) -> int:
        return self.in_memory + self.spooled

    def add(self, data: bytes, now: float) -> Optional[Union[bytes, Segment]]:
        """Take one exchange's frame. Returns what to queue for the pipe: the frame (held in memory), a
        new segment for the spool, or None (it joined the segment queued last, still open)."""
        self.in_memory += 1
        self.in_memory_bytes += len(data)
        if self._spilling and not self._held and self.spooled_bytes <= self.limit // 4:
            self._spilling = False  # the recorder has caught up
        if now < self._retry_at or (not self._spilling and self.in_memory_bytes <= self.limit):
            self.items.append(data)
            self._held += 1
            return data
        self._spilling = True
        tail = self.items[-1] if self.items else None
        if isinstance(tail, Segment) and tail.state == OPEN:
            tail.take(data)
            return None
        segment = Segment()
        segment.take(data)
        self.items.append(segment)
        self._unwritten.append(segment)
        return segment

    def next_write(self) -> Optional[Segment]:
        """The oldest segment still to be written, now marked as being written."""
        if not self._unwritten:
            return None
        segment = self._unwritten.popleft()
        segment.state = WRITING
        return segment

    def written(self, segment: Segment, start: int, end: int) -> None:
        segment.state, segment.start, segment.end = SPOOLED, start, end
        segment.frames = []
        self.in_memory -= segment.count
        self.in_memory_bytes -= segment.size
        self.spooled += segment.count
        self.spooled_bytes += end - start
        self._failures = 0
        self.error = None

    def write_failed(self, segment: Segment, error: str, now: float) -> float:
        """Keep the segment's exchanges in memory, and those waiting to be written; no spooling for a
        while. Returns how long."""
        segment.state = KEPT
        for waiting in self._unwritten:
            waiting.state = KEPT
        self._unwritten.clear()
        self.errors += 1
        self.error = error
        delay = RETRY_DELAYS[min(self._failures, len(RETRY_DELAYS) - 1)]
        self._failures += 1
        self._retry_at = now + delay
        return delay

    def keep_unwritten(self) -> None:
        """No more writes (closing): what waits to be written stays in memory."""
        for waiting in self._unwritten:
            waiting.state = KEPT
        self._unwritten.clear()

    def confirm(self, count: int) -> None:
        """The recorder reports the next `count` exchanges on disk."""
        while count > 0 and self.items:
            item = self.items[0]
            if isinstance(item, bytes):
                self.items.popleft()
                self._held -= 1
                self.in_memory -= 1
                self.in_memory_bytes -= len(item)
                count -= 1
                continue
            taken = min(count, item.count - item.confirmed)
            item.confirmed += taken
            count -= taken
            if item.confirmed < item.count:
                return
            self.items.popleft()
            if item.state == SPOOLED:
                self.spooled -= item.count
                self.spooled_bytes -= item.end - item.start
            else:
                self.in_memory -= item.count
                self.in_memory_bytes -= item.size

    def restart(self) -> None:
        """A new recorder process is handed everything again: a segment it half read counts from zero."""
        if self.items and isinstance(self.items[0], Segment):
            self.items[0].confirmed = 0

    def fields(self, spool: Optional[Path]) -> Dict[str, Any]:
        return backlog_fields(
            self.in_memory,
            self.in_memory_bytes,
            self.spooled,
            self.spooled_bytes,
            self.limit,
            spool,
            self.errors,
            self.error,
        )


def handover(item: Union[bytes, Segment]) -> Optional[List[bytes]]:
    """What goes down the pipe for a queued item: the frame, a segment's place in the spool (or its
    frames, if it could not be written); None while its write is under way."""
    if isinstance(item, bytes):
        return [item]
    if item.state == SPOOLED:
        return [frame(("spooled", item.start, item.end, item.count))]
    if item.state == KEPT:
        return item.frames
    return None


# -- the recorder's side ---------------------------------------------------------------------


class SpoolReader:
    """The recorder's reads of the ranges of the spool the proxy hands over."""

    def __init__(self, path: Path) -> None:
        self.path = path
        self._fd: Optional[int] = None

    def read(self, start: int, end: int, budget: int) -> Tuple[List[Message], int, str]:
        """The messages from `start` (about `budget` bytes of them, at least one record), where the next
        record begins, and what went wrong ("" if nothing did)."""
        try:
            if self._fd is None:
                self._fd = os.open(str(self.path), os.O_RDONLY | getattr(os, "O_BINARY", 0))
            data = os.pread(self._fd, min(end - start, max(budget, FRAME_START)), start)
            messages, used, problem = read_records(data, at_end=start + len(data) >= end)
            if not messages and not problem and len(data) >= FRAME_START:  # one record larger than the budget
                data = os.pread(self._fd, min(record_size(data), end - start), start)
                messages, used, problem = read_records(data, at_end=True)
        except OSError as exc:
            return [], start, str(exc)
        if not messages and not problem:  # a range holds whole records: the file is shorter than it
            problem = "the spool ends before the range handed over"
        return messages, start + used, problem

    def close(self) -> None:
        if self._fd is not None:
            fd, self._fd = self._fd, None
            os.close(fd)


def recover(book: RecordBook, path: Path) -> None:
    """Record the exchanges a proxy that stopped unexpectedly left in its spool, then remove the file.

    Run by the session's recorder before it takes new exchanges; blocking. A torn or damaged tail is
    set aside first. Should the journal refuse the records, the file stays, clean, and is read again
    at the next start (what got into the journal meanwhile is then a duplicate, recorded once).
    """
    try:
        fd = os.open(str(path), os.O_RDONLY | getattr(os, "O_BINARY", 0))
    except FileNotFoundError:
        return
    try:
        if not stat.S_ISREG(os.fstat(fd).st_mode):
            log.warning("%s is not a regular file; left alone", path)
            return
        found, good_size, problem = _replay(book, fd)
        size = os.fstat(fd).st_size
    finally:
        os.close(fd)
    if good_size < size:
        _set_aside(path, good_size, size, problem)
    if found:
        log.warning(
            "%s: recording %d exchange(s) left there by a proxy that stopped before they were recorded",
            path,
            found,
            extra={"event": "spool_recovered", "exchanges": found},
        )
    if not book.write():
        log.error("%s is kept: its exchanges are recorded once the journal can be written", path)
        return
    try:
        os.unlink(path)
    except FileNotFoundError:
        pass  # nothing to remove
    durable.fsync_directory(path.parent)


def _replay(book: RecordBook, fd: int) -> Tuple[int, int, str]:
    """Place every whole record's exchange; (how many, bytes of whole records, what ended the reading)."""
    buffer = bytearray()
    found = good_size = uncommitted = 0
    while True:
        chunk = os.read(fd, READ_SIZE)
        buffer += chunk
        messages, used, problem = read_records(buffer, at_end=not chunk)
        del buffer[:used]
        good_size += used
        uncommitted += used
        book.place_all([exchange_from(message[1]) for message in messages])
        found += len(messages)
        if problem or not chunk:
            return found, good_size, problem
        if uncommitted >= RECOVERY_COMMIT:
            book.write()  # placed records are held until committed: commit now and then
            uncommitted = 0


def _set_aside(path: Path, good_size: int, size: int, problem: str) -> None:
    aside = path.with_name(f"{path.name}.torn-{int(time.time())}")
    with open(path, "r+b") as spool:
        spool.seek(good_size)
        torn = spool.read()
        durable.atomic_write(aside, torn)
        spool.truncate(good_size)
        spool.flush()
        os.fsync(spool.fileno())
    log.warning(
        "%s: the last %d bytes are not a whole record (%s), as a write cut short by a crash leaves them; "
        "set aside in %s",
        path,
        size - good_size,
        problem or "cut short",
        aside.name,
    )
