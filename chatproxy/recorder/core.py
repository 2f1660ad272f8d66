"""Turns finished exchanges into records in their sessions' stores, commits them, and counts.

Blocking and single-threaded by design: one caller at a time, either the in-process recorder's
worker thread or the recorder process's main loop. Neither knows what the other schedules around it.

With `--rotate`, each session records into parts (SESSION@PART.jsonl, PART its start time in UTC). The
book rolls a session into its next part between exchanges, its pending records committed first: before
placing an exchange into a part whose journal has passed the size or whose period is over (so the next
part is named by its first exchange, and no empty part is left by a quiet night), and, for a part that
holds records, when its period ends. A restart resumes the newest part while it is still current.
"""

from __future__ import annotations

import logging
import os
import time
from pathlib import Path
from typing import Any, Callable, Dict, List, Optional, Set

from chatproxy.chats.tree import Node
from chatproxy.config import (
    PART_SEPARATOR,
    ConfigError,
    RecordOptions,
    Rotation,
    check_session_id,
    part_name,
    part_time,
)
from chatproxy.recorder.capture import Exchange
from chatproxy.recorder.extract import NotRecordable, extract
from chatproxy.recorder.interface import status_fields, zero_counts
from chatproxy.recorder.store import DatasetStore

log = logging.getLogger("chatproxy.recorder")

RETRY_DELAYS = (0.5, 1, 2, 5, 10, 30)  # seconds between attempts to write records the disk refused
CLOSING_ATTEMPTS = 3  # on shutdown, give a failing disk this many more tries, then say what was lost
DETAILED_LINES_PER_SECOND = 10  # "recorded …" lines per second before they are summed up
# A test hook, never an option: a file holding the current time (Unix seconds) that rotation and part
# names read instead of the system clock, so that tests and scripts/simulate_month.py can run days in
# seconds. Read by the recorder only; records keep their real times.
CLOCK_FILE_ENV = "CHATPROXY_TEST_CLOCK_FILE"

Clock = Callable[[], float]


def wall_clock() -> Clock:
    """time.time, or the test hook's clock when CHATPROXY_TEST_CLOCK_FILE names a file."""
    path = os.environ.get(CLOCK_FILE_ENV)
    if not path:
        return time.time

    def read() -> float:
        try:
            with open(path, "rb") as handle:
                return float(handle.read())
        except (OSError, ValueError):  # being rewritten, or gone: the real time meanwhile
            return time.time()

    return read


