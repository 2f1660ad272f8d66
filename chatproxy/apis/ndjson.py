"""Incremental newline-delimited JSON splitter: bytes in, one payload per complete line out.

Ollama streams its native API as NDJSON (`application/x-ndjson`): one JSON object per line. Like the
SSE decoder this runs on the event loop for every streamed chunk, so it only splits bytes; the JSON
is decoded later, in the recorder. Blank lines are skipped; `close()` returns a last line that the
stream never terminated, because a reply cut short is still worth recording.
"""

from __future__ import annotations

from typing import List


class NDJSONDecoder:
    __slots__ = ("_partial",)

    def __init__(self) -> None:
        self._partial: List[bytes] = []  # pieces of the line not yet terminated

    def feed(self, data: bytes) -> List[bytes]:
        if b"\n" not in data:
            if data:
                self._partial.append(data)
            return []
        lines = data.split(b"\n")
        if self._partial:
            lines[0] = b"".join(self._partial) + lines[0]
            self._partial = []
        if lines[-1]:
            self._partial.append(lines[-1])
        return [line for line in (piece.strip() for piece in lines[:-1]) if line]

    def close(self) -> List[bytes]:
        last = b"".join(self._partial).strip()
        self._partial = []
        return [last] if last else []
