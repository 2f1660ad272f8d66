"""The copy of a completion exchange kept beside the relay, for recording.

Runs on the event loop, so it only collects bytes: the SSE stream is split into event payloads as
it arrives (cheap byte work), and all JSON decoding happens later in the recorder's worker thread.
"""

from __future__ import annotations

import dataclasses
import logging
import time
import zlib
from typing import List, Optional, Sequence, Tuple, Union

from chatproxy import headers as hdr
from chatproxy.apis.ndjson import NDJSONDecoder
from chatproxy.apis.sse import SSEDecoder

log = logging.getLogger("chatproxy.capture")


@dataclasses.dataclass
class Exchange:
    """What one completion exchange said, as bytes; turned into records off the event loop."""

    endpoint: str
    path: str
    request_body: bytes
    started: float
    session: Optional[str] = None  # X-Chatproxy-Session, else the running session
    tags: Tuple[str, ...] = ()
    stream: bool = False
    status: int = 0
    response_body: bytes = b""  # non-streaming
    events: List[bytes] = dataclasses.field(default_factory=list)  # SSE data payloads
    complete: bool = False
    problem: str = ""  # why the reply could not be read (unknown encoding, …)


class ExchangeCapture:
    """Collects request and response bytes of one completion exchange; never raises into the relay."""

    def __init__(self, endpoint: str, path: str, request_fields: Sequence[hdr.Field], max_body: int) -> None:
        self.exchange = Exchange(endpoint, path, b"", time.time())
        self._request = bytearray()
        self._response = bytearray()
        self._max_body = max_body
        self._decoder: Optional[Union[SSEDecoder, NDJSONDecoder]] = None
        self._inflate: Optional[zlib._Decompress] = None
        self.active = True
        self._read_controls(request_fields)

    def _read_controls(self, request_fields: Sequence[hdr.Field]) -> None:
        session = hdr.field(request_fields, b"x-chatproxy-session")
        if session is not None:
            self.exchange.session = session.decode("latin-1").strip()
        tags = hdr.field(request_fields, b"x-chatproxy-tags")
        if tags:
            self.exchange.tags = tuple(t.strip() for t in tags.decode("utf-8", "replace").split(",") if t.strip())

    def request_chunk(self, data: bytes) -> None:
        if self.active:
            self._request += data

    def response_head(self, status: int, response_fields: Sequence[hdr.Field]) -> None:
        self.exchange.status = status
        self.exchange.request_body = bytes(self._request)
        self._request = bytearray()
        if not 200 <= status < 300:
            self.active = False  # failed exchanges are relayed, never recorded
            return
        content_type = (hdr.field(response_fields, b"content-type") or b"").lower()
        if b"text/event-stream" in content_type:
            self._decoder = SSEDecoder()
        elif b"ndjson" in content_type or b"jsonl" in content_type:  # Ollama's native streams
            self._decoder = NDJSONDecoder()
        self.exchange.stream = self._decoder is not None
        encoding = (hdr.field(response_fields, b"content-encoding") or b"identity").strip().lower()
        if encoding in (b"gzip", b"x-gzip", b"deflate"):
            # wbits 32+15 reads both gzip and zlib-wrapped deflate.
            self._inflate = zlib.decompressobj(32 + zlib.MAX_WBITS)
        elif encoding != b"identity":
            self._give_up(f"response body encoded as {encoding.decode('latin-1')!r}, which cannot be decoded")

    def response_chunk(self, data: bytes) -> None:
        if not self.active:
            return
        try:
            if self._inflate is not None:
                data = self._inflate.decompress(data)
            if self._decoder is not None:
                self.exchange.events.extend(self._decoder.feed(data))
            elif len(self._response) + len(data) <= self._max_body:
                self._response += data
            else:
                self._give_up("response body larger than --max-body")
        except Exception as exc:  # a broken copy must never disturb the relay
            self._give_up(f"could not read the response copy: {exc}")

    def _give_up(self, problem: str) -> None:
        self.active = False
        self.exchange.problem = problem
        log.warning("not recording %s: %s", self.exchange.path, problem)

    def finish(self, complete: bool) -> Optional[Exchange]:
        """The exchange to record, or None if there is nothing to record."""
        exchange = self.exchange
        if not self.active or not exchange.status:
            return None
        self.active = False
        exchange.complete = complete
        try:
            if self._inflate is not None:
                tail = self._inflate.flush()
                if self._decoder is not None:
                    exchange.events.extend(self._decoder.feed(tail))
                else:
                    self._response += tail
            if self._decoder is not None:
                exchange.events.extend(self._decoder.close())
        except Exception as exc:
            log.warning("not recording %s: could not read the response copy: %s", exchange.path, exc)
            return None
        exchange.response_body = bytes(self._response)
        return exchange
