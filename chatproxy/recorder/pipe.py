"""The pipes between the proxy and its recorder process: length-prefixed pickled tuples, each way.

Pickle is safe here: both ends are this package, started by the same user, talking over a private
pipe. It is also the cheapest way to move an Exchange (a few microseconds, done on the event loop).

Proxy -> recorder: ("open", settings), ("exchange", fields), ("sync", token, snapshot), and
("spooled", start, end, count): the `count` exchanges in bytes [start, end) of the session's spool
(spool.py), which the recorder reads from there in their turn.
Recorder -> proxy: ("ready", paths), ("failed", kind, details), ("status", state), ("log", fields),
("synced", token). The state's `on_disk` counts the exchanges received, spooled ones included, that
are recorded (or found not recordable) for good.
"""

from __future__ import annotations

import logging
import pickle
import struct
import traceback
from typing import Any, Dict, List, Optional, Tuple

from chatproxy.recorder.capture import Exchange

log = logging.getLogger("chatproxy.recorder")

HEADER = struct.Struct("!I")
Message = Tuple[Any, ...]


def frame(message: Message) -> bytes:
    payload = pickle.dumps(message, protocol=pickle.HIGHEST_PROTOCOL)
    return HEADER.pack(len(payload)) + payload


class FrameReader:
    """Incremental: feed it whatever a read returned, get back every message now complete."""

    def __init__(self) -> None:
        self._buffer = bytearray()

    def feed(self, data: bytes) -> List[Message]:
        self._buffer += data
        messages = []
        start = 0
        with memoryview(self._buffer) as view:  # released before the buffer is trimmed
            while len(view) - start >= HEADER.size:
                (size,) = HEADER.unpack_from(view, start)
                end = start + HEADER.size + size
                if end > len(view):
                    break
                message = _message(view[start + HEADER.size : end])
                if message is not None:
                    messages.append(message)
                start = end
        del self._buffer[:start]
        return messages


def _message(payload: memoryview) -> Optional[Message]:
    """The message a frame holds, or None (logged) for one that holds none: the frames after it are
    still whole, and an exception here would end the reading process (or its reading task)."""
    try:
        message = pickle.loads(payload)
    except Exception as exc:  # garbage can raise anything; only its text is kept
        # Formatted here: a record holding the exception would hold, through its traceback, this payload's
        # buffer export, and the reader could not trim its buffer while a handler kept that record.
        log.error("dropped a %d-byte frame from the recorder pipe: %s", len(payload), f"{type(exc).__name__}: {exc}")
        return None
    if not (isinstance(message, tuple) and message and isinstance(message[0], str)):
        log.error("dropped a frame from the recorder pipe that is not a message: a %s", type(message).__name__)
        return None
    return message


def exchange_fields(exchange: Exchange) -> Tuple[Any, ...]:
    """An Exchange as a plain tuple: pickled four times faster than the object."""
    return tuple(vars(exchange).values())


def exchange_from(fields: Tuple[Any, ...]) -> Exchange:
    return Exchange(*fields)


_STANDARD_FIELDS = set(vars(logging.makeLogRecord({})))


def log_fields(record: logging.LogRecord) -> Dict[str, Any]:
    """A log record as plain data, its message already formatted (arguments may not pickle)."""
    fields = {key: value for key, value in vars(record).items() if key not in _STANDARD_FIELDS}
    fields.update(
        name=record.name,
        levelno=record.levelno,
        levelname=record.levelname,
        created=record.created,
        msecs=record.msecs,
        msg=record.getMessage(),
        args=None,
    )
    if record.exc_info:
        fields["exc_text"] = "".join(traceback.format_exception(*record.exc_info)).rstrip()
    return fields


def emit_forwarded(fields: Dict[str, Any]) -> None:
    """Log a record received from the recorder process through this process's handlers."""
    record = logging.makeLogRecord(fields)
    logging.getLogger(record.name).handle(record)
