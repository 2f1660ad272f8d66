"""Incremental Server-Sent Events decoder: bytes in, ``data`` payloads out.

Parsing follows the WHATWG "event stream interpretation" rules, as openai-python's
``_streaming.py`` does: lines are split on bytes (CRLF, LF or CR) before anything is
decoded, ``:`` opens a comment, one space after the field's colon is dropped, several
``data`` lines of one event are joined with LF, and an event without ``data`` lines
dispatches nothing. Only ``data`` matters to the capture, so ``event``, ``id``, ``retry``
and unknown fields are skipped. ``[DONE]`` is an ordinary payload; the consumer decides.

One deliberate difference from WHATWG: ``close()`` returns an event the stream never
terminated with a blank line, because a reply cut short is still worth recording.

The decoder runs on every streamed chunk on the event loop, so the work per read is a
handful of C-level ``bytes`` operations plus one Python step per line, never per byte.
"""

from __future__ import annotations

_LF = 0x0A
_CR = 0x0D
# WHATWG strips one U+FEFF at the very start of the stream (and nowhere else).
_UTF8_BOM = b"\xef\xbb\xbf"


class SSEDecoder:
    """Feed raw response body bytes; get back the ``data`` of every finished event."""

    __slots__ = ("_partial", "_data", "_skip_lf", "_at_start")

    def __init__(self) -> None:
        # Pieces of the current, not yet terminated line. A list rather than a growing
        # bytes object, so a long line arriving in many reads costs linear time.
        self._partial: list[bytes] = []
        # Values of the ``data`` lines of the event being assembled.
        self._data: list[bytes] = []
        # The previous read ended in CR: a LF opening this read belongs to that CR
        # (one CRLF split across reads) and must not count as a second, empty line.
        self._skip_lf = False
        self._at_start = True

    def feed(self, data: bytes) -> list[bytes]:
        """Consume one read; return the payloads of the events it completed, in order."""
        if self._skip_lf and data:
            self._skip_lf = False
            if data[0] == _LF:
                data = data[1:]
        if not data:
            return []
        if b"\r" in data:
            # CR endings are rare in practice (upstreams send LF); normalising them
            # with two C-level passes keeps the common path to a single split.
            self._skip_lf = data[-1] == _CR
            data = data.replace(b"\r\n", b"\n").replace(b"\r", b"\n")
        lines = data.split(b"\n")
        if len(lines) == 1:
            self._partial.append(data)
            return []
        tail = lines.pop()
        if self._partial:
            self._partial.append(lines[0])
            lines[0] = b"".join(self._partial)
            self._partial.clear()
        if tail:
            self._partial.append(tail)
        return self._dispatch(lines)

    def close(self) -> list[bytes]:
        """End of stream: return the unterminated last event, if it has data, and reset."""
        lines = [b"".join(self._partial)] if self._partial else []
        lines.append(b"")  # the blank line the stream never sent
        self._partial.clear()
        self._skip_lf = False
        payloads = self._dispatch(lines)
        self._at_start = True
        return payloads

    def _dispatch(self, lines: list[bytes]) -> list[bytes]:
        """Interpret complete lines (no line ends); return the payloads of finished events."""
        if self._at_start:
            self._at_start = False
            if lines[0].startswith(_UTF8_BOM):
                lines[0] = lines[0][len(_UTF8_BOM) :]
        payloads: list[bytes] = []
        data = self._data
        for line in lines:
            if not line:
                if data:
                    payloads.append(b"\n".join(data))
                    data.clear()
            elif line.startswith(b"data:"):
                data.append(line[6:] if line[5:6] == b" " else line[5:])
            elif line == b"data":
                # A field name without a colon has an empty value (WHATWG).
                data.append(b"")
            # Anything else is a comment (leading ":") or a field we do not use.
        return payloads
