"""What the proxy asks of a recorder, whichever process it records in.

Two implementations: `process.RecorderProcess` (the default: parsing and disk work in a second
process) and `in_process.InProcessRecorder` (the fallback where no child process can be started).
The proxy and the tests see only this interface.
"""

from __future__ import annotations

from typing import TYPE_CHECKING, Any, Dict, Optional, Protocol, Set

from chatproxy.recorder.capture import Exchange

if TYPE_CHECKING:  # the recorder process imports this module too, and needs no event loop
    import asyncio

# What a recorder counts, by key: written by the one that records, read for /_chatproxy/status.
COUNT_NAMES = ("recorded", "skipped", "unrecordable", "write_errors")


def zero_counts() -> Dict[str, int]:
    return dict.fromkeys(COUNT_NAMES, 0)


def status_fields(
    counts: Dict[str, int],
    pending: int,
    dataset: Optional[object],
    journal: Optional[object],
    backlog: Optional[Dict[str, Any]] = None,
) -> Dict[str, Any]:
    """A recorder's part of /_chatproxy/status, whichever process it runs in. `backlog` is
    backlog_fields(); without it, everything pending is counted as held in memory."""
    return {
        "recorded": counts["recorded"],
        "skipped_housekeeping": counts["skipped"],
        "not_recordable": counts["unrecordable"],
        "write_errors": counts["write_errors"],
        "pending_records": pending,
        "dataset": dataset and str(dataset),
        "journal": journal and str(journal),
        **(backlog if backlog is not None else backlog_fields(in_memory=pending)),
    }


def backlog_fields(
    in_memory: int = 0,
    in_memory_bytes: int = 0,
    spooled: int = 0,
    spooled_bytes: int = 0,
    limit: Optional[int] = None,
    spool: Optional[object] = None,
    spool_errors: int = 0,
    spool_error: Optional[str] = None,
) -> Dict[str, Any]:
    """What waits to be recorded: exchanges (and bytes) held in memory, and in the spool past `limit`
    bytes (None: not bounded); failed writes to the spool, and why the last one failed while it fails."""
    return {
        "backlog_in_memory": in_memory,
        "backlog_in_memory_bytes": in_memory_bytes,
        "backlog_spooled": spooled,
        "backlog_spooled_bytes": spooled_bytes,
        "backlog_limit_bytes": limit,
        "spool": spool and str(spool),
        "spool_errors": spool_errors,
        "spool_error": spool_error,
    }


class Recorder(Protocol):
    """Takes finished exchanges from the relay and gets them onto disk, never blocking the loop."""

    @property
    def counts(self) -> Dict[str, int]:
        """Totals by COUNT_NAMES since the proxy started."""

    @property
    def pending(self) -> int:
        """Exchanges and records handed over but not yet on disk (in memory or in the spool)."""

    @property
    def tasks(self) -> Set[asyncio.Task[Any]]:
        """The recorder's own tasks on the proxy's loop (for embedders and tests that check for leaks)."""

    async def start(self) -> None:
        """Open the running session; raises SessionLocked or OSError."""

    def submit(self, exchange: Exchange) -> None:
        """Hand over one finished exchange; only enqueues."""

    async def sync(self, snapshot: bool = False) -> None:
        """Until everything submitted so far is on disk (and, with `snapshot`, in the live files)."""

    def status(self) -> Dict[str, Any]:
        """The recorder's part of /_chatproxy/status (see status_fields)."""

    async def close(self) -> None:
        """Write what is queued and the final live files, then release the session."""