class RecordBook:
    def __init__(
        self,
        folder: Path,
        session: str,
        options: RecordOptions,
        owner_pid: Optional[int] = None,
        clock: Optional[Clock] = None,
    ) -> None:
        self.folder = folder
        self.owner_pid = owner_pid  # named in the lock files; None: this process
        self.session = session
        self.options = options
        self.clock = clock or wall_clock()  # the time rotation goes by (Unix seconds)
        self._part_times: Dict[str, Optional[int]] = {}
        self._full: Set[Path] = set()  # journals of parts that have passed --rotate's size
        self.stores: Dict[str, DatasetStore] = {}
        self.counts = zero_counts()
        self.last_error: Optional[str] = None
        self.failures = 0  # consecutive failed writes
        # Exchanges whose session could not be opened (folder read-only, disk full): retried with
        # the next write rather than dropped.
        self.unplaced: List[Exchange] = []
        self._lines = RecordLines()

    @property
    def pending(self) -> int:
        """Exchanges and records not yet on disk."""
        stores = list(self.stores.values())  # another thread may add a store meanwhile
        return len(self.unplaced) + sum(len(s.pending) for s in stores)

    def open_session(self, name: str) -> DatasetStore:
        """Lock a session and read its journal back (raises SessionLocked or OSError); with --rotate,
        its newest part while that is current, else a new part. Without --rotate, a session that has parts
        goes on in its newest, so that its records stay in the order its parts are read in."""
        rotation = self.options.rotate
        part = self._part_to_record(name, rotation) if rotation else self._newest_part(name)
        store = DatasetStore(self.folder, name, self.options, self.owner_pid, part)
        store.open()
        try:
            if rotation and part is not None:
                # Chosen before the lock was ours: a recorder that held it (a killed proxy's, finishing
                # what it was handed) may have rotated since. Go on after whatever it left.
                newest = self._newest_part(name)
                if newest is not None and newest > part:
                    store.rotate(self._part_to_record(name, rotation))
        except BaseException:
            store.close()
            raise
        self.stores[name] = store
        return store

    # -- rotation ----------------------------------------------------------------------------

    def _part_to_record(self, name: str, rotation: Rotation) -> str:
        """The newest part when it is still current (this period, under the size), else a new one."""
        newest = self._newest_part(name)
        if newest is not None and not self._part_over(name, newest, rotation):
            return newest
        return self._next_part(name)

    def _part_over(self, name: str, part: str, rotation: Rotation) -> bool:
        started = part_time(part)
        if started is None or rotation.period_start(self.clock()) > started:
            return True
        if rotation.size:
            try:
                return os.stat(self.folder / f"{name}{PART_SEPARATOR}{part}.jsonl").st_size >= rotation.size
            except FileNotFoundError:
                return False
        return False

    def _newest_part(self, name: str) -> Optional[str]:
        """The latest part of session `name` with any file in the folder (journal or live dataset)."""
        newest = None
        for path in self.folder.glob(f"{name}{PART_SEPARATOR}*"):
            part = path.name[len(name) + 1 :].split(".", 1)[0]
            if part_time(part) is not None and (newest is None or part > newest):
                newest = part
        return newest

    def _next_part(self, name: str) -> str:
        """A part named by the time now, later than every part before it: the next second when the clock
        says the same second (or went back)."""
        moment = int(self.clock())
        for earlier in (self._newest_part(name), getattr(self.stores.get(name), "part", None)):
            started = part_time(earlier) if earlier else None
            if started is not None and started >= moment:
                moment = started + 1
        return part_name(moment)

    def _period_over(self, store: DatasetStore, now: float) -> bool:
        """A scheduled boundary has passed since the store's part began."""
        rotation = self.options.rotate
        started = self._started(store.part)
        return rotation is not None and started is not None and rotation.period_start(now) > started

    def _rotation_due(self, store: DatasetStore) -> bool:
        """Before placing an exchange: the part is full, or its period is over."""
        return store.journal_path in self._full or self._period_over(store, self.clock())

    def _started(self, part: Optional[str]) -> Optional[int]:
        """part_time, remembered: it is asked before every exchange is placed."""
        if part is None:
            return None
        if part not in self._part_times:
            if len(self._part_times) > 256:
                self._part_times.clear()  # only the sessions' current parts are asked about
            self._part_times[part] = part_time(part)
        return self._part_times[part]

    def _rotate(self, store: DatasetStore) -> bool:
        """Commit what is pending, then roll `store` into its next part. False (still on the old part,
        nothing lost, retried later) when the disk refused."""
        if not self._commit(store):
            return False
        old_journal, records = store.journal_path, store.saved
        try:
            store.rotate(self._next_part(store.session))
        except OSError as exc:
            self.counts["write_errors"] += 1
            self._fail(f"could not roll {store.name} into a new part: {exc}; will retry")
            return False
        self._full.discard(old_journal)
        log.info(
            "rotated %s: %s closed with %d records; recording into %s",
            store.session,
            old_journal.name,
            records,
            store.journal_path.name,
            extra={"event": "rotated", "session": store.session, "part": store.part, "closed": str(old_journal)},
        )
        return True

    def _rotate_due(self) -> bool:
        """Roll every part whose period is over and that holds records (a quiet part waits for its next
        exchange, so that no empty part is made)."""
        ok = True
        now = self.clock()
        for store in list(self.stores.values()):
            if (store.saved or store.pending) and self._period_over(store, now):
                ok = self._rotate(store) and ok
        return ok

    def rotation_due_in(self) -> float:
        """Seconds until a scheduled rotation of a session that holds records (inf: none due)."""
        rotation = self.options.rotate
        if rotation is None or not rotation.period:
            return float("inf")
        now, due = self.clock(), float("inf")
        for store in self.stores.values():
            started = self._started(store.part)
            if started is not None and (store.saved or store.pending):
                due = min(due, rotation.next_boundary(started) - now)
        return max(due, 0.0)

    def retry_delay(self) -> float:
        return RETRY_DELAYS[min(self.failures, len(RETRY_DELAYS)) - 1] if self.failures else 0.0

    def write_due(self, now: float) -> float:
        """Seconds until a write is due without new records: a live file to rewrite, or the summary
        of record lines held back (inf: nothing due)."""
        snapshots = (s.snapshot_due(now, self.options.snapshot_interval) for s in self.stores.values())
        return min([self._lines.summary_due(now), self.rotation_due_in(), *snapshots])

    # -- placing -----------------------------------------------------------------------------

    def place_all(self, exchanges: List[Exchange]) -> None:
        """Place the exchanges kept back by a failed open first, then these, in order."""
        pending, self.unplaced = self.unplaced + exchanges, []
        for exchange in pending:
            self.place(exchange)

    def place(self, exchange: Exchange) -> List[Node]:
        try:
            store = self._store_for(exchange.session)
            extracted = extract(exchange, store.save_image, store.recall)
        except (NotRecordable, ConfigError) as exc:
            self.counts["unrecordable"] += 1
            log.warning("not recording %s: %s", exchange.path.split("?", 1)[0], exc)  # a query may hold a key
            return []
        except OSError as exc:
            self._fail(f"cannot open dataset for {exchange.session or self.session}: {exc}; kept in memory, retrying")
            self.unplaced.append(exchange)
            return []
        if extracted.housekeeping and not self.options.record_all:
            self.counts["skipped"] += 1
            log.debug("not recording a %s request (frontend housekeeping)", extracted.housekeeping)
            return []
        nodes = []
        for reply in extracted.replies:
            node = store.place(extracted.history, reply.message, extracted.tools, reply.meta)
            if node is not None:
                nodes.append(node)
        return nodes

    def can_place_without_disk(self, exchange: Exchange) -> bool:
        """True when placing needs no file opened or written (its session is open and not due to roll into
        its next part, no inline image)."""
        store = self.stores.get(exchange.session or self.session)
        if store is None or b"data:" in exchange.request_body:
            return False
        return not (self.options.rotate and self._rotation_due(store))

    def _store_for(self, session: Optional[str]) -> DatasetStore:
        name = self.session if session is None else check_session_id(session)
        store = self.stores.get(name)
        if store is None:
            return self.open_session(name)
        if self.options.rotate and self._rotation_due(store):
            self._rotate(store)  # refused by the disk: this exchange goes to the old part, the roll is retried
        return store

    # -- writing -----------------------------------------------------------------------------

    def write(self, final: bool = False, snapshot: bool = False) -> bool:
        """Commit every placed record, and rewrite live files that are due (all with `final` or
        `snapshot`). False if some write failed: its records stay pending for the next try."""
        if self.unplaced:
            self.place_all([])
        ok = not self.unplaced
        for store in self.stores.values():
            ok = self._commit(store) and ok
        if ok and self.options.rotate:
            ok = self._rotate_due()
        now = time.monotonic()
        for store in self.stores.values():
            if store.dirty and (final or snapshot or store.snapshot_due(now, self.options.snapshot_interval) <= 0):
                ok = self._snapshot(store) and ok
        self._lines.flush_summary(time.monotonic())
        self.failures = 0 if ok else self.failures + 1
        return ok

    def _commit(self, store: DatasetStore) -> bool:
        try:
            records = store.flush()
        except OSError as exc:
            self.counts["write_errors"] += 1
            self._fail(
                f"could not write {len(store.pending)} record(s) to {store.journal_path}: {exc}; "
                "kept in memory, retrying"
            )
            return False
        rotation = self.options.rotate
        if records and rotation is not None and rotation.size and _size(store.journal_path) >= rotation.size:
            self._full.add(store.journal_path)
        now = time.monotonic()
        for record in records:
            self.counts["recorded"] += 1
            self._lines.recorded(
                store.session, record["meta"].get("model") or "?", store.index.nodes[record["id"]], now
            )
        return True

    def _snapshot(self, store: DatasetStore) -> bool:
        try:
            store.write_snapshot()
        except OSError as exc:
            self.counts["write_errors"] += 1
            self._fail(f"could not write {store.snapshot_path}: {exc}; will retry")
            return False
        return True

    def _fail(self, message: str) -> None:
        self.last_error = message
        log.error("%s", message)

    def close(self) -> None:
        """Say what could not be written, and release every session."""
        self._lines.flush_summary(float("inf"))
        if self.unplaced:
            log.error(
                "%d exchange(s) could not be recorded before exit: their dataset could not be opened",
                len(self.unplaced),
            )
        for store in self.stores.values():
            if store.pending:
                log.error("%s: %d record(s) could not be written before exit", store.journal_path, len(store.pending))
            store.close()

    def status(self) -> Dict[str, Any]:
        store = self.stores.get(self.session)
        return status_fields(self.counts, self.pending, store and store.snapshot_path, store and store.journal_path)


