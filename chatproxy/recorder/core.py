"""Turns finished exchanges into records in their sessions' stores, commits them, and counts.

Blocking and single-threaded by design: one caller at a time, either the in-process recorder's
worker thread or the recorder process's main loop. Neither knows what the other schedules around it.
"""

from __future__ import annotations

import logging
import time
from pathlib import Path
from typing import Any, Dict, List, Optional

from chatproxy.chats.tree import Node
from chatproxy.config import ConfigError, RecordOptions, check_session_id
from chatproxy.recorder.capture import Exchange
from chatproxy.recorder.extract import NotRecordable, extract
from chatproxy.recorder.interface import status_fields, zero_counts
from chatproxy.recorder.store import DatasetStore

log = logging.getLogger("chatproxy.recorder")

RETRY_DELAYS = (0.5, 1, 2, 5, 10, 30)  # seconds between attempts to write records the disk refused
CLOSING_ATTEMPTS = 3  # on shutdown, give a failing disk this many more tries, then say what was lost
DETAILED_LINES_PER_SECOND = 10  # "recorded …" lines per second before they are summed up


class RecordBook:
    def __init__(self, folder: Path, session: str, options: RecordOptions, owner_pid: Optional[int] = None) -> None:
        self.folder = folder
        self.owner_pid = owner_pid  # named in the lock files; None: this process
        self.session = session
        self.options = options
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
        """Lock a session and read its journal back (raises SessionLocked or OSError)."""
        store = DatasetStore(self.folder, name, self.options, self.owner_pid)
        store.open()
        self.stores[name] = store
        return store

    def retry_delay(self) -> float:
        return RETRY_DELAYS[min(self.failures, len(RETRY_DELAYS)) - 1] if self.failures else 0.0

    def write_due(self, now: float) -> float:
        """Seconds until a write is due without new records: a live file to rewrite, or the summary
        of record lines held back (inf: nothing due)."""
        snapshots = (s.snapshot_due(now, self.options.snapshot_interval) for s in self.stores.values())
        return min([self._lines.summary_due(now), *snapshots])

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
            log.warning("not recording %s: %s", exchange.path, exc)
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
        """True when placing needs no file opened or written (its session is open, no inline image)."""
        return (exchange.session or self.session) in self.stores and b"data:" not in exchange.request_body

    def _store_for(self, session: Optional[str]) -> DatasetStore:
        name = self.session if session is None else check_session_id(session)
        store = self.stores.get(name)
        return store if store is not None else self.open_session(name)

    # -- writing -----------------------------------------------------------------------------

    def write(self, final: bool = False, snapshot: bool = False) -> bool:
        """Commit every placed record, and rewrite live files that are due (all with `final` or
        `snapshot`). False if some write failed: its records stay pending for the next try."""
        if self.unplaced:
            self.place_all([])
        ok = not self.unplaced
        for store in self.stores.values():
            ok = self._commit(store) and ok
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


def _saved_line(session: str, model: str, node: Node) -> str:
    state = "" if node.complete else " (incomplete)"
    return f"recorded {session}: {model}, {node.length} turns, {node.chars} chars{state}"