class RecordLines:
    """One "recorded …" line per record while a person could read them; under load, one line a
    second that sums up the rest (a log line per record would cost more than recording it)."""

    def __init__(self) -> None:
        self._window_start = 0.0
        self._shown = 0
        self._summed: Dict[str, List[int]] = {}  # session -> [records, incomplete]

    def recorded(self, session: str, model: str, node: Node, now: float) -> None:
        self.flush_summary(now)
        if self._shown < DETAILED_LINES_PER_SECOND:
            self._shown += 1
            fields = {
                "event": "recorded",
                "session": session,
                "model": model,
                "turns": node.length,
                "complete": node.complete,
            }
            log.info("%s", _saved_line(session, model, node), extra=fields)
            return
        summed = self._summed.setdefault(session, [0, 0])
        summed[0] += 1
        summed[1] += 0 if node.complete else 1

    def summary_due(self, now: float) -> float:
        return self._window_start + 1.0 - now if self._summed else float("inf")

    def flush_summary(self, now: float) -> None:
        """Start a new one-second window when the current one is over, summing up what it held back."""
        if now - self._window_start < 1.0:
            return
        for session, (records, incomplete) in self._summed.items():
            state = f" ({incomplete} incomplete)" if incomplete else ""
            log.info(
                "recorded %s: %d more records%s",
                session,
                records,
                state,
                extra={"event": "recorded_many", "session": session, "records": records, "incomplete": incomplete},
            )
        self._summed = {}
        self._shown = 0
        self._window_start = now


def _size(path: Path) -> int:
    try:
        return os.stat(path).st_size
    except FileNotFoundError:  # nothing committed to this part yet
        return 0


def _saved_line(session: str, model: str, node: Node) -> str:
    state = "" if node.complete else " (incomplete)"
    return f"recorded {session}: {model}, {node.length} turns, {node.chars} chars{state}"
